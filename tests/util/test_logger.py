"""SmoothedValue.synchronize_between_processes: global count and total through util.dist's all_reduce.

The two-process and cuda-only-backend runs are in tests/util/test_dist.py; here the collective is
replaced by a stand-in for a second rank, to pin down what is reduced and what stays local.
"""
import torch

import util.logger as logger_module
from util.logger import MetricLogger, SmoothedValue


def test_without_a_process_group_nothing_changes():
    meter = SmoothedValue(window_size=2)
    for v in (1.0, 2.0, 3.0):
        meter.update(v)
    meter.synchronize_between_processes()
    assert (meter.count, meter.total, list(meter.deque)) == (3, 6.0, [2.0, 3.0])


def test_count_and_total_go_through_the_dist_helper(monkeypatch):
    """Another rank with 5 values summing to 20: count and total become global, the window stays."""
    calls = []

    def other_rank_adds(t: torch.Tensor) -> torch.Tensor:
        calls.append((t.dtype, t.tolist()))
        t += torch.tensor([5.0, 20.0], dtype=t.dtype)
        return t

    monkeypatch.setattr(logger_module, "is_dist_avail_and_initialized", lambda: True)
    monkeypatch.setattr(logger_module, "all_reduce", other_rank_adds)
    logger = MetricLogger()
    for v in (1.0, 2.0):
        logger.update(loss=v)
    logger.synchronize_between_processes()
    meter = logger.meters["loss"]
    assert calls == [(torch.float64, [2.0, 3.0])]  # float64: a count stays exact past 2**24
    assert (meter.count, meter.total, meter.global_avg) == (7, 23.0, 23.0 / 7)
    assert list(meter.deque) == [1.0, 2.0]
