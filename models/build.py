"""Assembling a detector from the flags: ``build(args, metadata)``.

Everything the model needs to know about the data comes in ``metadata`` (``util.metadata``), every
setting from ``args`` (complete: the parser holds the defaults). Building loads no weights and reads no
file; the ImageNet weights of the backbone are loaded by the caller
(``models.backbone.load_pretrained_backbone``), checkpoints by ``util.checkpoint``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from torch import nn

from models.backbone import build_backbone
from models.batchformer import BatchFormerConfig, resolve_insert_indices
from models.classification import SigmoidFocal
from models.criterion import SetCriterion
from models.deformable_detr import DeformableDETR
from models.deformable_transformer import build_deformable_transformer
from models.matcher import build_matcher
from models.postprocess import PostProcess
from models.segmentation import DeformableDETRsegm, PostProcessPanoptic, PostProcessSegm
from util.metadata import DatasetMetadata


@dataclass
class BuiltDetector:
    """What ``build`` returns. ``batchformer``: the BatchFormerV2 resolved from the flags (its sorted
    ``positions``: ``--bf 1`` without ``--insert_idx`` resolves to (0,)), None without one."""

    model: nn.Module
    criterion: SetCriterion
    postprocessors: dict[str, nn.Module]
    batchformer: BatchFormerConfig | None


def build(args: argparse.Namespace, metadata: DatasetMetadata) -> BuiltDetector:
    """The detector of ``args`` (``util.args.get_args_parser``) for a data set described by ``metadata``,
    with random weights; ``args`` is not modified."""
    bf_indices = resolve_insert_indices(args.bf, args.insert_idx, args.enc_layers, args.share_bf,
                                        args.bt_num_layers)
    batchformer = BatchFormerConfig(
        tuple(bf_indices), two_stream=args.bf == 1, share=bool(args.share_bf), num_layers=args.bt_num_layers,
        eval_bf=bool(args.eval_bf), scope=args.bf_scope, use_checkpoint=bool(args.use_checkpoint),
    ) if bf_indices else None
    if args.hidden_dim % 32 != 0:
        raise ValueError(
            f"--hidden_dim must be a multiple of 32 (the projections use GroupNorm(32)), "
            f"got {args.hidden_dim}"
        )
    if args.frozen_weights is not None and not args.masks:
        raise ValueError("--frozen_weights trains only the mask head: it needs --masks")
    classification = SigmoidFocal.from_args(args)
    model: nn.Module = DeformableDETR(
        build_backbone(args),
        build_deformable_transformer(args, batchformer),
        num_classes=metadata.num_classes,
        num_queries=args.num_queries,
        num_feature_levels=args.num_feature_levels,
        aux_loss=args.aux_loss,
        with_box_refine=args.with_box_refine,
        two_stage=args.two_stage,
    )
    postprocessors: dict[str, nn.Module] = {"bbox": PostProcess(classification=classification)}
    if args.masks:
        model = DeformableDETRsegm(model, freeze_detr=args.frozen_weights is not None)
        postprocessors["segm"] = PostProcessSegm(classification=classification)
        if metadata.is_thing_map is not None:
            postprocessors["panoptic"] = PostProcessPanoptic(dict(metadata.is_thing_map),
                                                             threshold=args.panoptic_threshold,
                                                             classification=classification)
    criterion = SetCriterion(metadata.num_classes, build_matcher(args, classification), _weight_dict(args),
                             _losses(args), classification=classification)
    return BuiltDetector(model, criterion, postprocessors, batchformer)


def _weight_dict(args: argparse.Namespace) -> dict[str, float]:
    """Loss weights: the main terms, then a copy per auxiliary decoder layer (``_i``) and for the
    two-stage encoder proposals (``_enc``)."""
    weight_dict = {
        "loss_ce": args.cls_loss_coef,
        "loss_bbox": args.bbox_loss_coef,
        "loss_giou": args.giou_loss_coef,
    }
    if args.masks:
        weight_dict["loss_mask"] = args.mask_loss_coef
        weight_dict["loss_dice"] = args.dice_loss_coef
    if args.aux_loss:
        aux_weight_dict = {}
        for i in range(args.dec_layers - 1):
            aux_weight_dict.update({f"{k}_{i}": v for k, v in weight_dict.items()})
        aux_weight_dict.update({f"{k}_enc": v for k, v in weight_dict.items()})
        weight_dict.update(aux_weight_dict)
    return weight_dict


def _losses(args: argparse.Namespace) -> list[str]:
    return ["labels", "boxes", "cardinality"] + (["masks"] if args.masks else [])
