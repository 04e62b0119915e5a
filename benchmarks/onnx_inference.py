"""CPU inference of the same weights: the ONNX export run by onnxruntime against our PyTorch model.

    python benchmarks/onnx_inference.py [--steps 3] [--warmup 1] [--threads 2] [-- MODEL FLAGS]

The model is main.py's default (Deformable DETR, ResNet-50, 4 levels, 300 queries, 91 classes) with
random weights, or the one that main.py's flags after ``--`` build (e.g. ``-- --with_box_refine
--two_stage``). It is exported as ``tools/export_onnx.py`` does (traced at another size than the one
timed) and run by onnxruntime's CPU provider; ours runs with the compiled op and with the
pure-PyTorch op (``MSDA_BACKEND=pytorch``). The steps interleave the three, so that a change of load
on a shared machine falls on all of them; the figures are medians of wall-clock and of process CPU
time (both runtimes compute in this process), the ratios onnxruntime / ours. The load average
before and after is printed: on a busy machine the wall-clock figures are noisy, the CPU times less.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.ops.functions import extension  # noqa: E402
from tools.export_onnx import ExportedDetector, example_inputs, export  # noqa: E402
from util.args import get_args_parser  # noqa: E402
from util.from_checkpoint import detector_from_flags  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(the benchmark's options, the model's flags: main.py's, after ``--``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed forwards per contender")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards per contender first")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1066)
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    model_flags = get_args_parser().parse_args(["--no_pretrained_backbone", *argv[split + 1:]])
    return p.parse_args(argv[:split]), model_flags


def main(argv: list[str] | None = None) -> None:
    import onnxruntime

    args, model_flags = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    torch.manual_seed(0)
    exported = ExportedDetector(detector_from_flags(model_flags)[0]).eval()
    backends = ["cpp", "pytorch"] if "cpu" in extension.compiled_device_types() else ["pytorch"]

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        start = time.perf_counter()
        export(exported, path, example_inputs(exported, 2, (480, 640), padding_mask=False), opset=18)
        export_seconds = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, args.height, args.width, generator=generator)

    def run_onnxruntime() -> torch.Tensor:
        return torch.from_numpy(session.run(["pred_logits"], {"images": images.numpy()})[0])

    def run_ours(backend: str) -> torch.Tensor:
        os.environ["MSDA_BACKEND"] = backend
        with torch.no_grad():
            return exported(images)[0]

    contenders = {"onnxruntime": run_onnxruntime}
    contenders.update({f"ours ({backend} op)": (lambda b=backend: run_ours(b)) for backend in backends})

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({args.threads} threads), onnxruntime {onnxruntime.__version__} ({args.threads} threads), "
          f"Python {platform.python_version()}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(f"export (tools/export_onnx.py's, traced at 480x640): {export_seconds:.0f} s")
    reference = run_onnxruntime()
    for backend in backends:
        diff = (run_ours(backend) - reference).abs().max().item()
        print(f"max |logits ours ({backend} op) - onnxruntime| = {diff:.2e}")
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for step in range(args.warmup + args.steps):
        for name, fn in contenders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if step >= args.warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    wall_median = {name: statistics.median(values) for name, values in wall.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    print("| batch x size | runtime | wall s per forward (median) | onnxruntime / this | CPU s per forward "
          "(median) | onnxruntime / this | all timed steps, wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for name in contenders:
        shown = ", ".join(f"{v:.2f}" for v in wall[name])
        print(f"| {args.batch_size} x {args.height}x{args.width} | {name} | {wall_median[name]:.2f} | "
              f"{wall_median['onnxruntime'] / wall_median[name]:.2f}x | {cpu_median[name]:.2f} | "
              f"{cpu_median['onnxruntime'] / cpu_median[name]:.2f}x | {shown} |")


if __name__ == "__main__":
    main()
