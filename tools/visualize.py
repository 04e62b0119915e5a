"""Draw a checkpoint's detections (and, for a panoptic model, its segments) on images.

    python tools/visualize.py exps/demo/checkpoint.pth --num_images 4 --output_dir exps/demo/detections
    python tools/visualize.py ckpt.pth --images a.jpg b.jpg --threshold 0.5 --device cpu

A front of tools/predict.py (the prediction command, which also takes folders and videos and writes
detections.json): the same model (rebuilt from the checkpoint as test.py does; main.py flags after
``--`` override its flags, e.g. ``-- --eval_bf``), the same image size (the evaluation resize of the
checkpoint's data set, its longer side capped), the same drawing, at the size of the image file, with
the class names the checkpoint records. Without ``--images`` the first validation images of the
checkpoint's data set are drawn (found where its run found them unless ``--coco_path`` etc. are given
after ``--``). A model trained with ``--masks`` on a panoptic data set also gets ``<image>_panoptic.png``:
every segment of its panoptic prediction blended over the image in its own colour.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.predict import predict  # noqa: E402
from util.args import get_args_parser  # noqa: E402
from util.from_checkpoint import detector_from_checkpoint, typed_flags  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint path or URL (a dict with 'model' and 'args')")
    p.add_argument("--images", nargs="+", default=None, help="image files; default: the validation set")
    p.add_argument("--num_images", type=int, default=4, help="validation images to draw without --images")
    p.add_argument("--threshold", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--output_dir", default="detections", help="where the drawn images go")
    p.add_argument("--device", default="cpu")
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        i = argv.index("--")
        return p.parse_args(argv[:i]), argv[i + 1:]
    return p.parse_args(argv), []


# Where the data sets are: unless given after --, where the checkpoint's run found them.
_DATA_LOCATIONS = ("coco_path", "coco_panoptic_path", "toy_root", "toy_panoptic_root", "train_json",
                   "train_images", "val_json", "val_images")


def _with_recorded_data(args: argparse.Namespace, recorded, typed: set[str]) -> None:
    for flag in _DATA_LOCATIONS:
        value = recorded.get(flag) if isinstance(recorded, dict) else getattr(recorded, flag, None)
        if flag not in typed and value is not None:
            setattr(args, flag, value)


def validation_images(args: argparse.Namespace, count: int) -> list[str]:
    """The files of the first ``count`` images of the validation split of ``args``' data set."""
    from datasets import build_dataset

    dataset = build_dataset("val", args)
    return [dataset.image_path(image_id) for image_id in dataset.ids[:count]]


def main(argv: list[str] | None = None) -> list[str]:
    """The command line; returns the drawn files."""
    from main import _check_device, user_errors  # the entry points' one way of ending a user error

    opts, overrides = parse_args(argv)
    parser = argparse.ArgumentParser(prog="visualize.py", parents=[get_args_parser()])
    parser.set_defaults(batch_size=1, num_workers=0)
    typed = typed_flags(overrides)
    args = parser.parse_args(overrides)
    args.device, args.output_dir, args.threshold = opts.device, opts.output_dir, opts.threshold
    with user_errors(parser):
        detector = detector_from_checkpoint(opts.checkpoint, _check_device(args), args, typed)
        args = detector.args
        if opts.images:
            args.inputs = opts.images
        else:
            _with_recorded_data(args, detector.recorded, typed)
            args.inputs = validation_images(args, opts.num_images)
        return [path for path in predict(args, detector).written if not path.endswith(".json")]


if __name__ == "__main__":
    main()
