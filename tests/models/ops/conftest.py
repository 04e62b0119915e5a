"""Shared pieces of the op tests: an independent loop-based reference, input factories, backends."""

import importlib.util
import math

import pytest
import torch


def reference_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """The op written out point by point: bilinear interpolation of four corners, no grid_sample.

    value (N, S, M, D); spatial_shapes list of (H, W); sampling_locations (N, Lq, M, L, P, 2);
    attention_weights (N, Lq, M, L, P) -> (N, Lq, M*D). Differentiable in all three tensors.
    """
    n, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    starts = [sum(h * w for h, w in spatial_shapes[:i]) for i in range(n_levels)]
    rows = []
    for b in range(n):
        for q in range(n_queries):
            for m in range(n_heads):
                acc = value.new_zeros(head_dim)
                for lvl, (h, w) in enumerate(spatial_shapes):
                    for p in range(n_points):
                        # Location (x, y) in [0, 1] is pixel (x*W - 0.5, y*H - 0.5).
                        x = sampling_locations[b, q, m, lvl, p, 0] * w - 0.5
                        y = sampling_locations[b, q, m, lvl, p, 1] * h - 0.5
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        sample = value.new_zeros(head_dim)
                        for yy in (y0, y0 + 1):
                            for xx in (x0, x0 + 1):
                                if 0 <= yy < h and 0 <= xx < w:
                                    corner_weight = (1 - (x - xx).abs()) * (1 - (y - yy).abs())
                                    sample = sample + corner_weight * value[b, starts[lvl] + yy * w + xx, m]
                        acc = acc + attention_weights[b, q, m, lvl, p] * sample
                rows.append(acc)
    if not rows:  # no queries: zeros, still connected to the inputs so their gradients are 0
        link = 0 * (value.sum() + sampling_locations.sum() + attention_weights.sum())
        return value.new_zeros(n, n_queries, n_heads * head_dim) + link
    return torch.stack(rows).view(n, n_queries, n_heads * head_dim)


def make_inputs(
    spatial_shapes,
    n=2,
    n_queries=3,
    n_heads=2,
    head_dim=4,
    n_points=2,
    dtype=torch.float64,
    device="cpu",
    loc_low=-0.1,
    loc_high=1.1,
):
    """Random op inputs; locations uniform in [loc_low, loc_high] so some fall off the maps."""
    shapes = torch.tensor(spatial_shapes, dtype=torch.long, device=device)
    sizes = shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    n_levels = len(spatial_shapes)
    value = torch.rand(n, int(sizes.sum()), n_heads, head_dim, dtype=dtype, device=device)
    loc = torch.rand(n, n_queries, n_heads, n_levels, n_points, 2, dtype=dtype, device=device)
    loc = loc * (loc_high - loc_low) + loc_low
    weights = torch.rand(n, n_queries, n_heads, n_levels, n_points, dtype=dtype, device=device) + 1e-2
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, shapes, level_start_index, loc, weights


def compiled_kernels_for(device_type: str) -> bool:
    """Whether the installed extension has kernels for the device type (never triggers a build)."""
    if importlib.util.find_spec("MultiScaleDeformableAttention") is None:
        return False
    import MultiScaleDeformableAttention as ext

    if device_type == "cuda":
        return ext.compiled_with_cuda() and torch.cuda.is_available()
    return True


# (backend as MSDA_BACKEND, device); unavailable ones are skipped with the reason.
BACKENDS = [
    pytest.param(("pytorch", "cpu"), id="pytorch-cpu"),
    pytest.param(
        ("cpp", "cpu"),
        id="compiled-cpu",
        marks=pytest.mark.skipif(not compiled_kernels_for("cpu"), reason="extension not built (make.sh)"),
    ),
    pytest.param(
        ("cpp", "cuda"),
        id="compiled-cuda",
        marks=pytest.mark.skipif(not compiled_kernels_for("cuda"), reason="no GPU or no CUDA kernels"),
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Forces one backend through MSDA_BACKEND; yields the device its tensors go on."""
    name, device = request.param
    monkeypatch.setenv("MSDA_BACKEND", name)
    return device


@pytest.fixture
def reference():
    return reference_ms_deform_attn


@pytest.fixture
def inputs():
    return make_inputs
