"""Position encodings of the backbone feature maps.

Both map a padded batch of features, (B, C, H, W) with its padding mask (B, H, W), to an encoding
(B, hidden_dim, H, W) that the transformer adds to the attention queries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from util.misc import NestedTensor


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine of the normalised row and column index of each unpadded pixel.

    Channels are the y encoding then the x encoding, each ``num_pos_feats`` wide, with sin on
    even and cos on odd channels. Normalising by the unpadded extent makes the encoding of an
    image independent of how much padding the batch added to it: row i (1-based) of an image of
    h rows becomes (i - offset) / h * scale; ``offset`` is 0.5 in Deformable DETR (pixel centres),
    0 in DETR and Conditional DETR (their published weights were trained with each).
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000,
        normalize: bool = False,
        scale: float | None = None,
        offset: float = 0.5,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: normalize must be True when a scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.offset = offset

    def forward(self, tensor_list: NestedTensor) -> Tensor:
        mask = tensor_list.mask
        if mask is None:
            raise ValueError("PositionEmbeddingSine: the NestedTensor has no padding mask")
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (B, H, W)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed - self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed - self.offset) / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t  # (B, H, W, F)
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, H, W)


class PositionEmbeddingLearned(nn.Module):
    """A learned embedding per column (first half of the channels) and per row (second half)."""

    max_size = 50

    def __init__(self, num_pos_feats: int = 256) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(self.max_size, num_pos_feats)
        self.col_embed = nn.Embedding(self.max_size, num_pos_feats)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, tensor_list: NestedTensor) -> Tensor:
        x = tensor_list.tensors
        h, w = x.shape[-2:]
        if h > self.max_size or w > self.max_size:
            raise ValueError(
                f"PositionEmbeddingLearned: feature map {h}x{w} is larger than the {self.max_size}x"
                f"{self.max_size} positions it learns; use --position_embedding sine for larger images"
            )
        x_emb = self.col_embed(torch.arange(w, device=x.device))  # (W, F)
        y_emb = self.row_embed(torch.arange(h, device=x.device))  # (H, F)
        pos = torch.cat([x_emb[None].expand(h, -1, -1), y_emb[:, None].expand(-1, w, -1)], dim=-1)
        return pos.permute(2, 0, 1)[None].expand(x.shape[0], -1, -1, -1)  # (B, 2F, H, W)


def build_position_encoding(args, sine_offset: float = 0.5) -> nn.Module:
    """``--position_embedding sine|learned`` with hidden_dim / 2 features per coordinate; ``sine_offset``:
    the detector's normalisation of the sine encoding (``PositionEmbeddingSine``'s ``offset``)."""
    if args.hidden_dim % 2 != 0:
        raise ValueError(f"--hidden_dim must be even for the position encoding, got {args.hidden_dim}")
    n_steps = args.hidden_dim // 2
    if args.position_embedding == "sine":
        return PositionEmbeddingSine(n_steps, normalize=True, scale=args.position_embedding_scale,
                                     offset=sine_offset)
    if args.position_embedding == "learned":
        return PositionEmbeddingLearned(n_steps)
    raise ValueError(f"--position_embedding must be 'sine' or 'learned', got {args.position_embedding!r}")
