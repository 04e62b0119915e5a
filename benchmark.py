"""Inference speed of the detector: images per second of the model's forward pass.

    python benchmark.py --batch_size 1 --resume checkpoint.pth --coco_path data/coco
    python benchmark.py --device cpu --no_pretrained_backbone --image_size 800 1216 --num_iters 5

With --resume the model is the checkpoint's, its architecture taken from the flags recorded in it (as
test.py does; a model flag given here overrides the checkpoint's, with a notice); without, the model
flags build one with random weights. The images are the first one of the validation set
(``--dataset_file``/``--coco_path``) repeated ``--batch_size`` times, or with ``--image_size H W``
synthetic images of that size. Timing covers the forward pass only (no data loading, no
post-processing), after ``--warm_iters`` untimed passes.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from util.args import get_args_parser
from util.from_checkpoint import detector_from_checkpoint, detector_from_flags, typed_flags
from util.misc import nested_tensor_from_tensor_list


def get_benchmark_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.py", description="Inference speed of Deformable DETR",
                                     parents=[get_args_parser()])
    parser.add_argument("--num_iters", "--num-iters", type=int, default=300, help="timed forward passes")
    parser.add_argument("--warm_iters", "--warm-iters", type=int, default=5, help="untimed passes first")
    parser.add_argument("--image_size", "--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="time synthetic images of this size instead of the validation set's first image")
    parser.set_defaults(batch_size=1)
    return parser


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"benchmark.py: --device {name} but CUDA is not available here; pass --device cpu")
    return device


def _images(args) -> list[torch.Tensor]:
    """``args.batch_size`` (3, H, W) images: synthetic, or the validation set's first image."""
    if args.image_size is not None:
        h, w = args.image_size
        if h < 32 or w < 32:
            raise SystemExit(f"benchmark.py: --image_size {h} {w} is too small (at least 32 x 32)")
        g = torch.Generator().manual_seed(0)
        return [torch.randn(3, h, w, generator=g) for _ in range(args.batch_size)]
    from datasets import build_dataset

    try:
        dataset = build_dataset("val", args)
    except (FileNotFoundError, OSError) as e:
        raise SystemExit(
            f"benchmark.py: no validation set for --dataset_file {args.dataset_file} ({e}); "
            "point --coco_path at it or pass --image_size H W to time synthetic images"
        ) from e
    image, _ = dataset[0]
    return [image] * args.batch_size


def benchmark(args, typed: set[str] = frozenset()) -> float:
    """Images per second of ``model(samples)`` in eval mode. ``typed``: the flags the user typed, which
    override a --resume checkpoint's (``util.from_checkpoint.typed_flags``)."""
    if args.num_iters < 1 or args.warm_iters < 0 or args.batch_size < 1:
        raise SystemExit("benchmark.py: --num_iters and --batch_size must be >= 1, --warm_iters >= 0")
    device = _device(args.device)
    if args.resume:
        detector = detector_from_checkpoint(args.resume, device, args, typed)
        model, args = detector.model, detector.args
    else:
        model, _, _ = detector_from_flags(args, device)
    samples = nested_tensor_from_tensor_list(_images(args)).to(device)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)
           if args.amp else contextlib.nullcontext())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode(), amp:
        for _ in range(args.warm_iters):
            model(samples)
        sync()
        start = time.perf_counter()
        for _ in range(args.num_iters):
            model(samples)
        sync()
        elapsed = time.perf_counter() - start
    return args.num_iters * args.batch_size / elapsed


def main(argv: list[str] | None = None) -> None:
    from main import user_errors  # the entry points' one way of ending a user error

    parser = get_benchmark_arg_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    with user_errors(parser):
        fps = benchmark(args, typed_flags(argv))
    source = "synthetic {}x{}".format(*args.image_size) if args.image_size else "validation"
    print(f"Inference speed: {fps:.2f} images/s (batch {args.batch_size}, {source} images, {args.device})")


if __name__ == "__main__":
    main()
