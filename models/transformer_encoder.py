"""The sequence-first transformer encoder of DETR and Conditional DETR, with BatchFormerV2 inside it.

Shapes: S = H * W flattened positions of one feature map, B images, C = d_model. The encoder works
sequence-first, (S, B, C), as the published models (``nn.MultiheadAttention``'s default layout), and its
state-dict keys are theirs: ``layers.N.self_attn.*``, ``layers.N.linear1/linear2.*``, ``layers.N.norm1/
norm2.*``, and ``norm.*`` with ``--pre_norm`` only.

A layer adds the position encoding to the queries and keys of its self-attention, never to the values,
and ignores padded positions (``padding_mask`` (B, S), True on padding). Post-norm (published default):
x = norm1(x + attn(x + pos)), x = norm2(x + ffn(x)). Pre-norm (``--pre_norm``): the norms move in front
of each block, x = x + attn(norm1(x) + pos, values norm1(x)), x = x + ffn(norm2(x)), and the encoder ends
with a LayerNorm.

BatchFormerV2: after each layer a ``BatchFormerRun`` (layout ``SEQUENCE_FIRST``) applies the plan's layer,
if any (``models/batchformer.py``); when that doubles the batch into two streams the position encoding and
the padding mask are doubled with it, and the encoder returns them so that the decoder attends over the
second stream with the same keys' positions and padding. The final LayerNorm (pre-norm) comes after the
last BatchFormer step (``--bf 1`` runs after the last layer, before that norm).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.activation_checkpoint import maybe_checkpointed
from models.batchformer import BatchFormerPlan, BatchFormerRun, Layout


class TransformerEncoderLayer(nn.Module):
    """Self-attention with the position encoding on queries and keys, then the FFN
    (linear1-ReLU-dropout-linear2); post-norm, or pre-norm with ``pre_norm``."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """src, pos (S, B, C); padding_mask (B, S) -> (S, B, C)."""
        if self.pre_norm:
            src = src + self._attend(self.norm1(src), pos, padding_mask)
            return src + self._ffn(self.norm2(src))
        src = self.norm1(src + self._attend(src, pos, padding_mask))
        return self.norm2(src + self._ffn(src))

    def _attend(self, x: Tensor, pos: Tensor, padding_mask: Tensor | None) -> Tensor:
        q = k = x + pos
        return self.dropout1(self.self_attn(q, k, x, key_padding_mask=padding_mask, need_weights=False)[0])

    def _ffn(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x)))))


@dataclass
class EncoderOutput:
    """One encoder pass; B' = num_streams * B (2 once two-stream BatchFormerV2 training doubled the batch:
    rows B..2B-1 are images 0..B-1 again, through the BatchFormer)."""

    memory: Tensor  # (S, B', C)
    pos: Tensor  # (S, B', C) the position encoding of every row of memory
    padding_mask: Tensor | None  # (B', S) True on padding
    num_streams: int = 1


class TransformerEncoder(nn.Module):
    """``num_layers`` encoder layers (``layers``), a final LayerNorm ``norm`` with ``pre_norm`` (None
    otherwise), and BatchFormerV2 after the layers a ``BatchFormerPlan`` names.

    The BatchFormer layers belong to the transformer that holds this encoder (published keys
    ``transformer.bf.*``; with one layer per position ``BatchFormerConfig.alias`` also registers them here
    as ``bf``); a pass receives the plan made from them. ``use_checkpoint`` (``--use_checkpoint``): each
    layer is recomputed in the backward pass (the plan says whether its BatchFormer steps are).
    """

    def __init__(self, d_model: int, nhead: int, num_layers: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, pre_norm: bool = False, use_checkpoint: bool = False) -> None:
        super().__init__()
        layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, pre_norm)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model) if pre_norm else None
        self.use_checkpoint = use_checkpoint

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Tensor | None = None,
                batchformer: BatchFormerPlan | None = None) -> EncoderOutput:
        """src, pos (S, B, C); padding_mask (B, S) True on padding -> ``EncoderOutput``."""
        run = BatchFormerRun(batchformer, Layout.SEQUENCE_FIRST, num_images=src.shape[1])
        x = src
        for i, layer in enumerate(self.layers):
            x = maybe_checkpointed(self.use_checkpoint, layer, x, pos, padding_mask)
            x, doubled = run.after_layer(i, x)
            if doubled:  # the second stream holds the same images: their positions and padding too
                pos = torch.cat([pos, pos], dim=1)
                if padding_mask is not None:
                    padding_mask = torch.cat([padding_mask, padding_mask])
        if self.norm is not None:
            x = self.norm(x)
        return EncoderOutput(x, pos, padding_mask, run.num_streams)
