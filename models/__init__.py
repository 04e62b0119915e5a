"""Deformable DETR with BatchFormerV2."""
from __future__ import annotations

import argparse

from torch import nn

from models.build import build
from util.args import dataset_metadata, with_defaults
from util.metadata import DatasetMetadata


def build_model(
    args: argparse.Namespace, metadata: DatasetMetadata | None = None
) -> tuple[nn.Module, nn.Module, dict[str, nn.Module]]:
    """(model, criterion, postprocessors) for the command-line ``args``, with random weights (load the
    backbone's ImageNet ones with ``models.backbone.load_pretrained_backbone``).

    ``metadata``: the data set's (``datasets.dataset_metadata(args)``); the public one-argument call
    looks it up from ``--dataset_file``. Flags missing from ``args`` take the parser's defaults.
    """
    args = with_defaults(args)
    if metadata is None:
        metadata = dataset_metadata(args)
    built = build(args, metadata)
    return built.model, built.criterion, built.postprocessors
