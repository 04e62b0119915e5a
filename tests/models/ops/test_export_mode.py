"""Export mode (models/ops/functions/export_mode.py): a graph traced at one image size computes the op
at any other, with standard operators only."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.ops.functions import ms_deform_attn
from models.ops.functions.export_mode import export_mode, is_exporting
from models.ops.functions.level_shapes import level_tensors
from models.ops.modules import MSDeformAttn


class TwoLevels(nn.Module):
    """What the detector does with the op: level sizes from the feature maps' shapes, then the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2)
        with torch.no_grad():
            self.attn.sampling_offsets.weight.normal_(0.0, 0.5)  # locations that depend on the query
            self.attn.attention_weights.weight.normal_(0.0, 0.5)

    def forward(self, x: torch.Tensor, query: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """x (N, 8, H, W); query (N, Q, 8); ref (N, Q, 2, 2) -> (N, Q, 8)."""
        maps = [x, F.avg_pool2d(x, 2)]
        flat = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)  # (N, S, 8)
        spatial_shapes, level_start_index = level_tensors([m.shape[-2:] for m in maps], x.device)
        return self.attn(query, ref, flat, spatial_shapes, level_start_index)


def _inputs(n: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
    return torch.randn(n, 8, h, w), torch.randn(n, 5, 8), torch.rand(n, 5, 2, 2)


def test_a_graph_traced_in_export_mode_computes_other_sizes():
    model = TwoLevels().eval()
    dynamic = torch.export.Dim.DYNAMIC
    with export_mode():
        program = torch.export.export(
            model, _inputs(2, 12, 10), strict=False,
            dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic}, {0: dynamic}, {0: dynamic}),
        )
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("msda" in t for t in targets), "the opaque custom op is left in the graph"
    assert any("grid_sampler" in t for t in targets)
    for size in ((3, 9, 14), (1, 16, 6)):  # neither the traced batch nor the traced levels
        inputs = _inputs(*size)
        with torch.no_grad():
            got = program.module()(*inputs)
            want = model(*inputs)  # the normal path: the compiled kernels where built
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_export_mode_is_scoped():
    assert not is_exporting()
    with export_mode():
        assert is_exporting()
    assert not is_exporting()


def test_level_tensors_not_made_by_level_tensors_are_refused_in_export_mode():
    """Their values would be frozen into the graph: say so instead of exporting a fixed-size model."""
    shapes = torch.tensor([[3, 2]])
    with export_mode(), pytest.raises(ValueError, match="must come from level_tensors"):
        ms_deform_attn(torch.zeros(1, 6, 2, 4), shapes, torch.tensor([0]), torch.zeros(1, 3, 2, 1, 2, 2),
                       torch.zeros(1, 3, 2, 1, 2))
