"""models/ops/modules/ms_deform_attn.py: initialisation and forward of the MSDeformAttn layer."""

import math

import pytest
import torch

from models.ops.modules import MSDeformAttn

SHAPES = [(6, 5), (3, 3), (2, 1)]


def _level_inputs(shapes_list):
    shapes = torch.tensor(shapes_list, dtype=torch.long)
    sizes = shapes.prod(1)
    return shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]]), int(sizes.sum())


def test_parameters_and_state_dict_keys():
    layer = MSDeformAttn(d_model=256, n_levels=4, n_heads=8, n_points=4)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (256, 256),
        "sampling_offsets.bias": (256,),
        "attention_weights.weight": (128, 256),
        "attention_weights.bias": (128,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }
    assert layer.im2col_step == 64


@pytest.mark.parametrize("n_heads,n_levels,n_points", [(8, 4, 4), (6, 2, 3), (1, 1, 1)])
def test_initialisation(n_heads, n_levels, n_points):
    layer = MSDeformAttn(d_model=16 * n_heads, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
    assert torch.count_nonzero(layer.sampling_offsets.weight) == 0
    bias = layer.sampling_offsets.bias.view(n_heads, n_levels, n_points, 2)
    for h in range(n_heads):
        angle = 2 * math.pi * h / n_heads
        cos, sin = math.cos(angle), math.sin(angle)
        scale = max(abs(cos), abs(sin))
        for lvl in range(n_levels):
            for p in range(n_points):
                want = torch.tensor([cos / scale * (p + 1), sin / scale * (p + 1)])
                torch.testing.assert_close(bias[h, lvl, p], want, atol=1e-6, rtol=1e-6)
    for t in (
        layer.attention_weights.weight,
        layer.attention_weights.bias,
        layer.value_proj.bias,
        layer.output_proj.bias,
    ):
        assert torch.count_nonzero(t) == 0
    d = layer.d_model
    bound = math.sqrt(6 / (d + d))  # xavier-uniform
    for proj in (layer.value_proj, layer.output_proj):
        assert proj.weight.abs().max() <= bound
        assert proj.weight.std() > bound / 3


def test_bad_construction():
    with pytest.raises(ValueError, match=r"d_model \(100\) must be divisible by n_heads \(8\)"):
        MSDeformAttn(d_model=100, n_heads=8)
    with pytest.raises(ValueError, match="n_points must be a positive int"):
        MSDeformAttn(n_points=0)
    with pytest.warns(UserWarning, match="head_dim = d_model / n_heads = 12 is not a power of 2"):
        MSDeformAttn(d_model=96, n_heads=8)


def _expected_output(layer, query, locations_fn, x, shapes_list, reference, mask=None):
    """The layer recomputed by hand around the loop-based reference op."""
    n, n_queries, _ = query.shape
    m, lv, p = layer.n_heads, layer.n_levels, layer.n_points
    value = layer.value_proj(x)
    if mask is not None:
        value = value * (~mask)[..., None]
    value = value.view(n, x.shape[1], m, -1)
    offsets = layer.sampling_offsets(query).view(n, n_queries, m, lv, p, 2)
    weights = (
        layer.attention_weights(query).view(n, n_queries, m, lv * p).softmax(-1).view(n, n_queries, m, lv, p)
    )
    out = reference(value, shapes_list, locations_fn(offsets), weights)
    return layer.output_proj(out)


def _random_layer(n_levels):
    layer = MSDeformAttn(d_model=16, n_levels=n_levels, n_heads=2, n_points=2).double()
    with torch.no_grad():  # non-trivial offsets and weights, as after training
        layer.sampling_offsets.weight.normal_(0, 0.5)
        layer.attention_weights.weight.normal_(0, 0.5)
    return layer


def test_forward_with_2d_reference_points(reference):
    shapes, start, s = _level_inputs(SHAPES)
    layer = _random_layer(len(SHAPES))
    query = torch.randn(2, 4, 16, dtype=torch.float64)
    x = torch.randn(2, s, 16, dtype=torch.float64)
    ref = torch.rand(2, 4, len(SHAPES), 2, dtype=torch.float64)
    out = layer(query, ref, x, shapes, start)

    def locations(offsets):  # offsets are in pixels of each level: divide by (W, H)
        wh = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float64)
        return ref[:, :, None, :, None, :] + offsets / wh[None, None, None, :, None, :]

    torch.testing.assert_close(out, _expected_output(layer, query, locations, x, SHAPES, reference))


def test_forward_with_4d_reference_boxes(reference):
    shapes, start, s = _level_inputs(SHAPES)
    layer = _random_layer(len(SHAPES))
    query = torch.randn(2, 3, 16, dtype=torch.float64)
    x = torch.randn(2, s, 16, dtype=torch.float64)
    boxes = torch.rand(2, 3, len(SHAPES), 4, dtype=torch.float64) * 0.5 + 0.25
    out = layer(query, boxes, x, shapes, start)

    def locations(offsets):  # P steps reach half the box width/height around its centre
        b = boxes[:, :, None, :, None, :]
        return b[..., :2] + offsets / layer.n_points * b[..., 2:] * 0.5

    torch.testing.assert_close(out, _expected_output(layer, query, locations, x, SHAPES, reference))


def test_padding_mask_zeroes_padded_values(reference):
    shapes, start, s = _level_inputs(SHAPES)
    layer = _random_layer(len(SHAPES))
    query = torch.randn(2, 4, 16, dtype=torch.float64)
    x = torch.randn(2, s, 16, dtype=torch.float64)
    ref = torch.rand(2, 4, len(SHAPES), 2, dtype=torch.float64)
    mask = torch.rand(2, s) < 0.4
    out = layer(query, ref, x, shapes, start, mask)
    # Whatever sits under the mask is never seen.
    out_changed = layer(query, ref, x + 100.0 * mask[..., None], shapes, start, mask)
    torch.testing.assert_close(out, out_changed)
    unmasked = layer(query, ref, x, shapes, start)
    assert not torch.allclose(out, unmasked)


def test_initial_layer_samples_its_direction_grid():
    """With the initial parameters every head reads its ring of points around the reference point."""
    shapes, start, s = _level_inputs([(9, 9)])
    layer = MSDeformAttn(d_model=4, n_levels=1, n_heads=4, n_points=1).double()
    with torch.no_grad():
        layer.value_proj.weight.copy_(torch.eye(4))
        layer.output_proj.weight.copy_(torch.eye(4))
    # Feature map whose 4 channels are the pixel column index.
    cols = torch.arange(9, dtype=torch.float64).repeat(9)  # (81,) x of each row-major pixel
    x = cols[None, :, None].expand(1, s, 4).contiguous()
    ref = torch.full((1, 1, 1, 2), 0.5, dtype=torch.float64)  # centre pixel (4, 4)
    out = layer(torch.zeros(1, 1, 4, dtype=torch.float64), ref, x, shapes, start)
    # Head h is channel h; heads 0..3 point right, up(+y), left, down(-y): x = 5, 4, 3, 4.
    torch.testing.assert_close(out[0, 0], torch.tensor([5.0, 4.0, 3.0, 4.0], dtype=torch.float64))


BAD_FORWARD = [
    ({"reference_points": torch.rand(2, 4, 3, 3)}, "reference_points must be"),
    ({"reference_points": torch.rand(2, 4, 2)}, "reference_points must be"),
    ({"reference_points": torch.rand(2, 4, 2, 2)}, "reference_points must be"),
    ({"query": torch.rand(2, 4, 8)}, r"query must be \(N, Lq, 16\)"),
    ({"input_flatten": torch.rand(3, 41, 16)}, r"input_flatten must be \(N=2"),
    (
        {"input_padding_mask": torch.zeros(2, 40, dtype=torch.bool)},
        r"input_padding_mask must be \(N=2, S=41\)",
    ),
    (
        {"input_spatial_shapes": torch.tensor([[6, 5], [3, 3]])},
        r"input_spatial_shapes must have shape \(n_levels=3, 2\)",
    ),
]


@pytest.mark.parametrize("override,message", BAD_FORWARD)
def test_bad_forward_inputs(override, message):
    shapes, start, s = _level_inputs(SHAPES)
    layer = MSDeformAttn(d_model=16, n_levels=3, n_heads=2, n_points=2)
    args = {
        "query": torch.rand(2, 4, 16),
        "reference_points": torch.rand(2, 4, 3, 2),
        "input_flatten": torch.rand(2, s, 16),
        "input_spatial_shapes": shapes,
        "input_level_start_index": start,
        "input_padding_mask": None,
    }
    args.update(override)
    with pytest.raises(ValueError, match=message):
        layer(**args)
