"""util.run_state: generator states, resumable batch order, stop requests."""
import os
import random
import signal
import time

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from util import run_state
from util.checkpoint import load_checkpoint, save_checkpoint


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), np.random.randn(3).tolist(), torch.rand(4).tolist()


def test_rng_state_survives_a_checkpoint(tmp_path):
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    path = str(tmp_path / "c.pth")
    save_checkpoint({"rng": [run_state.get_rng_state()]}, path)
    expected = _draws()
    _draws()
    run_state.set_rng_state(load_checkpoint(path)["rng"][0])
    assert _draws() == expected


def test_preserved_rng_leaves_the_generators_where_they_were():
    state = run_state.get_rng_state()
    expected = _draws()
    run_state.set_rng_state(state)
    with run_state.preserved_rng():
        _draws()
    assert _draws() == expected


def test_merge_stats_gives_the_average_of_the_whole():
    values = [3.0, 1.5, 4.0, 0.5, 2.0, 7.0, 1.0]
    for k in range(len(values) + 1):
        first = {"loss": float(np.mean(values[:k]))} if k else {}
        second = {"loss": float(np.mean(values[k:]))} if k < len(values) else {}
        merged = run_state.merge_stats(first, k, second, len(values) - k)
        assert merged["loss"] == pytest.approx(np.mean(values))
    # A term only one part has keeps that part's value.
    assert run_state.merge_stats({"a": 1.0}, 2, {"a": 4.0, "b": 2.0}, 1) == {"a": 2.0, "b": 2.0}


def _batch_sampler(seed: int = 0) -> run_state.ResumableBatchSampler:
    generator = torch.Generator().manual_seed(seed)
    return run_state.ResumableBatchSampler(BatchSampler(RandomSampler(range(20), generator=generator), 3,
                                                        drop_last=True))


def test_resumable_batch_sampler_continues_the_recorded_order():
    sampler = _batch_sampler()
    epoch = list(sampler)
    assert len(epoch) == len(sampler) == 6 and sampler.batches == epoch
    other = _batch_sampler(seed=1)  # would draw another order
    other.resume(epoch, 4)
    assert len(other) == 2
    assert list(other) == epoch[4:]
    assert other.batches == epoch  # what a second stop in the same epoch saves
    # The epoch after draws afresh.
    assert len(other) == 6 and list(other) != epoch


class _Stop(run_state.StopRequest):
    """A stop request that arrives while the consumer holds batch ``at`` (0-based)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.seen = at, 0

    def agreed(self) -> bool:
        self.seen += 1
        if self.seen == self.at + 1:
            self.signum = signal.SIGTERM
        return super().agreed()


def _loader(stop, max_iters: int = 0):
    dataset = list(range(20))
    loader = DataLoader(dataset, batch_sampler=_batch_sampler(), collate_fn=lambda b: b)
    return run_state.EpochLoader(loader, stop, max_iters)


def test_epoch_loader_stops_after_the_batch_in_hand_and_resumes_after_it():
    full = list(_loader(run_state.StopRequest()))
    assert len(full) == 6

    stopped = _loader(_Stop(at=2))
    first = list(stopped)
    assert first == full[:3] and stopped.stopped and stopped.done == 3

    resumed = _loader(run_state.StopRequest())
    resumed.resume(stopped.batch_sampler.batches, stopped.done, None)
    assert len(resumed) == 3
    assert list(resumed) == full[3:] and resumed.done == 6 and not resumed.stopped


def test_epoch_loader_counts_max_iters_from_the_epoch_start():
    loader = _loader(run_state.StopRequest(), max_iters=4)
    assert len(loader) == 4 and len(list(loader)) == 4
    loader.resume(loader.batch_sampler.batches, 3, None)
    assert len(loader) == 1 and len(list(loader)) == 1 and loader.done == 4


def test_a_stop_after_the_last_batch_does_not_cut_the_epoch():
    loader = _loader(_Stop(at=5))
    assert len(list(loader)) == 6 and not loader.stopped


def test_sigterm_is_deferred_in_training_and_ends_the_run_elsewhere():
    stop = run_state.StopRequest()
    previous = signal.getsignal(signal.SIGTERM)
    with stop.handling():
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and stop.agreed()
        with pytest.raises(run_state.Preempted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by the handler's exception
        assert info.value.code == 128 + signal.SIGTERM and "SIGTERM" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_merge_stats_adds_counts_instead_of_averaging_them():
    # A resumed epoch's skipped fp16 steps are those of both parts together.
    merged = run_state.merge_stats({"loss": 1.0, "amp_skipped_steps": 2}, 3,
                                   {"loss": 3.0, "amp_skipped_steps": 1}, 1, counts=("amp_skipped_steps",))
    assert merged == {"loss": 1.5, "amp_skipped_steps": 3}
