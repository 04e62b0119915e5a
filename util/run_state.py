"""What a training run needs, beyond weights and optimizer, to continue exactly where it stopped.

- The random number generators of torch (CPU and the current GPU), numpy and Python, per process:
  restored on resume, a run stopped after an epoch trains the next one on the same batches, with the
  same augmentations and dropout masks, as a run that was never stopped.
- The order of the current epoch's batches and how many of them were trained, for a run stopped in
  the middle of an epoch: the resumed run skips those and trains the rest in the same order.
- A stop request: SIGTERM (what SLURM sends before preemption or at the time limit, and what
  torchrun forwards) lets the current batch finish, every rank agreeing on where, so that the run
  can write a checkpoint of the epoch's progress before it exits.
"""
from __future__ import annotations

import random
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

import util.dist as dist_utils


def get_rng_state() -> dict:
    """This process's generator states, in types a weights-only checkpoint load accepts."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what ``get_rng_state`` returned (the GPU state only where there is a GPU)."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    np.random.set_state(("MT19937", saved["keys"].numpy().astype(np.uint32), saved["pos"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states() -> list[dict]:
    """Every rank's generator states, ordered by rank (a collective: call it on every rank)."""
    return dist_utils.all_gather(get_rng_state())


@contextmanager
def preserved_rng():
    """Run the body without moving the generators (evaluation between epochs draws from them: each
    DataLoader iterator takes a seed), so that training continues from the states a checkpoint holds."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def merge_stats(first: dict[str, float], n_first: int, second: dict[str, float], n_second: int,
                counts: Iterable[str] = ()) -> dict:
    """Averages over an epoch's iterations from the averages of two consecutive parts of it.

    The keys named in ``counts`` are totals of each part (e.g. skipped steps), so they add up.
    """
    if n_first <= 0:
        return dict(second)
    if n_second <= 0:
        return dict(first)
    merged = {**first, **second}
    for k in first.keys() & second.keys():
        if k in counts:
            merged[k] = first[k] + second[k]
        else:
            merged[k] = (first[k] * n_first + second[k] * n_second) / (n_first + n_second)
    return merged


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the training process decides when to stop, not its workers
    (SLURM signals every process of the job; a worker killed by SIGTERM would crash the graceful stop)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Preempted(SystemExit):
    """The run stopped on a signal; the exit code is 128 + the signal number, as a shell reports it."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


class StopRequest:
    """Turns SIGTERM into a request that training honours at the next batch boundary.

    Inside ``deferred()`` (training and checkpoint writing) the handler only records the signal;
    elsewhere (evaluation, set-up) it raises ``Preempted`` at once, since what was written so far
    is consistent: a resume repeats an evaluation that did not complete.
    """

    def __init__(self):
        self.signum: int | None = None
        self._deferring = 0

    @contextmanager
    def handling(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        """Install the handler for the body (only the main thread can; elsewhere signals stay as they are)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in signals}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextmanager
    def deferred(self):
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        if not self._deferring:
            name = signal.Signals(signum).name
            raise Preempted(signum, f"stopped by {name} outside training; the checkpoints written so far "
                                    "are intact (a resume first completes an evaluation that was cut short)")

    def agreed(self) -> bool:
        """Whether any rank was asked to stop (a collective in a distributed run: call it on every rank)."""
        flag = torch.tensor(1.0 if self.signum is not None else 0.0)
        if dist_utils.get_world_size() > 1:
            flag = dist_utils.reduce_dict({"stop": flag}, average=False)["stop"]
        stop = bool(flag.item() > 0)
        if stop and self.signum is None:
            self.signum = signal.SIGTERM
        return stop

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "no signal"


class ResumableBatchSampler(Sampler[list[int]]):
    """Wraps a batch sampler and keeps the current epoch's batches, so that a run stopped in the
    middle of an epoch can resume with the same order and without the batches it already trained."""

    def __init__(self, batch_sampler: Sampler[list[int]]):
        self.batch_sampler = batch_sampler
        self.batches: list[list[int]] = []
        self._resume: tuple[list[list[int]], int] | None = None

    @property
    def sampler(self) -> Sampler[int]:
        return self.batch_sampler.sampler

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def resume(self, batches: list[list[int]], skip: int) -> None:
        """The next iteration yields ``batches[skip:]`` instead of drawing a new order."""
        self._resume = ([list(b) for b in batches], skip)

    def __iter__(self) -> Iterator[list[int]]:
        if self._resume is not None:
            (self.batches, skip), self._resume = self._resume, None
        else:
            # Drawn all at once at the epoch's first batch, as the sampler would draw its order.
            self.batches, skip = [list(b) for b in self.batch_sampler], 0
        yield from self.batches[skip:]

    def __len__(self) -> int:
        if self._resume is not None:
            return len(self._resume[0]) - self._resume[1]
        return len(self.batch_sampler)


class EpochLoader:
    """The training batches of one epoch as ``train_one_epoch`` iterates them.

    At most ``max_iters`` batches per epoch (0: all); after a mid-epoch resume only those not yet
    trained; the iteration ends early, on every rank at the same batch, once a stop is requested.
    ``done`` counts the epoch's trained batches (those of the stopped run included) and ``stopped``
    says whether the last epoch ended on a stop request.
    """

    def __init__(self, loader: DataLoader, stop: StopRequest, max_iters: int = 0):
        if not isinstance(loader.batch_sampler, ResumableBatchSampler):
            raise TypeError("EpochLoader needs a DataLoader whose batch_sampler is a ResumableBatchSampler")
        self.loader = loader
        self.batch_sampler: ResumableBatchSampler = loader.batch_sampler
        self.stop = stop
        self.max_iters = max_iters
        self.done = 0
        self.stopped = False
        self._skip = 0
        self._rng: dict | None = None

    @property
    def epoch_length(self) -> int:
        """Batches in a whole epoch."""
        n = len(self.batch_sampler.batch_sampler)
        return min(n, self.max_iters) if self.max_iters else n

    def resume(self, batches: list[list[int]], done: int, rng_state: dict | None) -> None:
        """Continue the next epoch after its first ``done`` batches of ``batches``, the generators as
        they were when the stopped run reached that point."""
        self.batch_sampler.resume(batches, done)
        self._skip = done
        self._rng = rng_state

    def __len__(self) -> int:
        return self.epoch_length - self._skip

    def __iter__(self) -> Iterator:
        total = self.epoch_length
        self.done, self.stopped = self._skip, False
        rng, self._rng = self._rng, None
        try:
            batches = iter(self.loader)
            if rng is not None:
                # After the iterator drew its seed: the stopped run had drawn it at the epoch's start.
                set_rng_state(rng)
            while self.done < total:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                self.done += 1
                yield batch
                # Asked for the next batch: the one just yielded is trained (or, with a prefetching
                # consumer, will be before the iteration ends). Not after the last: the epoch is done.
                if self.done < total and self.stop.agreed():
                    self.stopped = True
                    return
        finally:
            self._skip = 0
