"""Evaluate a checkpoint with the architecture recorded in its own args.

    python test.py --resume r50_deformable_detr.pth --coco_path data/coco --output_dir exps/eval

The model flags (backbone, levels, widths, layers, queries, --with_box_refine, --two_stage, --masks,
the BatchFormer's, and --dataset_file, which fixes the number of classes) come from the
checkpoint's ``args``; a model flag given here overrides the checkpoint's, with a notice. Every other
flag is main.py's and means the same; the evaluation is ``main.py --eval``'s and writes the same
files (eval_stats.json, results_bbox.json) to --output_dir. Distributed launchers run it as they run
main.py.
"""
from __future__ import annotations

import argparse
import sys

import main as main_module
from util.args import get_args_parser
from util.checkpoint import adopt_recorded_flags, load_checkpoint


def given_flags(argv: list[str]) -> set[str]:
    """The flags (dests) ``argv`` sets; parsed with no defaults so that only what was typed is there."""
    probe = argparse.ArgumentParser(add_help=False, parents=[get_args_parser()])
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_known_args(argv)[0]))


def cli(argv: list[str] | None = None) -> None:
    """main.py's command line, less the model flags; errors end as main.py's do, naming test.py."""
    parser = argparse.ArgumentParser(prog="test.py", parents=[get_args_parser()],
                                     description="Evaluate a checkpoint with the architecture recorded in it")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    given = given_flags(argv)
    if not args.resume:
        parser.error("--resume is required: the checkpoint (path or URL) to evaluate")
    args.eval = True
    # Every weight comes from the checkpoint: the ImageNet backbone would only be downloaded and replaced.
    if "no_pretrained_backbone" not in given and "backbone_weights" not in given:
        args.no_pretrained_backbone = True

    def take_recorded_flags(args: argparse.Namespace) -> None:
        checkpoint = load_checkpoint(args.resume)
        saved = checkpoint.get("args") if isinstance(checkpoint, dict) else None
        for notice in adopt_recorded_flags(args, saved, given, args.resume):
            print(f"test.py: {notice}", flush=True)

    main_module.run(parser, args, prepare=take_recorded_flags)


if __name__ == "__main__":
    cli()
