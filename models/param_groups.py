"""Optimizer parameter groups: one builder for every detector's recipe and for the BatchFormer plug-in.

Deformable DETR's recipe has three groups (``backbone.0`` at ``--lr_backbone``; the sampling offsets and
reference points at lr * ``--lr_linear_proj_mult``; the rest at ``--lr``), DETR's and Conditional DETR's
two (everything named ``backbone`` at ``--lr_backbone``, the rest at ``--lr``): the detectors' own
defaults of ``--lr_backbone_names`` and ``--lr_linear_proj_names`` say which (``models/detectors.py``).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from torch import nn


def is_batchformer_parameter(name: str) -> bool:
    """Whether a parameter (or state-dict key) belongs to a BatchFormer: a path component named ``bf``
    (``transformer.bf.*``, ``transformer.encoder.bf.N.*``; ``bf.*`` and ``bf.layers.N.*`` in the plug-in).
    """
    return "bf" in name.split(".")


def match_name_keywords(name: str, keywords: Sequence[str]) -> bool:
    """Whether a parameter's name contains one of ``keywords`` (the public main.py's rule)."""
    return any(k in name for k in keywords)


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    rules: Sequence[tuple[Sequence[str], float]] = (),
    weight_decay: float | None = None,
    bf_lr_mult: float | None = None,
    bf_weight_decay: float | None = None,
) -> list[dict]:
    """The trainable parameters of ``model`` in groups: first every parameter no rule takes, at ``lr``;
    then one group per rule (keywords, lr): the parameters whose names contain one of its keywords and no
    earlier rule's; last, when ``bf_lr_mult`` is given, the BatchFormer's parameters
    (``is_batchformer_parameter``, taken before any rule) at lr * bf_lr_mult with ``bf_weight_decay``.

    ``weight_decay``: every group's but the BatchFormer's, or None for the optimizer's default. A shared
    layer registered under two names is listed once.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: list[list[nn.Parameter]] = [[] for _ in range(len(rules) + 2)]
    for name, p in named:
        if bf_lr_mult is not None and is_batchformer_parameter(name):
            groups[-1].append(p)
            continue
        taken = [i for i, (keywords, _) in enumerate(rules) if match_name_keywords(name, keywords)]
        groups[1 + taken[0] if taken else 0].append(p)
    rates = [lr, *(rule_lr for _, rule_lr in rules)]
    decay = {} if weight_decay is None else {"weight_decay": weight_decay}
    out = [{"params": params, "lr": rate, **decay} for params, rate in zip(groups, rates)]
    if bf_lr_mult is not None:
        out.append({"params": groups[-1], "lr": lr * bf_lr_mult, "weight_decay": bf_weight_decay})
    return out


def param_groups_from_args(model: nn.Module, args: argparse.Namespace) -> list[dict]:
    """The groups of the detector's recipe (the module docstring). The BatchFormer gets a group of its own
    at lr * ``--bf_lr`` and ``--bf_weight_decay`` only when the model has one and these flags differ from
    the rest's values: with the defaults the groups stay the published ones, so saved optimizer states keep
    fitting."""
    rules = [(args.lr_backbone_names, args.lr_backbone)]
    if args.lr_linear_proj_names:
        rules.append((args.lr_linear_proj_names, args.lr * args.lr_linear_proj_mult))
    bf_weight_decay = args.weight_decay if args.bf_weight_decay is None else args.bf_weight_decay
    separate_bf = (args.bf_lr != 1.0 or bf_weight_decay != args.weight_decay) and any(
        p.requires_grad and is_batchformer_parameter(n) for n, p in model.named_parameters())
    return param_groups(model, args.lr, rules=rules, bf_lr_mult=args.bf_lr if separate_bf else None,
                        bf_weight_decay=bf_weight_decay)
