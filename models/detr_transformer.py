"""DETR's transformer: the sequence-first encoder (``models/transformer_encoder.py``) with BatchFormerV2, and
a decoder of learned object queries.

Shapes: B images, S = H * W positions of the projected feature map, Q queries, C = d_model, D decoder
layers; B' = num_streams * B (two streams in BatchFormerV2 training). Published keys:
``transformer.bf.*`` (the BatchFormer, first), ``transformer.encoder.*``, ``transformer.decoder.layers.N.
{self_attn, multihead_attn, linear1, linear2, norm1, norm2, norm3}.*``, ``transformer.decoder.norm.*``.

Decoder layer (post-norm, published default): the target starts at zeros; self-attention with the
query position (``query_embed``) added to queries and keys, then norm1; cross-attention with the query
position on the queries and the encoder's position encoding on the memory keys (values: the memory,
padded positions masked), then norm2; FFN, then norm3. ``--pre_norm`` moves each norm in front of its
block. The decoder's final LayerNorm ``norm`` applies to every layer's output it returns (the auxiliary
heads read them normalised).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.activation_checkpoint import maybe_checkpointed
from models.batchformer import BatchFormerConfig
from models.transformer_encoder import TransformerEncoder


class TransformerDecoderLayer(nn.Module):
    """Self-attention among the queries, cross-attention into the memory, FFN; post- or pre-norm."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor, pos: Tensor,
                memory_padding_mask: Tensor | None = None) -> Tensor:
        """tgt, query_pos (Q, B, C); memory, pos (S, B, C); memory_padding_mask (B, S) -> (Q, B, C)."""
        if self.pre_norm:
            tgt = tgt + self._self_attend(self.norm1(tgt), query_pos)
            tgt = tgt + self._cross_attend(self.norm2(tgt), memory, query_pos, pos, memory_padding_mask)
            return tgt + self._ffn(self.norm3(tgt))
        tgt = self.norm1(tgt + self._self_attend(tgt, query_pos))
        tgt = self.norm2(tgt + self._cross_attend(tgt, memory, query_pos, pos, memory_padding_mask))
        return self.norm3(tgt + self._ffn(tgt))

    def _self_attend(self, x: Tensor, query_pos: Tensor) -> Tensor:
        q = k = x + query_pos
        return self.dropout1(self.self_attn(q, k, x, need_weights=False)[0])

    def _cross_attend(self, x: Tensor, memory: Tensor, query_pos: Tensor, pos: Tensor,
                      memory_padding_mask: Tensor | None) -> Tensor:
        attended = self.multihead_attn(x + query_pos, memory + pos, memory,
                                       key_padding_mask=memory_padding_mask, need_weights=False)[0]
        return self.dropout2(attended)

    def _ffn(self, x: Tensor) -> Tensor:
        return self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x)))))


class TransformerDecoder(nn.Module):
    """``num_layers`` decoder layers and the final LayerNorm ``norm``, applied to every layer's output.

    ``use_checkpoint`` (``--use_checkpoint``): each layer is recomputed in the backward pass."""

    def __init__(self, d_model: int, nhead: int, num_layers: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, pre_norm: bool = False, use_checkpoint: bool = False) -> None:
        super().__init__()
        layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, pre_norm)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.use_checkpoint = use_checkpoint

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor, pos: Tensor,
                memory_padding_mask: Tensor | None = None) -> Tensor:
        """tgt, query_pos (Q, B, C); memory, pos (S, B, C) -> every layer's normalised output (D, Q, B, C)."""
        outputs = []
        for layer in self.layers:
            tgt = maybe_checkpointed(self.use_checkpoint, layer, tgt, memory, query_pos, pos,
                                     memory_padding_mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


@dataclass
class DETRTransformerOutput:
    """One transformer pass; B' = num_streams * B."""

    hs: Tensor  # (D, B', Q, C) every decoder layer's normalised output
    memory: Tensor  # (B', C, H, W) the encoder output as a map
    num_streams: int = 1


class Transformer(nn.Module):
    """DETR's encoder-decoder, with BatchFormerV2 inside the encoder when ``batchformer`` is given (a
    ``BatchFormerConfig``: ``self.bf`` one layer for every position, or one per position ``self.bf[str(i)]``,
    then also registered as ``self.encoder.bf`` so that the published keys exist)."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 pre_norm: bool = False, batchformer: BatchFormerConfig | None = None,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        self.d_model, self.nhead = d_model, nhead
        self.batchformer = batchformer  # None: no BatchFormerV2
        if batchformer is not None:
            self.bf = batchformer.build(d_model)  # before the encoder, as the published keys are ordered
        self.encoder = TransformerEncoder(d_model, nhead, num_encoder_layers, dim_feedforward, dropout,
                                          pre_norm, use_checkpoint)
        if batchformer is not None:
            batchformer.alias(self.encoder, self.bf)
        self.decoder = TransformerDecoder(d_model, nhead, num_decoder_layers, dim_feedforward, dropout,
                                          pre_norm, use_checkpoint)
        for p in self.parameters():  # the BatchFormer included, as published
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def batchformer_spans_ranks(self) -> bool:
        """Whether this pass's BatchFormer attends across every rank's images: the images must then be
        padded alike on every rank (``models.batchformer.pad_to_common_size``)."""
        return self.batchformer is not None and self.batchformer.spans_ranks(self.training)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor) -> DETRTransformerOutput:
        """src, pos (B, C, H, W) the projected map and its position encoding; mask (B, H, W) True on padding;
        query_embed (Q, C) the learned query positions."""
        b, c, h, w = src.shape
        plan = None if self.batchformer is None else self.batchformer.plan(self.bf, self.training)
        encoded = self.encoder(src.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1),
                               mask.flatten(1), batchformer=plan)  # (S, B', C)
        streams_b = encoded.memory.shape[1]
        query_pos = query_embed[:, None].expand(-1, streams_b, -1)  # (Q, B', C)
        hs = self.decoder(torch.zeros_like(query_pos), encoded.memory, query_pos, encoded.pos,
                          encoded.padding_mask)  # (D, Q, B', C)
        memory = encoded.memory.permute(1, 2, 0).reshape(streams_b, c, h, w)
        return DETRTransformerOutput(hs.transpose(1, 2), memory, encoded.num_streams)


def build_transformer(args, batchformer: BatchFormerConfig | None = None) -> Transformer:
    """DETR's transformer of ``args``, with the BatchFormerV2 ``batchformer`` resolved from them."""
    return Transformer(d_model=args.hidden_dim, nhead=args.nheads, num_encoder_layers=args.enc_layers,
                       num_decoder_layers=args.dec_layers, dim_feedforward=args.dim_feedforward,
                       dropout=args.dropout, pre_norm=bool(args.pre_norm), batchformer=batchformer,
                       use_checkpoint=bool(args.use_checkpoint))
