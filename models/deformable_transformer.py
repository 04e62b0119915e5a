"""The deformable transformer: encoder, decoder, two-stage proposals.

Shapes: B images, L feature levels, S = sum of H_l * W_l flattened positions, C = d_model,
Q queries. ``DeformableTransformer.forward`` returns the public 5-tuple
(hs, init_reference, inter_references, enc_outputs_class, enc_outputs_coord_unact);
``forward_features`` returns a ``TransformerOutput`` that also carries what a mask head needs:
the encoder memory (B', S, C), spatial shapes (L, 2), level start index (L,), the padding mask
(B', S) and valid ratios (B', L, 2), and ``num_streams``: B' = num_streams * B, 2 in two-stream
BatchFormerV2 training (stream 1 is images 0..B-1 again), else 1.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.activation_checkpoint import maybe_checkpointed
from models.batchformer import BatchFormerConfig, BatchFormerPlan, BatchFormerRun, Layout
from models.heads import box_from_reference
from models.ops.functions.level_shapes import level_tensors
from models.ops.modules import MSDeformAttn
from util.args import FlagError


@dataclass
class TransformerOutput:
    """Everything one transformer pass produces; B' = num_streams * B."""

    hs: Tensor  # (num_dec_layers, B', Q, C) decoder output of every layer
    init_reference: Tensor  # (B', Q, 2) points, or (B', Q, 4) boxes with two-stage
    inter_references: Tensor  # (num_dec_layers, B', Q, 2 or 4) reference after each layer
    enc_outputs_class: Tensor | None  # (B', S, num_classes), two-stage only
    enc_outputs_coord_unact: Tensor | None  # (B', S, 4) box logits, two-stage only
    memory: Tensor  # (B', S, C) encoder output
    spatial_shapes: Tensor  # (L, 2) int64 as (H, W)
    level_start_index: Tensor  # (L,) int64
    mask_flatten: Tensor  # (B', S) True on padding
    valid_ratios: Tensor  # (B', L, 2) as (w, h)
    num_streams: int = 1  # 2 once two-stream BatchFormerV2 training doubled the batch

    def as_tuple(self) -> tuple:
        return (
            self.hs,
            self.init_reference,
            self.inter_references,
            self.enc_outputs_class,
            self.enc_outputs_coord_unact,
        )


def _level_grids(
    spatial_shapes: list[tuple[int, int]], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel centres (S, 2) as (x + 0.5, y + 0.5), level sizes (S, 2) as (W, H), level index (S,)."""
    centres, sizes, levels = [], [], []
    for lvl, (h, w) in enumerate(spatial_shapes):
        ys = torch.arange(h, dtype=torch.float32, device=device) + 0.5
        xs = torch.arange(w, dtype=torch.float32, device=device) + 0.5
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        centres.append(grid.reshape(-1, 2))
        # w, not float(w): in export mode w is symbolic, and float() would freeze it to the traced size.
        size = torch.full((h * w, 2), w, dtype=torch.float32, device=device)
        size[:, 1].fill_(h)  # (W, H) filled in place: a copy from host memory would block the host
        sizes.append(size)
        levels.append(torch.full((h * w,), lvl, dtype=torch.long, device=device))
    return torch.cat(centres), torch.cat(sizes), torch.cat(levels)


def valid_sizes(masks: list[Tensor]) -> Tensor:
    """Unpadded width and height of every image on every level: (B, L, 2) as (w, h), float."""
    sizes = [torch.stack([(~m[:, 0, :]).sum(1), (~m[:, :, 0]).sum(1)], dim=-1) for m in masks]
    return torch.stack(sizes, dim=1).float()


class DeformableTransformerEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention (query = src + pos), then the FFN."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = _get_activation_fn(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """src, pos (B, S, C); reference_points (B, S, L, 2) -> (B, S, C)."""
        src2 = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))


class DeformableTransformerEncoder(nn.Module):
    """A stack of encoder layers, with BatchFormerV2 after the layers a ``BatchFormerPlan`` names.

    ``use_checkpoint`` (``--use_checkpoint``): each layer is recomputed in the backward pass (the plan
    says whether its BatchFormer steps are).
    """

    def __init__(self, encoder_layer: DeformableTransformerEncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = _get_clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.use_checkpoint = False

    @staticmethod
    def get_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
        """Pixel centres of every level, normalised by that level's unpadded size, then seen from
        every level: (B, S, L, 2) as (x, y). valid_ratios (B, L, 2) as (w, h)."""
        centres, sizes, levels = _level_grids(spatial_shapes, valid_ratios.device)
        ref = centres[None] / (valid_ratios[:, levels] * sizes[None])  # (B, S, 2)
        return ref[:, :, None] * valid_ratios[:, None]

    def forward(
        self,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        pos: Tensor,
        padding_mask: Tensor | None = None,
        batchformer: BatchFormerPlan | None = None,
        shapes: list[tuple[int, int]] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None, int]:
        """src, pos (B, S, C); padding_mask (B, S) -> (memory (B', S, C), valid_ratios (B', L, 2),
        padding_mask (B', S), num_streams); B' = num_streams * B, 2 once two-stream BatchFormerV2
        doubles the batch."""
        if shapes is None:
            shapes = [tuple(s) for s in spatial_shapes.tolist()]
        reference_points = self.get_reference_points(shapes, valid_ratios)
        output = src
        run = BatchFormerRun(batchformer, Layout.BATCH_FIRST, num_images=src.shape[0])
        for i, layer in enumerate(self.layers):
            output = maybe_checkpointed(
                self.use_checkpoint, layer, output, pos, reference_points, spatial_shapes, level_start_index,
                padding_mask,
            )
            output, doubled = run.after_layer(i, output)
            if doubled:  # the second stream sees the same images: duplicate their per-image inputs
                pos, reference_points, valid_ratios = (
                    torch.cat([t, t]) for t in (pos, reference_points, valid_ratios)
                )
                if padding_mask is not None:
                    padding_mask = torch.cat([padding_mask, padding_mask])
        return output, valid_ratios, padding_mask, run.num_streams


class DeformableTransformerDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention into the memory, FFN (post-norm)."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
    ) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = _get_activation_fn(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        src: Tensor,
        src_spatial_shapes: Tensor,
        level_start_index: Tensor,
        src_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """tgt, query_pos (B, Q, C); reference_points (B, Q, L, 2 or 4); src (B, S, C) -> (B, Q, C)."""
        q = k = tgt + query_pos
        tgt2 = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.cross_attn(
            tgt + query_pos, reference_points, src, src_spatial_shapes, level_start_index, src_padding_mask
        )
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))


class DeformableTransformerDecoder(nn.Module):
    """Decoder layers; with iterative refinement each layer's box head moves the reference boxes.

    ``bbox_embed`` / ``class_embed`` are the detector's heads, attached by ``DeformableDETR``
    (state-dict keys ``transformer.decoder.bbox_embed.*`` alias ``bbox_embed.*``); ``refine``
    tells whether the layers use ``bbox_embed`` to refine the references.
    """

    def __init__(
        self,
        decoder_layer: DeformableTransformerDecoderLayer,
        num_layers: int,
        return_intermediate: bool = False,
    ) -> None:
        super().__init__()
        self.layers = _get_clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.return_intermediate = return_intermediate
        self.use_checkpoint = False  # --use_checkpoint: each layer recomputed in the backward pass
        self.bbox_embed = None
        self.class_embed = None
        self.refine = False

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        src: Tensor,
        src_spatial_shapes: Tensor,
        src_level_start_index: Tensor,
        src_valid_ratios: Tensor,
        query_pos: Tensor | None = None,
        src_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """tgt (B, Q, C); reference_points (B, Q, 2) points or (B, Q, 4) boxes in [0, 1];
        src_valid_ratios (B, L, 2) -> (hs, references): (D, B, Q, C) and (D, B, Q, 2 or 4), or the
        last layer's alone without return_intermediate."""
        output = tgt
        intermediate, intermediate_reference_points = [], []
        ratios_2d = src_valid_ratios[:, None]  # (B, 1, L, 2)
        ratios_4d = None
        for lid, layer in enumerate(self.layers):
            # References are relative to the unpadded image; the attention samples the padded map.
            if reference_points.shape[-1] == 4:
                if ratios_4d is None:
                    ratios_4d = torch.cat([src_valid_ratios, src_valid_ratios], -1)[:, None]
                reference_points_input = reference_points[:, :, None] * ratios_4d
            else:
                reference_points_input = reference_points[:, :, None] * ratios_2d
            output = maybe_checkpointed(
                self.use_checkpoint,
                layer,
                output,
                query_pos,
                reference_points_input,
                src,
                src_spatial_shapes,
                src_level_start_index,
                src_padding_mask,
            )
            if self.refine:
                reference_points = box_from_reference(self.bbox_embed[lid](output), reference_points).detach()
            if self.return_intermediate:
                intermediate.append(output)
                intermediate_reference_points.append(reference_points)
        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(intermediate_reference_points)
        return output, reference_points


class DeformableTransformer(nn.Module):
    """Deformable DETR's transformer, with BatchFormerV2 inside the encoder when ``batchformer`` is given
    (a ``BatchFormerConfig``: one layer ``self.bf`` for every position, or one per position
    ``self.bf[str(i)]``, also registered as ``self.encoder.bf`` so that the published keys exist).
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        return_intermediate_dec: bool = False,
        num_feature_levels: int = 4,
        dec_n_points: int = 4,
        enc_n_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
        batchformer: BatchFormerConfig | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        self.num_feature_levels = num_feature_levels
        self.batchformer = batchformer  # None: no BatchFormerV2

        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if batchformer is not None:
            self.bf = batchformer.build(d_model)  # before the encoder, as the published keys are ordered
        encoder_layer = DeformableTransformerEncoderLayer(
            d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead, enc_n_points
        )
        self.encoder = DeformableTransformerEncoder(encoder_layer, num_encoder_layers)
        if batchformer is not None:
            batchformer.alias(self.encoder, self.bf)
        decoder_layer = DeformableTransformerDecoderLayer(
            d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead, dec_n_points
        )
        self.decoder = DeformableTransformerDecoder(
            decoder_layer, num_decoder_layers, return_intermediate_dec
        )
        self.encoder.use_checkpoint = self.decoder.use_checkpoint = use_checkpoint
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def batchformer_plan(self) -> BatchFormerPlan | None:
        """The BatchFormers this pass runs (``BatchFormerConfig.plan``), None when it skips them."""
        return None if self.batchformer is None else self.batchformer.plan(self.bf, self.training)

    def batchformer_spans_ranks(self) -> bool:
        """Whether this pass's BatchFormer attends across every rank's images: the images must then be
        padded alike on every rank (``models.batchformer.pad_to_common_size``)."""
        return self.batchformer is not None and self.batchformer.spans_ranks(self.training)

    def _initial_reference_points(self, query_pos: Tensor) -> Tensor:
        """sigmoid(reference_points(query_pos)) (B, Q, C) -> (B, Q, 2), in at least float32.

        Under float16 autocast the points would be float16, where 1 - x keeps two significant digits
        near the right/bottom edge: the gradient of inverse_sigmoid (1 / (x (1 - x))) downstream then
        overflows at GradScaler's scale for a point within ~0.3 % of the edge, and every step is
        skipped. bfloat16 would round such a point to 1. Outside autocast this is the plain layer.
        """
        dtype = torch.promote_types(query_pos.dtype, torch.float32)
        weight, bias = self.reference_points.weight, self.reference_points.bias
        with torch.autocast(query_pos.device.type, enabled=False):
            return F.linear(query_pos.to(dtype), weight.to(dtype), bias.to(dtype)).sigmoid()

    def get_proposal_pos_embed(self, proposals: Tensor) -> Tensor:
        """Sine embedding of box logits (B, Q, 4) -> (B, Q, 2C): d_model / 2 features per coordinate."""
        num_pos_feats = self.d_model // 2
        temperature = 10000
        scale = 2 * math.pi
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
        proposals = proposals.sigmoid() * scale
        pos = proposals[:, :, :, None] / dim_t  # (B, Q, 4, F)
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)

    def gen_encoder_output_proposals(
        self,
        memory: Tensor,
        memory_padding_mask: Tensor,
        spatial_shapes: list[tuple[int, int]] | Tensor,
        sizes: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One proposal per position: centre of its pixel over the unpadded size, side 0.05 * 2**level.

        memory (B, S, C); memory_padding_mask (B, S); sizes (B, L, 2) the unpadded (w, h) of each
        level (derived from the mask when None) -> (enc_output_norm(enc_output(memory)) with
        padded/invalid positions zeroed, proposal box logits (B, S, 4), +inf where padded/invalid).
        """
        if isinstance(spatial_shapes, Tensor):
            spatial_shapes = [tuple(s) for s in spatial_shapes.tolist()]
        if sizes is None:
            masks, start = [], 0
            for h, w in spatial_shapes:
                masks.append(memory_padding_mask[:, start : start + h * w].view(-1, h, w))
                start += h * w
            sizes = valid_sizes(masks)
        centres, _, levels = _level_grids(spatial_shapes, memory.device)
        xy = centres[None] / sizes[:, levels]  # (B, S, 2)
        wh = (0.05 * 2.0 ** levels.float())[None, :, None].expand_as(xy)
        output_proposals = torch.cat([xy, wh], -1)  # (B, S, 4)
        valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
        output_proposals = torch.log(output_proposals / (1 - output_proposals))
        invalid = memory_padding_mask[..., None] | ~valid
        output_proposals = output_proposals.masked_fill(invalid, float("inf"))
        output_memory = memory.masked_fill(invalid, 0.0)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        return output_memory, output_proposals

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        query_embed: Tensor | None = None,
    ) -> tuple:
        """The public 5-tuple; see ``forward_features``."""
        return self.forward_features(srcs, masks, pos_embeds, query_embed).as_tuple()

    def forward_features(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        query_embed: Tensor | None = None,
    ) -> TransformerOutput:
        """srcs, pos_embeds: per level (B, C, H_l, W_l); masks: per level (B, H_l, W_l), True on
        padding; query_embed (Q, 2C) as (query_pos, tgt), None with two-stage."""
        if not self.two_stage and query_embed is None:
            raise ValueError("DeformableTransformer: query_embed is required without two-stage")
        if len(srcs) != self.num_feature_levels:
            raise ValueError(
                f"DeformableTransformer: expected {self.num_feature_levels} feature levels, got {len(srcs)}"
            )
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)  # (B, S, C)
        mask_flatten = torch.cat([m.flatten(1) for m in masks], 1)  # (B, S)
        lvl_pos_embed_flatten = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl] for lvl, p in enumerate(pos_embeds)], 1
        )
        # From the host-side ints, so the attention never reads the shapes back from the GPU.
        spatial_shapes, level_start_index = level_tensors(shapes, src_flatten.device)
        sizes = valid_sizes(masks)  # (B, L, 2)
        valid_ratios = sizes / spatial_shapes.flip(-1).float()  # (B, L, 2) as (w, h)

        memory, valid_ratios, mask_flatten, num_streams = self.encoder(
            src_flatten,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            lvl_pos_embed_flatten,
            mask_flatten,
            batchformer=self.batchformer_plan(),
            shapes=shapes,
        )
        bs, _, c = memory.shape
        if num_streams > 1:
            sizes = sizes.repeat(num_streams, 1, 1)

        enc_outputs_class = enc_outputs_coord_unact = None
        if self.two_stage:
            output_memory, output_proposals = self.gen_encoder_output_proposals(
                memory, mask_flatten, shapes, sizes
            )
            head = self.decoder.num_layers
            enc_outputs_class = self.decoder.class_embed[head](output_memory)
            enc_outputs_coord_unact = self.decoder.bbox_embed[head](output_memory) + output_proposals
            topk = self.two_stage_num_proposals
            if topk > output_memory.shape[1]:
                raise FlagError(
                    f"--num_queries ({topk}) exceeds the {output_memory.shape[1]} encoder positions of this "
                    "batch, among which two-stage picks its queries: lower --num_queries or use larger images"
                )
            topk_proposals = torch.topk(enc_outputs_class[..., 0], topk, dim=1)[1]  # (B', Q)
            topk_coords_unact = torch.gather(
                enc_outputs_coord_unact, 1, topk_proposals[..., None].expand(-1, -1, 4)
            ).detach()
            reference_points = topk_coords_unact.sigmoid()
            pos_trans_out = self.pos_trans_norm(
                self.pos_trans(self.get_proposal_pos_embed(topk_coords_unact))
            )
            query_pos, tgt = torch.split(pos_trans_out, c, dim=2)
        else:
            query_pos, tgt = torch.split(query_embed, c, dim=1)
            query_pos = query_pos[None].expand(bs, -1, -1)
            tgt = tgt[None].expand(bs, -1, -1)
            reference_points = self._initial_reference_points(query_pos)
        init_reference = reference_points

        hs, inter_references = self.decoder(
            tgt,
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            query_pos,
            mask_flatten,
        )
        return TransformerOutput(
            hs,
            init_reference,
            inter_references,
            enc_outputs_class,
            enc_outputs_coord_unact,
            memory,
            spatial_shapes,
            level_start_index,
            mask_flatten,
            valid_ratios,
            num_streams,
        )


def _get_clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


def _get_activation_fn(activation: str):
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    if activation == "glu":
        return F.glu
    raise ValueError(f"activation must be relu, gelu or glu, got {activation!r}")


def build_deformable_transformer(args, batchformer: BatchFormerConfig | None = None) -> DeformableTransformer:
    """The transformer of ``args``, with the BatchFormerV2 ``batchformer`` resolved from them."""
    return DeformableTransformer(
        d_model=args.hidden_dim,
        nhead=args.nheads,
        num_encoder_layers=args.enc_layers,
        num_decoder_layers=args.dec_layers,
        dim_feedforward=args.dim_feedforward,
        dropout=args.dropout,
        activation="relu",
        return_intermediate_dec=True,
        num_feature_levels=args.num_feature_levels,
        dec_n_points=args.dec_n_points,
        enc_n_points=args.enc_n_points,
        two_stage=args.two_stage,
        two_stage_num_proposals=args.num_queries,
        batchformer=batchformer,
        use_checkpoint=bool(args.use_checkpoint),
    )
