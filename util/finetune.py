"""``main.py --finetune CKPT``: a new training run that starts from a trained detector on a data set of its
own classes.

    python main.py --finetune r50_deformable_detr.pth --train_json ... --val_json ... --output_dir exps/ft

Everything of the checkpoint that fits this run's model loads (a published ``.pth``, one of ours, or a
Hugging Face folder). The classification heads (every ``class_embed``: one per decoder layer, the
two-stage encoder's, their aliases) start as a freshly built model of this kind starts them (for the
focal-loss detectors, the prior-probability bias), unless the checkpoint was trained on these very classes
(same width, same names). Nothing else may differ: another architecture (the flags, compared as
``--resume`` compares them: the architecture comes from the command line) or tensors of other shapes or
names stop with one line naming them, unless ``--allow_partial_load``. A BatchFormer on one side only is
no mismatch: the BatchFormer is a training-time module (skipped at inference), so one added by ``--bf``
starts at its initial values and a checkpoint's is left out, each said in a notice. The run starts at
epoch 0 with a fresh optimizer and schedule; a stopped fine-tuning run continues with a plain
``--resume OUTPUT_DIR/checkpoint.pth``.
"""
from __future__ import annotations

import argparse

from torch import nn

from util.checkpoint import CheckpointError, LoadReport, load_weights, recorded_value

# The classification head's name in every detector's published layout: Deformable DETR's class_embed.N
# (decoder layers, then the two-stage encoder head; transformer.decoder.class_embed.N are the same
# tensors), DETR's and Conditional DETR's class_embed, the segmentation models' detr.class_embed.
CLASSIFICATION_HEAD = "class_embed"


def is_classification_key(key: str) -> bool:
    """Whether a state-dict key belongs to a classification head (its width is the class count)."""
    return CLASSIFICATION_HEAD in key.split(".")


def heads_pattern(keys: list[str]) -> str:
    """``class_embed.*``-style patterns of ``keys``, one per distinct head path: what a line can name."""
    patterns = set()
    for key in keys:
        parts = key.split(".")
        patterns.add(".".join(parts[: parts.index(CLASSIFICATION_HEAD) + 1]) + ".*")
    return ", ".join(sorted(patterns, key=lambda p: (len(p), p)))


def _same_classes(saved_args, args: argparse.Namespace, state: dict, own: dict, heads: list[str]) -> bool:
    """Whether the checkpoint's classifier is this run's: its head tensors have this model's shapes and
    the names it records, if any, are this run's."""
    if any(k not in state or tuple(state[k].shape) != tuple(own[k].shape) for k in heads):
        return False
    saved = recorded_value(saved_args, "class_names")
    ours = getattr(args, "class_names", None)
    if saved is None or ours is None:
        return True
    return {int(k): str(v) for k, v in saved.items()} == {int(k): str(v) for k, v in ours.items()}


def finetune_from(model: nn.Module, args: argparse.Namespace) -> list[str]:
    """Load ``args.finetune`` into ``model`` (freshly built from ``args``, on the CPU or its device) as the
    module docstring says; returns the lines to print. Raises CheckpointError (one line) where the
    checkpoint does not fit."""
    from models.param_groups import is_batchformer_parameter
    from util.hf.convert import load_checkpoint_or_folder

    name = f"--finetune {args.finetune}"
    checkpoint = load_checkpoint_or_folder(args.finetune)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{name}: expected a checkpoint (a dict with 'model', or a state dict), got "
                              f"{type(checkpoint).__name__}")
    if "model" not in checkpoint:
        checkpoint = {"model": checkpoint}
    state, own = checkpoint["model"], model.state_dict()
    heads = [k for k in own if is_classification_key(k)]
    kept = _same_classes(checkpoint.get("args"), args, state, own, heads)
    if not kept:  # the checkpoint's heads give way to this model's own, freshly initialised ones
        others = {k: v for k, v in state.items() if not is_classification_key(k)}
        checkpoint = {**checkpoint, "model": {**others, **{k: own[k] for k in heads}}}
    report = load_weights(model, checkpoint, args, name=name, complete=False, batchformer_optional=True)
    fresh_bf = [k for k in report.missing if is_batchformer_parameter(k)]
    dropped_bf = [k for k in report.unexpected if is_batchformer_parameter(k)]
    misfit = LoadReport(missing=[k for k in report.missing if k not in fresh_bf],
                        unexpected=[k for k in report.unexpected if k not in dropped_bf])
    if not misfit.clean and not getattr(args, "allow_partial_load", False):
        raise CheckpointError(f"{name} does not fit this model beyond its classification heads: "
                              f"{misfit.describe(limit=5, sep='; ')}; check the architecture flags, or pass "
                              "--allow_partial_load to train from what fits")
    lines = []
    width = own[heads[0]].shape[0] if heads else 0
    distinct = [n for n, _ in model.named_parameters() if is_classification_key(n)]  # aliases once
    if kept:
        lines.append(f"{name}: every weight loaded, the classification heads too: the checkpoint's "
                     f"classifier has this run's {width} outputs and its class names (or records none)")
    else:
        lines.append(f"{name}: loaded what fits; re-initialised for this data set's classes ({width} "
                     f"outputs), as a freshly built model initialises them: {heads_pattern(heads)} "
                     f"({len(distinct)} tensors)")
    if fresh_bf:
        lines.append(f"{name} has no BatchFormer: the {len(fresh_bf)} BatchFormer tensors of --bf "
                     f"{args.bf} start at their initial values")
    if dropped_bf:
        lines.append(f"{name}: its {len(dropped_bf)} BatchFormer tensors are left out (this run has no --bf; "
                     "the BatchFormer is skipped at inference, so the detector does not need them)")
    lines.append("fine-tuning starts at epoch 0 with a fresh optimizer and schedule (continue a stopped run "
                 "with --resume OUTPUT_DIR/checkpoint.pth, without --finetune)")
    return lines
