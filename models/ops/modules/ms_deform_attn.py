"""The multi-scale deformable attention layer of Deformable DETR (docs/design/op.md)."""

import math
import warnings

import torch
from torch import Tensor, nn

from ..functions.ms_deform_attn_func import run_validated
from ..functions.validation import check_module_inputs


class MSDeformAttn(nn.Module):
    """Each query attends to ``n_points`` sampled positions per head and feature level.

    The positions are the query's reference point plus learned offsets; their features are mixed
    with learned, softmax-normalised weights over the ``n_levels * n_points`` samples of a head.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        for name, v in (
            ("d_model", d_model),
            ("n_levels", n_levels),
            ("n_heads", n_heads),
            ("n_points", n_points),
        ):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"MSDeformAttn: {name} must be a positive int, got {v!r}")
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        head_dim = d_model // n_heads
        if head_dim & (head_dim - 1) != 0:
            warnings.warn(
                f"MSDeformAttn: head_dim = d_model / n_heads = {head_dim} is not a power of 2; "
                "the CUDA kernels are most efficient when it is",
                stacklevel=2,
            )
        # Images the compiled kernels process per step; any batch size works.
        self.im2col_step = 64
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Before training, head h samples along the direction at angle 2*pi*h/heads, its points at
        # 1, 2, ..., P steps (the direction scaled so its larger component is 1), on every level.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (M, 2) as (x, y)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32)  # (P,)
        grid = directions[:, None, None, :] * steps[None, None, :, None]  # (M, 1, P, 2)
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.constant_(proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """query (N, Lq, C); reference_points (N, Lq, L, 2) as (x, y) in [0, 1], or (N, Lq, L, 4) as
        boxes (cx, cy, w, h); input_flatten (N, S, C) with S = sum of H*W over the levels;
        input_spatial_shapes (L, 2) as (H, W); input_level_start_index (L,); input_padding_mask
        (N, S), True on padding -> (N, Lq, C).
        """
        check_module_inputs(
            self.d_model, self.n_levels, query, reference_points, input_flatten, input_spatial_shapes,
            input_level_start_index, input_padding_mask,
        )
        m, levels, points = self.n_heads, self.n_levels, self.n_points
        n, n_queries, _ = query.shape
        s = input_flatten.shape[1]

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, m, self.d_model // m)

        offsets = self.sampling_offsets(query).view(n, n_queries, m, levels, points, 2)
        weights = self.attention_weights(query).view(n, n_queries, m, levels * points)
        weights = weights.softmax(-1).view(n, n_queries, m, levels, points)

        ref = reference_points[:, :, None, :, None, :]  # (N, Lq, 1, L, 1, 2 or 4)
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: (W, H) turns them into normalised units.
            size_wh = input_spatial_shapes.flip(-1).to(reference_points.dtype)  # (L, 2) as (W, H)
            sampling_locations = ref + offsets / size_wh[None, None, None, :, None, :]
        else:
            # Offsets are in units of the box: P steps reach half its width/height.
            sampling_locations = ref[..., :2] + offsets / points * ref[..., 2:] * 0.5

        # Built here from checked inputs, so the op's own front checks are not repeated.
        output = run_validated(
            value,
            input_spatial_shapes,
            input_level_start_index,
            sampling_locations,
            weights,
            self.im2col_step,
        )
        return self.output_proj(output)
