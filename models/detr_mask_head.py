"""DETR's published mask head (``mask_head.lay1..5``, ``gn1..5``, ``adapter1..3``, ``out_lay``), for the
detectors whose memory is one stride-32 map (DETR, Conditional DETR; stride 16 with ``--dilation``).

Per query: its M attention maps over the memory (``MHAttentionMap(..., softmax_over_heads=True)``,
``bbox_attention``) are stacked under the image's input projection (C channels, the map before the
encoder), then five conv3x3-GroupNorm-ReLU stages narrow the C + M channels to C/16 while three 1x1
adapters add the backbone's stride-16, 8 and 4 maps (layer3, layer2, layer1) after nearest upsampling;
``out_lay`` gives one logit per stride-4 pixel. Channels: lay1 C+M -> C+M, lay2 -> C/2, lay3 -> C/4,
lay4 -> C/8, lay5 -> C/16; adapter k maps the stride-(32 / 2**k) backbone map to lay(k+1)'s input width.

It plugs into ``models.segmentation.DETRsegm``: ``fpn_strides`` says which ``MaskFeatures.fpn`` maps it
reads, ``image_terms`` computes what every query of an image shares once (the projection, the adapted maps),
``query_masks`` the rest per query.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.segmentation import conv_gn, init_convs


def stage_widths(hidden_dim: int, num_heads: int) -> list[int]:
    """The channels of lay1..lay5's outputs: C + M, C/2, C/4, C/8, C/16."""
    return [hidden_dim + num_heads, hidden_dim // 2, hidden_dim // 4, hidden_dim // 8, hidden_dim // 16]


def channel_problem(hidden_dim: int, num_heads: int) -> str | None:
    """Why DETR's mask head cannot be built for these widths (one line naming the flags), or None: each
    stage's GroupNorm has 8 groups (fewer only below 8 channels)."""
    widths = stage_widths(hidden_dim, num_heads)
    if any(c < 1 or c % min(8, c) for c in widths):
        return (f"--masks: DETR's mask head normalises its stages of {widths} channels (--hidden_dim + "
                f"--nheads, then --hidden_dim / 2, 4, 8, 16) with GroupNorm(8): each must be a multiple of 8 "
                f"or below 8 (got --hidden_dim {hidden_dim}, --nheads {num_heads})")
    return None


class DETRMaskHead(nn.Module):
    """hidden_dim C, num_heads M; fpn_channels: the channels of the stride-16, 8, 4 backbone maps (1024, 512,
    256 for ResNet-50)."""

    fpn_strides = (16, 8, 4)

    def __init__(self, hidden_dim: int, num_heads: int, fpn_channels: tuple[int, int, int]) -> None:
        super().__init__()
        problem = channel_problem(hidden_dim, num_heads)
        if problem:
            raise ValueError(problem)
        dim, *widths = stage_widths(hidden_dim, num_heads)
        self.lay1, self.gn1 = conv_gn(dim, dim)
        self.lay2, self.gn2 = conv_gn(dim, widths[0])
        self.lay3, self.gn3 = conv_gn(widths[0], widths[1])
        self.lay4, self.gn4 = conv_gn(widths[1], widths[2])
        self.lay5, self.gn5 = conv_gn(widths[2], widths[3])
        self.out_lay = nn.Conv2d(widths[3], 1, 3, padding=1)
        self.adapter1 = nn.Conv2d(fpn_channels[0], widths[0], 1)
        self.adapter2 = nn.Conv2d(fpn_channels[1], widths[1], 1)
        self.adapter3 = nn.Conv2d(fpn_channels[2], widths[2], 1)
        init_convs(self)

    def image_terms(self, memory: Tensor, mask: Tensor, fpn: list[Tensor],
                    projected: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per image: the input projection (B, C, H, W) and the adapted stride-16, 8, 4 maps (B, C/2|C/4|C/8,
        H_s, W_s). The memory and its mask are read by the attention, not here."""
        if projected is None:
            raise ValueError("DETRMaskHead reads the input projection: MaskFeatures.projected is None")
        return projected, self.adapter1(fpn[0]), self.adapter2(fpn[1]), self.adapter3(fpn[2])

    def query_masks(self, attn: Tensor, projected: Tensor, adapted16: Tensor, adapted8: Tensor,
                    adapted4: Tensor) -> Tensor:
        """attn (B, Q, M, H, W) and ``image_terms`` -> mask logits (B, Q, H4, W4)."""
        b, q = attn.shape[:2]
        x = torch.cat([projected[:, None].expand(-1, q, -1, -1, -1), attn], 2)
        x = x.flatten(0, 1)  # (B*Q, C+M, H, W)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        for adapted, conv, norm in ((adapted16, self.lay3, self.gn3), (adapted8, self.lay4, self.gn4),
                                    (adapted4, self.lay5, self.gn5)):
            size = adapted.shape[-2:]
            x = F.interpolate(x, size=size, mode="nearest").view(b, q, -1, *size) + adapted[:, None]
            x = F.relu(norm(conv(x.flatten(0, 1))))
        return self.out_lay(x).view(b, q, *x.shape[-2:])
