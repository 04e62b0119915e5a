"""Deformable DETR: backbone, input projections, deformable transformer and prediction heads.

``models.build.build(args, metadata)`` assembles it with its criterion and post-processors.

For a mask head: ``DeformableDETR.forward_with_state(samples)`` returns the output dict and a
``DetectorState`` holding the backbone features (list of B-image NestedTensors, strides 8/16/32),
the backbone's other maps by name (the stride-4 one with --masks), the projected per-level sources
and masks, and the ``TransformerOutput`` (encoder memory (B', S, C), spatial shapes, level start
index, padding mask (B', S), valid ratios, decoder states hs (D, B', Q, C), num_streams).
B' = num_streams * B: 2 in two-stream BatchFormerV2 training, where stream 1 is images 0..B-1 again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbone import STRIDE4, build_backbone
from models.batchformer import BatchFormerConfig, detector_input
from models.classification import Classification, SigmoidFocal
from models.criterion import SetCriterion
from models.deformable_transformer import TransformerOutput, build_deformable_transformer
from models.heads import MLP, aux_outputs, box_from_reference
from models.postprocess import PostProcess
from models.segmentation import MaskFeatures, MaskHeadFPN, MHAttentionMap
from util.misc import NestedTensor

__all__ = [
    "DeformableDETR",
    "DetectorState",
    "MLP",
    "PostProcess",
    "SetCriterion",
    "num_classes_for",
]


@dataclass
class DetectorState:
    """Intermediate results of one forward pass, for heads built on top of the detector."""

    features: list[NestedTensor]  # backbone outputs, B images each
    extra_features: dict[str, NestedTensor]  # the backbone's other maps by name (models.backbone.STRIDE4)
    srcs: list[Tensor]  # projected levels (B, C, H_l, W_l), extra levels included
    masks: list[Tensor]  # (B, H_l, W_l), True on padding
    transformer: TransformerOutput


class DeformableDETR(nn.Module):
    """The detector: ``num_queries`` object queries decoded into class logits and boxes."""

    def __init__(
        self,
        backbone: nn.Module,
        transformer: nn.Module,
        num_classes: int,
        num_queries: int,
        num_feature_levels: int,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        two_stage: bool = False,
        classification: Classification | None = None,
    ) -> None:
        """``classification``: the class head's kind (``models.classification``), sigmoid focal by default."""
        super().__init__()
        if classification is None:
            classification = SigmoidFocal()
        self.num_queries = num_queries
        self.transformer = transformer
        hidden_dim = transformer.d_model
        class_embed = nn.Linear(hidden_dim, classification.num_logits(num_classes))
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.class_embed = class_embed
        self.bbox_embed = bbox_embed
        self.num_feature_levels = num_feature_levels
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)
        num_backbone_outs = len(backbone.strides)
        if num_feature_levels < num_backbone_outs:
            raise ValueError(
                f"--num_feature_levels ({num_feature_levels}) must be at least {num_backbone_outs}, the "
                "number of backbone levels (layer2-4 when multi-scale or with --masks)"
            )
        if num_feature_levels > 1:
            projs = [
                nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1), nn.GroupNorm(32, hidden_dim))
                for c in backbone.num_channels
            ]
            in_channels = backbone.num_channels[-1]
            for _ in range(num_feature_levels - num_backbone_outs):
                projs.append(
                    nn.Sequential(
                        nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1),
                        nn.GroupNorm(32, hidden_dim),
                    )
                )
                in_channels = hidden_dim
            self.input_proj = nn.ModuleList(projs)
        else:
            self.input_proj = nn.ModuleList(
                [
                    nn.Sequential(
                        nn.Conv2d(backbone.num_channels[0], hidden_dim, kernel_size=1),
                        nn.GroupNorm(32, hidden_dim),
                    )
                ]
            )
        self.backbone = backbone
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage

        classification.init_head(class_embed)
        nn.init.constant_(bbox_embed.layers[-1].weight, 0.0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0.0)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        # Two-stage adds a head for the encoder proposals after the decoder's.
        num_pred = transformer.decoder.num_layers + (1 if two_stage else 0)
        if with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
        transformer.decoder.refine = with_box_refine
        if with_box_refine or two_stage:
            transformer.decoder.bbox_embed = self.bbox_embed
        if two_stage:
            transformer.decoder.class_embed = self.class_embed
            for box_embed in self.bbox_embed:
                nn.init.constant_(box_embed.layers[-1].bias[2:], 0.0)

    def forward(self, samples: NestedTensor | list[Tensor]) -> dict:
        """samples: a NestedTensor (B, 3, H, W) with its mask, or a list of (3, H, W) images.

        Returns ``pred_logits`` (B', Q, num_classes), ``pred_boxes`` (B', Q, 4) normalised cxcywh,
        ``aux_outputs`` (decoder layers 0..D-2, same keys) with aux_loss, ``enc_outputs`` with
        two-stage, and ``num_streams`` (int): B' = num_streams * B. It is 2 in two-stream BatchFormerV2
        training, where rows B..2B-1 predict images 0..B-1 again through the BatchFormer (the
        criterion scores them against the same targets), else 1. Read it; never infer it from B'.
        """
        return self.forward_with_state(samples)[0]

    def forward_with_state(self, samples: NestedTensor | list[Tensor]) -> tuple[dict, DetectorState]:
        samples = detector_input(samples, self.transformer.batchformer_spans_ranks())
        features, pos, extra_features = self.backbone.forward_levels(samples)
        pos = list(pos)
        srcs, masks = [], []
        for lvl, feat in enumerate(features):
            src, mask = feat.decompose()
            srcs.append(self.input_proj[lvl](src))
            masks.append(mask)
        for lvl in range(len(features), self.num_feature_levels):
            # Extra levels: stride-2 convs on the last backbone map, then on the previous extra level.
            src = self.input_proj[lvl](features[-1].tensors if lvl == len(features) else srcs[-1])
            mask = F.interpolate(samples.mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            srcs.append(src)
            masks.append(mask)
            pos.append(self.backbone[1](NestedTensor(src, mask)).to(src.dtype))

        query_embeds = None if self.two_stage else self.query_embed.weight
        t_out = self.transformer.forward_features(srcs, masks, pos, query_embeds)
        out = self._predict(t_out)
        return out, DetectorState(features, extra_features, srcs, masks, t_out)

    def mask_features(self, state: DetectorState) -> MaskFeatures:
        """What the mask head reads (``models.segmentation``): the queries over the stride-8 level of the
        memory, the backbone's stride-8 and stride-4 maps."""
        t = state.transformer
        h8, w8 = state.srcs[0].shape[-2:]  # level 0's size, read from its shape: no device read
        # (B', S, C) -> level 0 as a map (B', C, H8, W8)
        memory8 = t.memory[:, : h8 * w8].transpose(1, 2).reshape(t.memory.shape[0], -1, h8, w8)
        fpn = {8: state.features[0].tensors, 4: state.extra_features[STRIDE4].tensors}
        return MaskFeatures(t.hs[-1], memory8, state.masks[0], fpn, t.num_streams)

    def _predict(self, t: TransformerOutput) -> dict:
        hs = t.hs  # (D, B', Q, C)
        if self.with_box_refine:
            logits = torch.stack([self.class_embed[lvl](hs[lvl]) for lvl in range(hs.shape[0])])
            deltas = torch.stack([self.bbox_embed[lvl](hs[lvl]) for lvl in range(hs.shape[0])])
        else:  # one shared head: a single call over every layer
            logits = self.class_embed[0](hs)
            deltas = self.bbox_embed[0](hs)
        # Layer l predicts a correction to the reference it started from (the initial one for l = 0).
        # One-stage refinement turns the 2-d initial points into boxes after layer 0.
        if t.init_reference.shape[-1] == t.inter_references.shape[-1]:
            coords = box_from_reference(deltas, torch.cat([t.init_reference[None], t.inter_references[:-1]]))
        else:
            coords = torch.cat(
                [
                    box_from_reference(deltas[:1], t.init_reference[None]),
                    box_from_reference(deltas[1:], t.inter_references[:-1]),
                ]
            )
        out = {"pred_logits": logits[-1], "pred_boxes": coords[-1], "num_streams": t.num_streams}
        if self.aux_loss:
            out["aux_outputs"] = aux_outputs(logits, coords)
        if self.two_stage:
            out["enc_outputs"] = {
                "pred_logits": t.enc_outputs_class,
                "pred_boxes": t.enc_outputs_coord_unact.sigmoid(),
            }
        return out

def build(args, *, num_classes: int, classification: Classification,
          batchformer: BatchFormerConfig | None) -> DeformableDETR:
    """``--meta_arch deformable_detr`` (``models/detectors.py``): the detector of ``args``."""
    return DeformableDETR(
        build_backbone(args),
        build_deformable_transformer(args, batchformer),
        num_classes=num_classes,
        num_queries=args.num_queries,
        num_feature_levels=args.num_feature_levels,
        aux_loss=args.aux_loss,
        with_box_refine=args.with_box_refine,
        two_stage=args.two_stage,
        classification=classification,
    )


def build_mask_head(model: DeformableDETR) -> tuple[MHAttentionMap, MaskHeadFPN]:
    """``--masks``: the attention of the queries over the stride-8 memory and ``MaskHeadFPN``."""
    shapes = model.backbone.output_shape()
    if shapes["0"].stride != 8:
        raise ValueError("the mask head needs the multi-scale backbone (strides 8/16/32): "
                         "--masks requires --num_feature_levels >= 3")
    if STRIDE4 not in shapes or shapes[STRIDE4].stride != 4:
        raise ValueError(f"the mask head needs the backbone's stride-4 map ({STRIDE4!r} in its "
                         "output_shape()): build the backbone for --masks")
    hidden_dim, nheads = model.transformer.d_model, model.transformer.nhead
    return (MHAttentionMap(hidden_dim, hidden_dim, nheads, dropout=0.0),
            MaskHeadFPN(hidden_dim, nheads, shapes["0"].channels, shapes[STRIDE4].channels))


# Kept for util/hf_checkpoint.py, which imports it: the data set's classifier width.
def num_classes_for(args) -> int:
    """``--dataset_file``'s num_classes (``datasets.dataset_metadata``), for callers that hold only flags."""
    from util.args import dataset_metadata

    return dataset_metadata(args).num_classes
