"""Multi-scale deformable attention: the Python front of the op (docs/design/op.md).

``ms_deform_attn`` checks its inputs (once, with ``validation.py``), puts them in a dtype the
backends support and runs the PyTorch custom op ``msda::ms_deform_attn``, whose autograd is the
custom op ``msda::ms_deform_attn_backward``. Autograd, ``torch.compile(fullgraph=True)`` and
``torch.export`` therefore see one opaque node with a fake (shape-only) implementation. Inside
the op the backend is chosen by device (see ``extension.py``): the compiled CPU or CUDA kernels
of ``MultiScaleDeformableAttention``, or the pure-PyTorch ``grid_sample`` path.

Dtypes: the output is in the dtype of ``value``. Sampling locations and attention weights go to
the kernels in float32 (float64 when value is float64), never in a half dtype: a bfloat16
location would be off by up to a third of a pixel on a 167-pixel-wide level. On CPU, float16 and
bfloat16 values (what ``torch.autocast`` produces there) are computed in float32 and the output is
cast back, because the CPU backends support float32 and float64 only. On CUDA, float16 and
bfloat16 values stay as they are (the kernels interpolate and accumulate in float32); the
pure-PyTorch path computes them in float32. Gradients come back in the dtype of each input.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from . import extension
from .export_mode import is_exporting
from .level_shapes import host_values
from .validation import check_function_inputs, check_levels

__all__ = ["MSDeformAttnFunction", "ms_deform_attn", "ms_deform_attn_core_pytorch"]


def _per_level(value: Tensor, value_spatial_shapes: Tensor, sampling_locations: Tensor):
    """Yields (level, H, W, value_l (N*M, D, H, W), grid_l (N*M, Lq, P, 2)): grid_sample's layout."""
    n, _, n_heads, head_dim = value.shape
    shapes = host_values(value_spatial_shapes)  # ints, or symbolic ones in export mode
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    # With align_corners=False, grid -1 is the outer edge of pixel 0, so x in [0, 1] lands on
    # pixel x*W - 0.5 as the op defines; corners outside the map read the zero padding.
    grids = 2 * sampling_locations - 1
    for level, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W): each head samples its own slice of channels.
        value_l = value_per_level[level].flatten(2).transpose(1, 2).reshape(n * n_heads, head_dim, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        yield level, h, w, value_l, grid_l


def _sample(value_l: Tensor, grid_l: Tensor) -> Tensor:
    return F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)


def ms_deform_attn_core_pytorch(
    value: Tensor, value_spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """The op on ``F.grid_sample``: slow and memory hungry, but always available and differentiable.

    value (N, S, M, D); value_spatial_shapes (L, 2) as (H, W); sampling_locations
    (N, Lq, M, L, P, 2) as (x, y) in [0, 1]; attention_weights (N, Lq, M, L, P) -> (N, Lq, M*D).
    """
    n, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    if n * n_queries == 0:
        return value.new_zeros(n, n_queries, n_heads * head_dim)
    sampled = [_sample(v, g) for _, _, _, v, g in _per_level(value, value_spatial_shapes, sampling_locations)]
    # (N*M, D, Lq, L, P) -> (N*M, D, Lq, L*P), weighted by (N*M, 1, Lq, L*P) and summed over L*P.
    sampled = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(n * n_heads, 1, n_queries, n_levels * n_points)
    out = (sampled * weights).sum(-1)
    return out.view(n, n_heads * head_dim, n_queries).transpose(1, 2).contiguous()


def _core_pytorch_backward(
    value: Tensor,
    value_spatial_shapes: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``ms_deform_attn_core_pytorch`` written out (a custom op runs below autograd)."""
    n, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    # (N, Lq, M*D) -> (N*M, D, Lq, 1), the layout of grid_sample's output.
    grad_out = grad_output.view(n, n_queries, n_heads, head_dim).permute(0, 2, 3, 1)
    grad_out = grad_out.reshape(n * n_heads, head_dim, n_queries, 1)
    grad_value, grad_loc, grad_weights = [], [], []
    for level, h, w, value_l, grid_l in _per_level(value, value_spatial_shapes, sampling_locations):
        weights_l = (
            attention_weights[:, :, :, level].transpose(1, 2).reshape(n * n_heads, 1, n_queries, n_points)
        )
        grad_weights.append((grad_out * _sample(value_l, grid_l)).sum(1))  # (N*M, Lq, P)
        grad_value_l, grad_grid_l = torch.ops.aten.grid_sampler_2d_backward(
            grad_out * weights_l, value_l, grid_l, 0, 0, False, [True, True]
        )
        # (N*M, D, H, W) -> (N, H*W, M, D)
        grad_value.append(grad_value_l.view(n, n_heads, head_dim, h * w).permute(0, 3, 1, 2))
        grad_loc.append(2 * grad_grid_l)  # d grid / d loc = 2; (N*M, Lq, P, 2)
    grad_value = torch.cat(grad_value, dim=1)
    grad_loc = torch.stack(grad_loc, dim=2).view(n, n_heads, n_queries, n_levels, n_points, 2).transpose(1, 2)
    grad_weights = (
        torch.stack(grad_weights, dim=2).view(n, n_heads, n_queries, n_levels, n_points).transpose(1, 2)
    )
    return grad_value.contiguous(), grad_loc.contiguous(), grad_weights.contiguous()


def _compute_dtype(value: Tensor) -> torch.dtype:
    """The dtype the backends run in: value's, except half precision on CPU (float32 there)."""
    if value.device.type == "cpu" and value.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return value.dtype


def _coord_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype of sampling locations and attention weights for values in ``compute_dtype``."""
    return torch.float64 if compute_dtype == torch.float64 else torch.float32


def _forward_impl(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int,
) -> Tensor:
    """The forward custom op's real implementation (a plain function, so tests can run it on fake
    tensors where the custom op would run its shape-only fake)."""
    check_levels(value, spatial_shapes, level_start_index)
    kernels = extension.kernels_for(value.device)
    if kernels is None or value.shape[0] * sampling_locations.shape[1] == 0:
        # Half-precision values (CUDA) meet float32 locations: grid_sample wants one dtype.
        out = ms_deform_attn_core_pytorch(
            value.to(sampling_locations.dtype), spatial_shapes, sampling_locations, attention_weights
        )
        return out.to(value.dtype)
    return kernels.ms_deform_attn_forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
    )


_forward_op = torch.library.custom_op("msda::ms_deform_attn", mutates_args=())(_forward_impl)


@_forward_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
    n, _, n_heads, head_dim = value.shape
    return value.new_empty(n, sampling_locations.shape[1], n_heads * head_dim)


@torch.library.custom_op("msda::ms_deform_attn_backward", mutates_args=())
def _backward_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Tensor,
    im2col_step: int,
) -> tuple[Tensor, Tensor, Tensor]:
    kernels = extension.kernels_for(value.device)
    if value.shape[0] * sampling_locations.shape[1] == 0:
        return (
            value.new_zeros(value.shape),
            torch.zeros_like(sampling_locations),
            torch.zeros_like(attention_weights),
        )
    if kernels is None:
        grad_value, grad_loc, grad_weights = _core_pytorch_backward(
            value.to(sampling_locations.dtype),
            spatial_shapes,
            sampling_locations,
            attention_weights,
            grad_output.to(sampling_locations.dtype),
        )
        return grad_value.to(value.dtype), grad_loc, grad_weights
    grad_value, grad_loc, grad_weights = kernels.ms_deform_attn_backward(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_output,
        im2col_step,
    )
    return grad_value, grad_loc, grad_weights


@_backward_op.register_fake
def _(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output, im2col_step
):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def _setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ctx.im2col_step = im2col_step


def _backward(ctx, grad_output: Tensor):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_loc, grad_weights = _backward_op(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_output.contiguous(),
        ctx.im2col_step,
    )
    return grad_value, None, None, grad_loc, grad_weights, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _prepare_inputs(
    value: Tensor,
    value_spatial_shapes: Tensor,
    value_level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The validated inputs contiguous, value in the compute dtype, locations and weights in its
    coordinate dtype (float32, or float64 for float64 values)."""
    dtype = _compute_dtype(value)
    coord_dtype = _coord_dtype(dtype)
    return (
        value.to(dtype).contiguous(),
        value_spatial_shapes.contiguous(),
        value_level_start_index.contiguous(),
        sampling_locations.to(coord_dtype).contiguous(),
        attention_weights.to(coord_dtype).contiguous(),
    )


def run_validated(
    value: Tensor,
    value_spatial_shapes: Tensor,
    value_level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int,
) -> Tensor:
    """``ms_deform_attn`` for inputs a caller has already validated (``MSDeformAttn`` builds its own,
    consistent by construction); only the level sizes are still checked, inside the op."""
    inputs = _prepare_inputs(
        value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights
    )
    if is_exporting():
        # Standard operators an exporter can translate, instead of the opaque custom op.
        prepared, spatial_shapes, _, locations, weights = inputs
        out = ms_deform_attn_core_pytorch(prepared.to(locations.dtype), spatial_shapes, locations, weights)
        return out.to(value.dtype)
    return _forward_op(*inputs, im2col_step).to(value.dtype)


def ms_deform_attn(
    value: Tensor,
    value_spatial_shapes: Tensor,
    value_level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int = 64,
) -> Tensor:
    """Multi-scale deformable attention, differentiable in value, locations and weights.

    value (N, S, M, D); value_spatial_shapes (L, 2) int64 as (H, W); value_level_start_index (L,)
    int64; sampling_locations (N, Lq, M, L, P, 2) as (x, y) in [0, 1]; attention_weights
    (N, Lq, M, L, P) -> (N, Lq, M*D) in the dtype of value. Any batch size works with any
    ``im2col_step`` (the number of images the compiled kernels process at once).
    """
    inputs = (value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights)
    check_function_inputs(*inputs, im2col_step)
    return run_validated(*inputs, im2col_step)


class MSDeformAttnFunction(torch.autograd.Function):
    """The public op's autograd.Function, kept for code that calls ``MSDeformAttnFunction.apply``.

    It runs the same custom ops as ``ms_deform_attn``; gradients come back in the dtype of the input
    they belong to.
    """

    @staticmethod
    def forward(
        ctx,
        value: Tensor,
        value_spatial_shapes: Tensor,
        value_level_start_index: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
        im2col_step: int,
    ) -> Tensor:
        check_function_inputs(
            value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
            im2col_step,
        )
        inputs = _prepare_inputs(
            value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights
        )
        ctx.save_for_backward(*inputs)
        ctx.im2col_step = im2col_step
        ctx.grad_dtypes = (value.dtype, sampling_locations.dtype, attention_weights.dtype)
        return _forward_op(*inputs, im2col_step).to(value.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grads = _backward_op(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.to(value.dtype).contiguous(),
            ctx.im2col_step,
        )
        grad_value, grad_loc, grad_weights = (g.to(d) for g, d in zip(grads, ctx.grad_dtypes, strict=True))
        return grad_value, None, None, grad_loc, grad_weights, None
