"""A small vision transformer with BatchFormerV2: the two-stream BatchFormer inside the token sequence.

After block ``insert_idx`` the tokens x (B, L, C) become [x ; bf(x)] (2B, L, C), where the BatchFormer
attends across the B images at each token position; every later block, the final norm and the head
run on both streams with the same weights. At later insert indices only the second stream goes through
the BatchFormer (the detection model's rule, ``models/batchformer.py``). In evaluation the BatchFormer
is skipped and the model is the plain transformer, stream 0 of training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.batchformer import BF_DROPOUT, BF_HEADS, Layout, batchformer_step, build_batchformer


class TinyViT(nn.Module):
    """ViT on (B, in_chans, H, W) images: non-overlapping patches, a class token, learned positions,
    pre-norm blocks, a linear head on the class token. ``bf=True`` adds BatchFormerV2 (training only).
    """

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 2,
        in_chans: int = 1,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        bf: bool = False,
        insert_idx: int | Sequence[int] = 0,
        bf_depth: int = 1,
        bf_heads: int = BF_HEADS,
        bf_dropout: float = BF_DROPOUT,
    ) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(
                f"TinyViT: image_size {image_size} must be a multiple of patch_size {patch_size}"
            )
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        indices = [insert_idx] if isinstance(insert_idx, int) else list(insert_idx)
        if bf:
            bad = [i for i in indices if not 0 <= i < depth]
            if not indices or bad:
                raise ValueError(f"TinyViT: insert_idx must be block indices in [0, {depth}), got {indices}")
        self.insert_idx = tuple(sorted(set(indices))) if bf else ()
        self.bf = None
        if bf:  # built last, so the shared weights draw the same random numbers with or without it
            self.bf = build_batchformer(dim, bf_depth, nhead=bf_heads, dropout=bf_dropout, dim_name="dim")

    def embed(self, images: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> tokens (B, 1 + patches, dim)."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed

    def forward(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Returns (logits, labels): (2B, K) and [y ; y] in BatchFormer training, else (B, K) and y."""
        num_images = images.shape[0]
        two_stream = self.bf is not None and self.training
        x = self.embed(images)
        num_streams = 1
        for i, block in enumerate(self.blocks):
            x = block(x)
            if two_stream and i in self.insert_idx:
                x = batchformer_step(self.bf, x, Layout.BATCH_FIRST, num_images, two_stream=True,
                                     num_streams=num_streams)
                num_streams = 2
        if two_stream and labels is not None:
            labels = torch.cat([labels, labels], dim=0)
        return self.head(self.norm(x[:, 0])), labels
