"""benchmarks/memory.py: the CPU peak from the profiler's allocation events, and the mask-head estimate."""
import torch

from benchmarks.memory import cpu_peak_bytes, mask_head_estimate


def test_cpu_peak_is_the_highest_sum_of_live_tensors():
    def fn():
        a = torch.empty(1_000_000, dtype=torch.float32)  # 4 MB
        b = torch.empty(500_000, dtype=torch.float64)  # 4 MB: 8 MB live
        del a, b
        c = torch.empty(1_500_000, dtype=torch.float32)  # 6 MB live after the frees
        del c

    peak = cpu_peak_bytes(fn)
    assert 8_000_000 <= peak < 8_100_000


def test_mask_head_estimate_at_the_published_size():
    """800x1333, batch 2, two streams, 300 queries, 8 heads, hidden 256: 100x167 and 200x334 cells,
    (16 + 320 + 32) and 49 maps per (image, query) row."""
    per_row = 368 * 100 * 167 + 49 * 200 * 334
    assert mask_head_estimate((800, 1333), 2, 2, 300) == 4 * 2 * 2 * 300 * per_row
    assert 40e9 < mask_head_estimate((800, 1333), 2, 2, 300) < 50e9
