"""Deformable DETR with BatchFormerV2."""

from .deformable_detr import build


def build_model(args):
    """(model, criterion, postprocessors) for the parsed command-line ``args``."""
    return build(args)
