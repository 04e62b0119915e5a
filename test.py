"""The evaluation command (not a test suite): score a checkpoint with the flags recorded in it.

    python test.py --resume r50_deformable_detr.pth --coco_path data/coco --output_dir exps/eval

Everything that decides what the evaluation computes comes from the checkpoint's ``args``
(``util.checkpoint.RECORDED_FLAGS``: the architecture, --dataset_file and --num_classes, --eval_bf,
the panoptic threshold, and the matcher costs and loss weights behind the printed test loss); a flag
given here overrides the checkpoint's, with a notice. Every other flag is main.py's and means the same
(where the data is, the device, the batch size ...); the evaluation is ``main.py --eval``'s and writes
the same files (eval_stats.json, results_bbox.json) to --output_dir. Distributed launchers run it as
they run main.py. The repository's tests are under tests/ (``make test``).
"""
from __future__ import annotations

import argparse
import sys

import main as main_module
from util.args import args_problem, get_args_parser, parse_args
from util.from_checkpoint import LoadedDetector, detector_from_checkpoint, typed_flags


def cli(argv: list[str] | None = None) -> dict | None:
    """main.py's command line, evaluating --resume with its own flags; errors end as main.py's do, naming
    test.py. Returns the evaluation's stats."""
    parser = argparse.ArgumentParser(
        prog="test.py", parents=[get_args_parser()],
        description="The evaluation command (not a test suite: the tests are in tests/). Evaluates a "
                    "checkpoint with the architecture and evaluation flags recorded in it; flags given here "
                    "override them.")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(parser, argv)
    if not args.resume:
        parser.error("--resume is required: the checkpoint (path or URL) to evaluate")

    def from_checkpoint(args: argparse.Namespace) -> LoadedDetector:
        # On the CPU: main moves it to the device of this process once the process group is up.
        detector = detector_from_checkpoint(args.resume, "cpu", args, typed_flags(argv), check=args_problem)
        vars(args).update(vars(detector.args))
        return detector

    return main_module.run(parser, args, prepare=from_checkpoint)


if __name__ == "__main__":
    cli()
