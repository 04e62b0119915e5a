"""The detectors ``--meta_arch`` selects: one entry each in ``DETECTORS``, the one list of their names.

An entry says how to build the detector (its module), which classification it uses
(``models.classification``), the flags whose defaults differ for it (those of its public repository;
``util.args`` applies them under any flag typed on the command line), the flags it refuses, what each
``--bf`` value means for it, and the state-dict keys that identify its published checkpoints (a
checkpoint that records no ``--meta_arch`` is recognised from them).

A detector's module provides

    build(args, *, num_classes, classification, batchformer) -> nn.Module

with ``args`` complete (``util.args.with_defaults``), ``classification`` the entry's kind built from the
flags (the class head has ``classification.num_logits(num_classes)`` outputs and starts as
``classification.init_head`` says) and ``batchformer`` the resolved ``BatchFormerConfig`` or None (the
transformer registers ``batchformer.build(d_model)`` as ``bf`` and runs a ``BatchFormerRun`` in its
encoder). The model's ``forward(samples)`` takes a NestedTensor or a list of (3, H, W) images and returns
``pred_logits`` (B', Q, K), ``pred_boxes`` (B', Q, 4) normalised cxcywh, ``aux_outputs`` (with
--aux_loss) and ``num_streams`` (B' = num_streams * B, docs/design/two_streams.md). For ``--masks`` the
module also provides

    build_mask_head(model) -> (MHAttentionMap, mask head)

and the model ``forward_with_state(samples) -> (outputs, state)`` and ``mask_features(state) ->
MaskFeatures`` (``models/segmentation.py`` wraps them). ``models/build.py`` assembles the rest: the
criterion, the matcher and the post-processors, from the entry's classification.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType

from models.backbone_catalog import backbone_problem
from models.batchformer import BatchFormerConfig, BatchFormerMode, resolve_batchformer
from models.classification import Classification, SigmoidFocal, SoftmaxCrossEntropy

_NOT_BUILT = ("--meta_arch {name}: the detector is registered (its flags, defaults and checkpoints are "
              "recognised) but its model is not part of this version yet")


@dataclass(frozen=True)
class Detector:
    """One ``--meta_arch``. ``module``: where ``build`` is (None: registered, not built in this version);
    ``signature``: state-dict keys only this detector's models hold (matched with any prefix, such as the
    mask wrapper's ``detr.``); ``defaults``: flag -> default where it differs from the parser's (Deformable
    DETR's); ``refuses``: flag -> why it does not apply (refused when it differs from its default);
    ``check``: the detector's own rules on the flags (a one-line problem, or None)."""

    description: str
    module: str | None
    classification: type[Classification]
    bf_modes: Mapping[int, BatchFormerMode]
    signature: tuple[str, ...]
    defaults: Mapping[str, object] = field(default_factory=dict)
    refuses: Mapping[str, str] = field(default_factory=dict)
    ignores: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[argparse.Namespace], str | None] | None = None

    def load(self, name: str) -> ModuleType:
        """The module holding ``build`` (and ``build_mask_head``)."""
        if self.module is None:
            raise ValueError(_NOT_BUILT.format(name=name))
        return importlib.import_module(self.module)


def _deformable_problem(args: argparse.Namespace) -> str | None:
    if args.hidden_dim % 32:
        return (f"--hidden_dim must be a multiple of 32 (the input projections use GroupNorm(32)), "
                f"got {args.hidden_dim}")
    # Multi-scale takes three backbone levels (strides 8, 16, 32) and adds extra ones on top.
    if args.num_feature_levels == 2 or (args.masks and args.num_feature_levels < 3):
        needs = "with --masks" if args.masks else "multi-scale"
        return (f"--num_feature_levels must be 1 (single scale) or >= 3 ({needs}, the backbone gives "
                f"three levels), got {args.num_feature_levels}")
    return None


def _detr_problem(args: argparse.Namespace) -> str | None:
    if args.masks:
        from models.detr_mask_head import channel_problem

        return channel_problem(args.hidden_dim, args.nheads)
    return None


_DEFORMABLE_ONLY = {
    "two_stage": "two-stage proposals are Deformable DETR's (--meta_arch deformable_detr)",
    "with_box_refine": "iterative box refinement is Deformable DETR's (--meta_arch deformable_detr)",
    "num_feature_levels": "it reads one feature level (the backbone's last)",
}
_DEFORMABLE_ATTENTION = {
    "enc_n_points": "its encoder has no deformable attention",
    "dec_n_points": "its decoder has no deformable attention",
    "lr_linear_proj_mult": "it has no sampling-offset or reference-point projections",
}
# DETR's public recipe (docs/design/detectors.md); Conditional DETR's starts from it.
_DETR_DEFAULTS = {
    "lr": 1e-4, "lr_backbone": 1e-5, "dim_feedforward": 2048, "num_feature_levels": 1,
    # Two parameter groups: everything named "backbone" at --lr_backbone, the rest at --lr.
    "lr_backbone_names": ["backbone"], "lr_linear_proj_names": [],
    "panoptic_threshold": 0.85,
}
# BatchFormerV2 on DETR as the public BatchFormer DETR code runs it; Conditional DETR's is defined alike.
_DETR_BF_MODES = {
    3: BatchFormerMode("two streams after each --insert_idx encoder layer (default: every layer from "
                       "--start_idx; the paper's setting is --insert_idx 0)",
                       two_stream=True, from_start_idx=True),
    1: BatchFormerMode("two streams after the whole encoder", two_stream=True, at=-1),
    2: BatchFormerMode("two streams after encoder layer 4", two_stream=True, at=4),
}

DETECTORS: dict[str, Detector] = {
    "deformable_detr": Detector(
        "Deformable DETR (multi-scale deformable attention; +refine, ++two-stage)",
        module="models.deformable_detr",
        classification=SigmoidFocal,
        bf_modes={
            1: BatchFormerMode("two streams after each --insert_idx encoder layer (published)",
                               two_stream=True),
            7: BatchFormerMode("single stream: its output replaces the batch in training",
                               two_stream=False),
        },
        signature=("transformer.level_embed",),
        refuses={
            "pre_norm": "its layers are post-norm",
            "eos_coef": "its sigmoid focal loss has no no-object class",
            "start_idx": "its --bf modes read --insert_idx alone",
        },
        check=_deformable_problem,
    ),
    "detr": Detector(
        "DETR (single-scale encoder-decoder, softmax classes with a no-object class)",
        module="models.detr",
        classification=SoftmaxCrossEntropy,
        bf_modes=_DETR_BF_MODES,
        signature=("transformer.decoder.layers.0.multihead_attn.in_proj_weight",),
        defaults={**_DETR_DEFAULTS, "epochs": 300, "lr_drop": 200, "num_queries": 100, "set_cost_class": 1,
                  "cls_loss_coef": 1},
        refuses={**_DEFORMABLE_ONLY, "focal_alpha": "it classifies with a softmax (see --eos_coef)"},
        ignores=_DEFORMABLE_ATTENTION,
        check=_detr_problem,
    ),
    "conditional_detr": Detector(
        "Conditional DETR (conditional spatial queries, sigmoid focal classes)",
        module=None,
        classification=SigmoidFocal,
        bf_modes=_DETR_BF_MODES,
        signature=("transformer.decoder.ref_point_head.layers.0.weight",),
        defaults=_DETR_DEFAULTS,
        refuses={**_DEFORMABLE_ONLY, "eos_coef": "its sigmoid focal loss has no no-object class"},
        ignores=_DEFORMABLE_ATTENTION,
    ),
}


def detector(name: str) -> Detector:
    """The entry of ``--meta_arch name``; a ValueError lists the names."""
    if name not in DETECTORS:
        raise ValueError(f"--meta_arch must be one of {', '.join(DETECTORS)}, got {name!r}")
    return DETECTORS[name]


def architecture_problem(args: argparse.Namespace, defaults: Mapping[str, object]) -> str | None:
    """The first reason the model flags of ``args`` cannot build their detector, as one line naming the
    flag, or None; ``defaults``: the flags' defaults for this detector (``util.args.flag_defaults``)."""
    if args.meta_arch not in DETECTORS:
        return f"--meta_arch must be one of {', '.join(DETECTORS)}, got {args.meta_arch!r}"
    entry = DETECTORS[args.meta_arch]
    for flag, why in entry.refuses.items():
        value = getattr(args, flag, defaults.get(flag))
        if value != defaults.get(flag):
            return f"--{flag} does not apply to --meta_arch {args.meta_arch}: {why}"
    problem = backbone_problem(args.backbone, args.dilation)
    if problem:
        return problem
    if args.hidden_dim % args.nheads:
        return f"--hidden_dim ({args.hidden_dim}) must be divisible by --nheads ({args.nheads})"
    if args.frozen_weights is not None and not args.masks:
        return "--frozen_weights trains only the mask head on a frozen detector: it needs --masks"
    problem = entry.check(args) if entry.check is not None else None
    if problem is None and entry.module is None:
        problem = _NOT_BUILT.format(name=args.meta_arch)
    return problem


def ignored_flags(args: argparse.Namespace, defaults: Mapping[str, object]) -> list[str]:
    """Notices on the flags set away from their defaults that do nothing for this detector."""
    entry = detector(args.meta_arch)
    return [f"--{flag} {getattr(args, flag)} has no effect with --meta_arch {args.meta_arch}: {why}"
            for flag, why in entry.ignores.items()
            if getattr(args, flag, defaults.get(flag)) != defaults.get(flag)]


def batchformer_of(args: argparse.Namespace) -> tuple[BatchFormerConfig | None, str | None]:
    """The BatchFormerV2 the flags ask of their detector, and a notice to print (or None)."""
    return resolve_batchformer(args, detector(args.meta_arch).bf_modes, args.meta_arch)


def recognise(keys: Iterable[str]) -> str | None:
    """The detector whose published state dict has these keys, or None when none or several match."""
    keys = list(keys)

    def has(signature_key: str) -> bool:
        return any(k == signature_key or k.endswith("." + signature_key) for k in keys)

    found = [name for name, entry in DETECTORS.items() if all(has(k) for k in entry.signature)]
    return found[0] if len(found) == 1 else None
