"""The one place a detector is built from a checkpoint, for every tool that runs a trained model.

    detector = detector_from_checkpoint("exps/r50/checkpoint.pth", "cuda", args, typed_flags(argv))
    outputs = detector.model(samples)  # eval mode, weights loaded, on the device

The checkpoint is read once. Its recorded flags (``util.checkpoint.RECORDED_FLAGS``: the architecture,
what changes an evaluation's outputs, the data set's classes) replace the tool's, except those the user
typed, which win with a notice; the weights load with the architecture check of ``main.py --resume``
(a checkpoint that does not fit stops in one line instead of running with random tensors). test.py,
benchmark.py, tools/predict.py (and tools/visualize.py through it) use it; so should every tool that
loads a trained model.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from util.args import FlagError, get_args_parser, model_args_problem, with_defaults
from util.checkpoint import CheckpointError, adopt_recorded_flags, load_weights
from util.hf.convert import load_checkpoint_or_folder


@dataclass
class LoadedDetector:
    """model: in eval mode on the device, every weight from the checkpoint; criterion (the test loss) and
    postprocessors as ``models.build_model`` returns them. args: the resolved flags (the checkpoint's
    recorded ones, the typed ones over them, the tool's own for the rest). recorded: the checkpoint's
    own args (None if it records none), for what a tool may take from it besides (e.g. data paths)."""

    model: nn.Module
    criterion: nn.Module
    postprocessors: dict[str, nn.Module]
    args: argparse.Namespace
    recorded: argparse.Namespace | dict | None


def typed_flags(argv: Sequence[str]) -> set[str]:
    """The main.py flags (dests) ``argv`` sets: what the user typed, which a checkpoint's do not replace.

    Parsed without defaults, so that only what was typed is there; a tool's own flags are ignored.
    """
    probe = argparse.ArgumentParser(add_help=False, parents=[get_args_parser()])
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_known_args(list(argv))[0]))


def _raise_problem(args: argparse.Namespace, check: Callable[[argparse.Namespace], str | None]) -> None:
    problem = check(args)
    if problem:
        raise FlagError(problem)


def _build(args: argparse.Namespace) -> tuple[nn.Module, nn.Module, dict[str, nn.Module]]:
    """The model of ``args`` with the initial weights of ``--seed``, whatever the global generator's state
    (what a partial load leaves in place is the same in every run)."""
    from models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        return build_model(args)


def detector_from_flags(args: argparse.Namespace, device: str | torch.device = "cpu"
                        ) -> tuple[nn.Module, nn.Module, dict[str, nn.Module]]:
    """(model, criterion, postprocessors) of ``args`` with initial weights, in eval mode on ``device``;
    the flags are checked first (FlagError naming the first bad one)."""
    args = with_defaults(args)
    _raise_problem(args, model_args_problem)
    model, criterion, postprocessors = _build(args)
    return model.to(device).eval(), criterion.to(device).eval(), postprocessors


def detector_from_checkpoint(checkpoint: str, device: str | torch.device = "cpu",
                             args: argparse.Namespace | None = None, typed: Iterable[str] = (),
                             check: Callable[[argparse.Namespace], str | None] = model_args_problem
                             ) -> LoadedDetector:
    """The detector a checkpoint holds, ready for inference.

    checkpoint: a file, URL or Hugging Face folder (``util.hf.convert.load_checkpoint_or_folder``); a
        bare state dict is taken as the weights of a checkpoint without args.
    device: where the model and criterion go.
    args: the tool's parsed flags (main.py's, possibly with its own; default: main.py's defaults): the
        flags a checkpoint does not record (data paths, batch size, ...) come from here. Not modified.
    typed: the flags (dests) the user typed (``typed_flags(argv)``): they override the checkpoint's.
    check: finds the first problem of the resolved flags before anything is built
        (``util.args.model_args_problem``: the flags that build the model; test.py's ``args_problem``
        also checks the data paths).

    Raises CheckpointError (unreadable, corrupt, or not fitting the flags) and FlagError (a resolved flag
    is invalid): user errors of one line, which ``main.user_errors`` reports as such.
    """
    saved = load_checkpoint_or_folder(checkpoint)
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {checkpoint!r}: expected a dict (a checkpoint written by main.py "
                              f"or a state dict), got {type(saved).__name__}")
    if "model" not in saved:
        saved = {"model": saved}
    resolved = with_defaults(args if args is not None else argparse.Namespace())
    # Inference with every weight from the checkpoint: no ImageNet backbone, no frozen detector.
    resolved.resume, resolved.eval, resolved.no_pretrained_backbone, resolved.frozen_weights = (
        checkpoint, True, True, None)
    for notice in adopt_recorded_flags(resolved, saved.get("args"), set(typed), checkpoint,
                                       state_dict=saved["model"]):
        print(notice, flush=True)
    _raise_problem(resolved, check)
    model, criterion, postprocessors = _build(resolved)
    load_weights(model, saved, resolved, name=checkpoint, complete=True)
    return LoadedDetector(model.to(device).eval(), criterion.to(device).eval(), postprocessors, resolved,
                          saved.get("args"))
