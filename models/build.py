"""Assembling a detector from the flags: ``build(args, metadata)``.

The detector is ``--meta_arch``'s (``models/detectors.py``): its module builds the model, its
classification kind is shared by the criterion, the matcher and the post-processors built here. Everything
the model needs to know about the data comes in ``metadata`` (``util.metadata``), every setting from
``args`` (complete: ``util.args.with_defaults``). Building loads no weights and reads no file; the ImageNet
weights of the backbone are loaded by the caller (``models.backbone.load_pretrained_backbone``),
checkpoints by ``util.checkpoint``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from torch import nn

from models.batchformer import BatchFormerConfig
from models.criterion import SetCriterion
from models.detectors import architecture_problem, batchformer_of, detector
from models.matcher import build_matcher
from models.postprocess import PostProcess
from models.segmentation import DETRsegm, PostProcessPanoptic, PostProcessSegm
from util.args import flag_defaults
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
    problem = architecture_problem(args, flag_defaults(args.meta_arch))
    if problem:
        raise ValueError(problem)
    batchformer, notice = batchformer_of(args)
    if notice:
        print(notice)
    entry = detector(args.meta_arch)
    classification = entry.classification.from_args(args)
    module = entry.load(args.meta_arch)
    model: nn.Module = module.build(args, num_classes=metadata.num_classes, classification=classification,
                                    batchformer=batchformer)
    postprocessors: dict[str, nn.Module] = {"bbox": PostProcess(classification=classification)}
    if args.masks:
        if not hasattr(module, "build_mask_head"):
            raise ValueError(f"--masks: --meta_arch {args.meta_arch} has no mask head")
        model = DETRsegm(model, *module.build_mask_head(model), freeze_detr=args.frozen_weights is not None)
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
