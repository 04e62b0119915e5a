"""CPU inference of the same weights: transformers' Deformable DETR against ours, in one run.

    python benchmarks/hf_inference.py [--steps 3] [--warmup 1] [--batch_sizes 1 2] [--threads 2]

transformers' ``DeformableDetrForObjectDetection`` is built at its default (published) size with
random weights (its own ResNet-50 backbone, so that timm is not needed), saved with
``save_pretrained`` and converted with ``util.hf.convert`` into ours; both then run the same
random 800x1066 batches under ``torch.no_grad()``. The steps interleave the models (theirs, ours
with the compiled op, ours with the pure-PyTorch op, then again), so that a change of load on a
shared machine falls on all of them; the printed figures are medians, the ratios theirs / ours.
The load average before and after is printed: on a busy machine the figures are noisy.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import build_model  # noqa: E402
from models.ops.functions import extension  # noqa: E402
from util.hf.convert import load_hf_checkpoint  # noqa: E402
from util.misc import nested_tensor_from_tensor_list  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed forwards per model and batch size")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards per model and batch size first")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1066)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    return p.parse_args(argv)


def _models():
    """(transformers' model, ours) with the same random weights, both in eval mode."""
    import transformers

    torch.manual_seed(0)
    config = transformers.DeformableDetrConfig(
        backbone_config=transformers.ResNetConfig(out_features=["stage2", "stage3", "stage4"]), num_labels=91)
    theirs = transformers.DeformableDetrForObjectDetection(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        theirs.save_pretrained(folder)
        checkpoint = load_hf_checkpoint(folder)
    ours = build_model(checkpoint["args"])[0]
    ours.load_state_dict(checkpoint["model"], strict=True)
    return theirs, ours.eval()


def _timed(fn, samples) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn(samples)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    theirs, ours = _models()
    backends = ["cpp", "pytorch"] if "cpu" in extension.compiled_device_types() else ["pytorch"]

    def run_theirs(samples):
        return theirs(pixel_values=samples.tensors, pixel_mask=(~samples.mask).long()).logits

    def run_ours(samples, backend):
        os.environ["MSDA_BACKEND"] = backend
        return ours(samples)["pred_logits"]

    contenders = {"transformers": run_theirs}
    for backend in backends:
        contenders[f"ours ({backend} op)"] = functools.partial(run_ours, backend=backend)

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({args.threads} threads), transformers {__import__('transformers').__version__}, "
          f"Python {platform.python_version()}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    rows = []
    for batch_size in args.batch_sizes:
        g = torch.Generator().manual_seed(batch_size)
        images = [torch.randn(3, args.height, args.width, generator=g) for _ in range(batch_size)]
        samples = nested_tensor_from_tensor_list(images)
        with torch.no_grad():
            reference = run_theirs(samples)
            for backend in backends:
                diff = (run_ours(samples, backend) - reference).abs().max().item()
                print(f"batch {batch_size}: max |logits ours ({backend} op) - transformers| = {diff:.2e}")
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for step in range(args.warmup + args.steps):
            for name, fn in contenders.items():
                seconds = _timed(fn, samples)
                if step >= args.warmup:
                    times[name].append(seconds)
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, median in medians.items():
            ratio = medians["transformers"] / median
            rows.append((batch_size, name, median, ratio, times[name]))
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print("| batch | model | s per forward (median) | transformers / this | all timed steps (s) |")
    print("|---|---|---|---|---|")
    for batch_size, name, median, ratio, values in rows:
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {batch_size} | {name} | {median:.2f} | {ratio:.2f}x | {shown} |")


if __name__ == "__main__":
    main()
