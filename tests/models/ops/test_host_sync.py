"""The op reads nothing back from the GPU: no device-to-host synchronisation on the hot path.

Checked without a GPU on fake CUDA tensors (see ``FakeCuda`` in tests/models/conftest.py), where
any read of tensor data raises instead of blocking.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException

from models.ops.functions import ms_deform_attn
from models.ops.functions.level_shapes import host_values, level_tensors
from models.ops.modules import MSDeformAttn

SHAPES = [(6, 5), (3, 3), (2, 1)]


def test_module_forward_reads_nothing_back(fake_cuda):
    layer = fake_cuda.module(MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2))
    s = sum(h * w for h, w in SHAPES)
    with fake_cuda.run():
        shapes, start = level_tensors(SHAPES, "cuda")
        query = torch.randn(2, 7, 32, device="cuda")
        ref = torch.rand(2, 7, 3, 2, device="cuda")
        x = torch.randn(2, s, 32, device="cuda")
        mask = torch.zeros(2, s, dtype=torch.bool, device="cuda")
        # Called twice: the op's layers share one pair of level tensors per forward.
        out = layer(query, ref, x, shapes, start, mask)
        out = layer(query, ref, out.new_zeros(2, s, 32) + x, shapes, start, mask)
    assert out.shape == (2, 7, 32) and out.device.type == "cuda"


def test_wrong_level_sizes_are_still_caught_without_reading_the_device(fake_cuda):
    with fake_cuda.run():
        shapes, start = level_tensors(SHAPES, "cuda")
        value = torch.zeros(1, 40, 2, 4, device="cuda")  # 40 positions; the levels hold 30 + 9 + 2 = 41
        loc = torch.zeros(1, 3, 2, 3, 2, 2, device="cuda")
        weights = torch.zeros(1, 3, 2, 3, 2, device="cuda")
        with pytest.raises(ValueError, match=r"sum\(H\*W\) = 41 positions, but value has S = 40"):
            ms_deform_attn(value, shapes, start, loc, weights)


def test_level_shapes_made_elsewhere_are_read_on_the_device(fake_cuda):
    """A device tensor the op did not see made must be read (once): on fake tensors that raises."""
    with fake_cuda.run():
        _, start = level_tensors(SHAPES, "cuda")
        shapes = torch.zeros(3, 2, dtype=torch.long, device="cuda")
        with pytest.raises(DataDependentOutputException):
            ms_deform_attn(
                torch.zeros(1, 41, 2, 4, device="cuda"),
                shapes,
                start,
                torch.zeros(1, 3, 2, 3, 2, 2, device="cuda"),
                torch.zeros(1, 3, 2, 3, 2, device="cuda"),
            )


def test_host_values_follow_in_place_changes():
    shapes, start = level_tensors(SHAPES, "cpu")
    assert shapes.tolist() == [list(s) for s in SHAPES] and start.tolist() == [0, 30, 39]
    assert host_values(shapes) == shapes.tolist()
    shapes[0, 0] = 7
    assert host_values(shapes)[0] == [7, 5]


def test_level_tensors_trace_under_torch_compile():
    def offsets(x):
        shapes, start = level_tensors(SHAPES, x.device)
        return x + shapes.prod(1) + start

    compiled = torch.compile(offsets, fullgraph=True, backend="eager")
    assert compiled(torch.zeros(3)).tolist() == [30, 39, 41]


def test_level_tensors_work_under_inference_mode():
    # benchmark.py and users' inference scripts run the model under torch.inference_mode, whose
    # tensors carry no version counter.
    with torch.inference_mode():
        shapes, start = level_tensors(SHAPES, "cpu")
        assert host_values(shapes) == [list(s) for s in SHAPES]
        assert host_values(start) == start.tolist()
        made_elsewhere = torch.tensor([[3, 4]])
        assert host_values(made_elsewhere) == [[3, 4]]
        made_elsewhere[0, 0] = 5
        assert host_values(made_elsewhere) == [[5, 4]]
