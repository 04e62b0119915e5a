"""Input validation of the op: the one place that turns a bad input into a clear error.

Each entry point validates its own arguments once, under its own argument names, and then runs the
op without further checks:

- ``check_function_inputs``: ``ms_deform_attn`` and ``MSDeformAttnFunction.apply`` (value, the level
  tensors, sampling locations, attention weights, im2col_step);
- ``check_module_inputs``: ``MSDeformAttn.forward`` (query, reference points, input_flatten, the
  level tensors, the padding mask); the tensors it hands to the op it builds itself, consistent by
  construction;
- ``check_levels``: the level sizes themselves (that they are positive, add up to the value length
  and match the start indices). This needs the values of two integer tensors, so it runs when the
  op executes, not while ``torch.compile`` traces it; ``host_values`` reads them without a device
  synchronisation for tensors made by ``level_tensors``.

The checks above read only metadata (shape, dtype, device), so they trace under torch.compile. The
compiled kernels keep their own checks of shapes, dtypes, devices and contiguity, and skip any level
that does not fit inside value: those guard memory safety for a direct call of the compiled module
(docs/design/op.md); they are not where a user's mistake is reported.
"""

import torch
from torch import Tensor

from .level_shapes import host_values

__all__ = ["check_function_inputs", "check_levels", "check_module_inputs"]


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _tensors(where: str, named: dict[str, object]) -> None:
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _floating(where: str, named: dict[str, Tensor]) -> None:
    for name, t in named.items():
        if not t.is_floating_point():
            raise TypeError(f"{where}: {name} must be a floating-point tensor, got {t.dtype}")


def _same_device(where: str, first: str, named: dict[str, Tensor]) -> None:
    device = named[first].device
    for name, t in named.items():
        if t.device != device:
            raise ValueError(
                f"{where}: every input must be on the device of {first} ({device}); {name} is on {t.device}"
            )


def _level_tensors(
    where: str, shapes_name: str, start_name: str, shapes: Tensor, start: Tensor, n_levels: int | None
) -> int:
    """Checks the (L, 2) and (L,) int64 level tensors; returns L. ``n_levels`` fixes L when given."""
    want = "n_levels" if n_levels is None else f"n_levels={n_levels}"
    if shapes.dim() != 2 or shapes.shape[1] != 2 or (n_levels is not None and shapes.shape[0] != n_levels):
        raise ValueError(
            f"{where}: {shapes_name} must have shape ({want}, 2) holding (H, W), got {_shape(shapes)}"
        )
    for name, t in ((shapes_name, shapes), (start_name, start)):
        if t.dtype != torch.int64:
            raise TypeError(f"{where}: {name} must be int64 (torch.long), got {t.dtype}")
    levels = shapes.shape[0]
    if tuple(start.shape) != (levels,):
        raise ValueError(
            f"{where}: {start_name} must have shape ({levels},) for {levels} levels, got {_shape(start)}"
        )
    return levels


def check_function_inputs(
    value: Tensor,
    value_spatial_shapes: Tensor,
    value_level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int,
) -> None:
    """Shapes, dtypes and devices of the functional front's inputs (see ``ms_deform_attn``)."""
    where = "ms_deform_attn"
    named = {
        "value": value,
        "value_spatial_shapes": value_spatial_shapes,
        "value_level_start_index": value_level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    _tensors(where, named)
    if value.dim() != 4:
        raise ValueError(f"{where}: value must have shape (N, S, n_heads, head_dim), got {_shape(value)}")
    n, _, n_heads, _ = value.shape
    n_levels = _level_tensors(
        where,
        "value_spatial_shapes",
        "value_level_start_index",
        value_spatial_shapes,
        value_level_start_index,
        None,
    )
    if sampling_locations.dim() != 6:
        raise ValueError(
            f"{where}: sampling_locations must have shape (N, Lq, n_heads, n_levels, n_points, 2), "
            f"got {_shape(sampling_locations)}"
        )
    n_queries, n_points = sampling_locations.shape[1], sampling_locations.shape[4]
    expected_loc = (n, n_queries, n_heads, n_levels, n_points, 2)
    if tuple(sampling_locations.shape) != expected_loc:
        raise ValueError(
            f"{where}: sampling_locations must have shape (N, Lq, n_heads, n_levels, n_points, 2) = "
            f"{expected_loc} for value {_shape(value)} and {n_levels} levels, "
            f"got {_shape(sampling_locations)}"
        )
    if tuple(attention_weights.shape) != expected_loc[:-1]:
        raise ValueError(
            f"{where}: attention_weights must have shape (N, Lq, n_heads, n_levels, n_points) = "
            f"{expected_loc[:-1]}, got {_shape(attention_weights)}"
        )
    _floating(
        where,
        {"value": value, "sampling_locations": sampling_locations, "attention_weights": attention_weights},
    )
    _same_device(where, "value", named)
    if isinstance(im2col_step, bool) or not isinstance(im2col_step, int) or im2col_step <= 0:
        raise ValueError(f"{where}: im2col_step must be a positive int, got {im2col_step!r}")


def check_module_inputs(
    d_model: int,
    n_levels: int,
    query: Tensor,
    reference_points: Tensor,
    input_flatten: Tensor,
    input_spatial_shapes: Tensor,
    input_level_start_index: Tensor,
    input_padding_mask: Tensor | None,
) -> None:
    """Shapes, dtypes and devices of ``MSDeformAttn.forward``'s inputs, for a layer of width
    ``d_model`` over ``n_levels`` levels."""
    where = "MSDeformAttn"
    named = {
        "query": query,
        "reference_points": reference_points,
        "input_flatten": input_flatten,
        "input_spatial_shapes": input_spatial_shapes,
        "input_level_start_index": input_level_start_index,
    }
    if input_padding_mask is not None:
        named["input_padding_mask"] = input_padding_mask
    _tensors(where, named)
    if query.dim() != 3 or query.shape[-1] != d_model:
        raise ValueError(f"{where}: query must be (N, Lq, {d_model}), got {_shape(query)}")
    n, n_queries, _ = query.shape
    if input_flatten.dim() != 3 or input_flatten.shape[0] != n or input_flatten.shape[-1] != d_model:
        raise ValueError(f"{where}: input_flatten must be (N={n}, S, {d_model}), got {_shape(input_flatten)}")
    if (
        reference_points.dim() != 4
        or tuple(reference_points.shape[:3]) != (n, n_queries, n_levels)
        or reference_points.shape[-1] not in (2, 4)
    ):
        raise ValueError(
            f"{where}: reference_points must be (N={n}, Lq={n_queries}, n_levels={n_levels}, 2) "
            f"points or (..., 4) boxes, got {_shape(reference_points)}"
        )
    _level_tensors(
        where,
        "input_spatial_shapes",
        "input_level_start_index",
        input_spatial_shapes,
        input_level_start_index,
        n_levels,
    )
    if input_padding_mask is not None:
        s = input_flatten.shape[1]
        if tuple(input_padding_mask.shape) != (n, s):
            raise ValueError(
                f"{where}: input_padding_mask must be (N={n}, S={s}), got {_shape(input_padding_mask)}"
            )
        if input_padding_mask.dtype != torch.bool:
            raise TypeError(
                f"{where}: input_padding_mask must be bool (True on padding), got {input_padding_mask.dtype}"
            )
    _floating(where, {"query": query, "reference_points": reference_points, "input_flatten": input_flatten})
    _same_device(where, "query", named)


def check_levels(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor) -> None:
    """The level sizes against value (N, S, M, D): positive, summing to S, starting where they should.

    Runs inside the op (it needs the values); the names are the functional front's, with the
    module's in the message too, since both reach here.
    """
    aka = " (MSDeformAttn: input_spatial_shapes, input_level_start_index, input_flatten)"
    shapes = host_values(spatial_shapes)
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(
            f"ms_deform_attn: every level of value_spatial_shapes must be positive, got {shapes}{aka}"
        )
    sizes = [h * w for h, w in shapes]
    if sum(sizes) != value.shape[1]:
        raise ValueError(
            f"ms_deform_attn: the levels of value_spatial_shapes {shapes} hold sum(H*W) = {sum(sizes)} "
            f"positions, but value has S = {value.shape[1]} (value shape {_shape(value)}){aka}"
        )
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    given_starts = host_values(level_start_index)
    if given_starts != starts:
        raise ValueError(
            f"ms_deform_attn: value_level_start_index must be {starts} for value_spatial_shapes {shapes}, "
            f"got {given_starts}{aka}"
        )
