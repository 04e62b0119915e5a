"""models/ops/functions: every backend against the loop-based float64 reference of conftest.py."""

import pytest
import torch

from models.ops.functions import MSDeformAttnFunction, ms_deform_attn, ms_deform_attn_core_pytorch

# (spatial_shapes, n, n_queries, n_heads, head_dim, n_points, im2col_step)
CASES = {
    "one-level": ([(4, 5)], 2, 3, 2, 8, 2, 64),
    "non-square-levels": ([(6, 3), (2, 5), (1, 2)], 2, 3, 2, 4, 2, 64),
    "h-or-w-is-1": ([(1, 7), (5, 1), (1, 1)], 1, 4, 2, 3, 2, 64),
    "1-point-1-head": ([(3, 4), (2, 2)], 2, 3, 1, 8, 1, 64),
    "8-points-8-heads": ([(3, 3)], 1, 2, 8, 1, 8, 64),
    "head-dim-1": ([(3, 2), (2, 1)], 2, 2, 3, 1, 3, 64),
    "head-dim-32": ([(3, 3), (2, 2)], 1, 2, 2, 32, 2, 64),
    "head-dim-33": ([(3, 3), (2, 2)], 1, 2, 2, 33, 2, 64),
    "head-dim-64": ([(2, 3)], 1, 2, 1, 64, 2, 64),
    "batch-3-step-2": ([(3, 4), (2, 2)], 3, 2, 2, 4, 2, 2),
    "batch-5-step-3": ([(2, 3)], 5, 2, 1, 4, 1, 3),
    "empty-query-set": ([(3, 4), (2, 2)], 2, 0, 2, 4, 2, 64),
}


def _run_case(case, inputs, device, dtype=torch.float64):
    shapes_list, n, n_queries, n_heads, head_dim, n_points, step = CASES[case]
    value, shapes, start, loc, weights = inputs(
        shapes_list, n, n_queries, n_heads, head_dim, n_points, dtype, device
    )
    return shapes_list, step, value, shapes, start, loc, weights


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_gradients_match_reference(case, backend, inputs, reference):
    shapes_list, step, value, shapes, start, loc, weights = _run_case(case, inputs, backend)
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], shapes, start, leaves[1], leaves[2], step)

    cpu_leaves = [t.detach().cpu().requires_grad_() for t in (value, loc, weights)]
    expected = reference(cpu_leaves[0], shapes_list, cpu_leaves[1], cpu_leaves[2])
    assert out.shape == expected.shape
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-9, atol=1e-10)

    grad_out = torch.randn_like(expected)
    out.backward(grad_out.to(out.device))
    expected.backward(grad_out)
    for name, got, want in zip(("value", "locations", "weights"), leaves, cpu_leaves, strict=True):
        torch.testing.assert_close(got.grad.cpu(), want.grad, rtol=1e-8, atol=1e-9, msg=f"gradient of {name}")


def test_locations_on_borders_and_pixel_centres(backend, inputs, reference):
    """Exactly 0 and 1, pixel centres, and the half pixel beyond each edge (weight exactly 0)."""
    shapes_list = [(3, 4), (1, 2)]
    value, shapes, start, _, _ = inputs(shapes_list, n=1, n_heads=1, head_dim=5, device=backend)
    coords = torch.tensor([0.0, 1.0, 0.125, 0.375, 0.875, -0.125, 1.125, 0.5, -1.0, 2.0], dtype=torch.float64)
    xs, ys = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten()], -1)  # (100, 2)
    loc = grid[None, :, None, None, None, :].expand(1, -1, 1, 2, 1, 2).contiguous().to(backend)
    weights = torch.full((1, grid.shape[0], 1, 2, 1), 0.5, dtype=torch.float64, device=backend)
    out = ms_deform_attn(value, shapes, start, loc, weights, 64)
    expected = reference(value.cpu(), shapes_list, loc.cpu(), weights.cpu())
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64(backend, inputs):
    value, shapes, start, loc, weights = inputs(
        [(3, 4), (2, 3)], n=2, n_queries=2, head_dim=3, device=backend
    )
    # Keep the locations away from pixel edges, where bilinear interpolation has kinks.
    leaves = [value, loc.clamp(0.02, 0.98), weights]
    leaves = [t.detach().requires_grad_() for t in leaves]
    assert torch.autograd.gradcheck(
        lambda v, sl, aw: ms_deform_attn(v, shapes, start, sl, aw, 1), leaves, eps=1e-6, atol=1e-5
    )


def test_float32_matches_float64(backend, inputs):
    value, shapes, start, loc, weights = inputs(
        [(8, 11), (4, 6)], n=2, n_queries=16, head_dim=32, device=backend
    )
    out64 = ms_deform_attn(value, shapes, start, loc, weights, 64)
    out32 = ms_deform_attn(value.float(), shapes, start, loc.float(), weights.float(), 64)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-5)


def test_public_function_and_pytorch_core_agree(backend, inputs):
    value, shapes, start, loc, weights = inputs([(5, 4), (3, 2)], device=backend)
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, weights)]
    out = MSDeformAttnFunction.apply(leaves[0], shapes, start, leaves[1], leaves[2], 2)
    out.sum().backward()
    core_leaves = [t.detach().clone().requires_grad_() for t in (value, loc, weights)]
    core = ms_deform_attn_core_pytorch(core_leaves[0], shapes, core_leaves[1], core_leaves[2])
    core.sum().backward()
    torch.testing.assert_close(out, core)
    for got, want in zip(leaves, core_leaves, strict=True):
        torch.testing.assert_close(got.grad, want.grad)


def test_non_contiguous_inputs(backend, inputs):
    value, shapes, start, loc, weights = inputs([(4, 3), (2, 2)], n=2, n_queries=4, device=backend)
    expected = ms_deform_attn(value, shapes, start, loc, weights)
    value_nc = value.transpose(0, 1).contiguous().transpose(0, 1)
    loc_nc = torch.stack([loc, torch.zeros_like(loc)], -1)[..., 0]
    weights_nc = weights.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (value_nc.is_contiguous() or loc_nc.is_contiguous() or weights_nc.is_contiguous())
    shapes_nc = torch.stack([shapes[:, 0], shapes[:, 1]], 1).t().contiguous().t()
    torch.testing.assert_close(ms_deform_attn(value_nc, shapes_nc, start, loc_nc, weights_nc), expected)


def test_mixed_dtypes_follow_value_and_grads_keep_input_dtypes(backend, inputs):
    value, shapes, start, loc, weights = inputs([(4, 3)], device=backend)
    v = value.float().requires_grad_()
    sl = loc.detach().requires_grad_()  # float64
    aw = weights.float().requires_grad_()
    for fn in (ms_deform_attn, MSDeformAttnFunction.apply):
        out = fn(v, shapes, start, sl, aw, 64)
        assert out.dtype == torch.float32
        out.sum().backward()
        assert (v.grad.dtype, sl.grad.dtype, aw.grad.dtype) == (torch.float32, torch.float64, torch.float32)
        v.grad = sl.grad = aw.grad = None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cpu_runs_in_float32(dtype, inputs):
    value, shapes, start, loc, weights = inputs([(4, 3), (2, 2)], dtype=torch.float32)
    expected = ms_deform_attn(value.to(dtype).float(), shapes, start, loc, weights)
    v = value.to(dtype).requires_grad_()
    out = ms_deform_attn(v, shapes, start, loc, weights)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)
    out.float().sum().backward()
    assert v.grad.dtype == dtype


def test_autocast_on_cpu(inputs):
    value, shapes, start, loc, weights = inputs([(4, 3), (2, 2)], dtype=torch.float32)
    proj = torch.nn.Linear(value.shape[-1], value.shape[-1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = proj(value)
        assert v.dtype == torch.bfloat16
        out = ms_deform_attn(v, shapes, start, loc, weights)
    out.float().sum().backward()
    expected = ms_deform_attn(proj(value).detach(), shapes, start, loc, weights)
    torch.testing.assert_close(out.float(), expected, rtol=3e-2, atol=3e-2)
    assert proj.weight.grad is not None


def _bad(mutate):
    def build(inputs):
        value, shapes, start, loc, weights = inputs([(4, 3), (2, 2)], n=2, n_queries=3)
        args = {"value": value, "shapes": shapes, "start": start, "loc": loc, "weights": weights, "step": 64}
        mutate(args)
        return args

    return build


BAD_INPUTS = [
    (_bad(lambda a: a.update(value=a["value"][0])), ValueError, r"value must have shape \(N, S, n_heads"),
    (
        _bad(lambda a: a.update(shapes=a["shapes"].flatten())),
        ValueError,
        r"value_spatial_shapes must have shape",
    ),
    (_bad(lambda a: a.update(shapes=a["shapes"].float())), TypeError, "value_spatial_shapes must be int64"),
    (_bad(lambda a: a.update(start=a["start"].int())), TypeError, "value_level_start_index must be int64"),
    (
        _bad(lambda a: a.update(start=a["start"][:1])),
        ValueError,
        r"value_level_start_index must have shape \(2,\)",
    ),
    (_bad(lambda a: a.update(loc=a["loc"][..., 0])), ValueError, "sampling_locations must have shape"),
    (
        _bad(lambda a: a.update(loc=a["loc"][:, :, :1])),
        ValueError,
        r"sampling_locations must have shape .* \(2, 3, 2",
    ),
    (
        _bad(lambda a: a.update(weights=a["weights"][..., :1])),
        ValueError,
        "attention_weights must have shape",
    ),
    (_bad(lambda a: a.update(value=a["value"].long())), TypeError, "value must be a floating-point"),
    (_bad(lambda a: a.update(weights=a["weights"].int())), TypeError, "attention_weights must be a floating"),
    (_bad(lambda a: a.update(step=0)), ValueError, "im2col_step must be a positive int"),
    (_bad(lambda a: a.update(step=2.0)), ValueError, "im2col_step must be a positive int"),
    (
        _bad(lambda a: a.update(value=a["value"][:, :-1])),
        ValueError,
        r"sum\(H\*W\) = 16 positions, but value has S = 15",
    ),
    (_bad(lambda a: a.update(shapes=a["shapes"] * 0)), ValueError, "must be positive"),
    (
        _bad(lambda a: a.update(start=a["start"] + 1)),
        ValueError,
        r"value_level_start_index must be \[0, 12\]",
    ),
    (_bad(lambda a: a.update(value=a["value"].tolist())), TypeError, "value must be a torch.Tensor"),
    (_bad(lambda a: a.update(start=a["start"].to("meta"))), ValueError, "value_level_start_index is on meta"),
]


@pytest.mark.parametrize("build,error,message", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(build, error, message, inputs):
    a = build(inputs)
    with pytest.raises(error, match=message):
        ms_deform_attn(a["value"], a["shapes"], a["start"], a["loc"], a["weights"], a["step"])
