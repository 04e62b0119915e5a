"""Seconds per training step and per evaluation forward of each detector on this machine.

    python benchmarks/model_step.py [--steps 3] [--warmup 2] [--configs base bf] [--backends cpp pytorch]

Batch of 2 random 512x640 images (``--image_size``), ResNet-50 with random weights, every other
flag at its detector's default (``--meta_arch``). A training step is forward, criterion, backward,
gradient clipping and the AdamW step of main.py. Each Deformable DETR configuration runs with the compiled
C++ op and with the pure-PyTorch op in the same process (the op reads MSDA_BACKEND on every call), so the
printed ratios compare like with like; a detector without deformable attention is timed once.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from main import build_optimizer  # noqa: E402
from models import build_model  # noqa: E402
from models.ops.functions import extension  # noqa: E402
from models.ops.modules import MSDeformAttn  # noqa: E402
from util.args import get_args_parser, parse_args  # noqa: E402
from util.misc import nested_tensor_from_tensor_list  # noqa: E402

CONFIGS = {
    "base": [],
    "bf": ["--bf", "1", "--insert_idx", "0", "--share_bf", "0"],
    "detr": ["--meta_arch", "detr"],
    "detr_bf": ["--meta_arch", "detr", "--bf", "3", "--insert_idx", "0"],
}
# BatchFormerV2 configuration -> its baseline, for the printed cost ratio of a training step
BF_BASELINES = {"bf": "base", "detr_bf": "detr"}
# The public code on this machine, for context (measured outside this script).
PUBLIC_SECONDS = {("base", "train"): 17.0, ("base", "eval"): 4.5, ("bf", "train"): 27.0}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads, Python {platform.python_version()}")


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def batch(g: torch.Generator, size=(512, 640), images=2):
    """Random images and 1 to 6 random boxes per image (labels are COCO category ids)."""
    samples = nested_tensor_from_tensor_list([torch.randn(3, *size, generator=g) for _ in range(images)])
    targets = []
    for _ in range(images):
        n = int(torch.randint(1, 7, (1,), generator=g))
        centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        labels = torch.randint(1, 91, (n,), generator=g)
        targets.append({"labels": labels, "boxes": torch.cat([centre, wh], 1)})
    return samples, targets


def time_calls(fn, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds (all threads) of each timed call.

    CPU seconds are the fairer figure on a machine shared with other jobs.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def run_config(name: str, backends: list[str], warmup: int, steps: int, size: tuple[int, int]) -> dict:
    args = parse_args(get_args_parser(), ["--device", "cpu", "--no_pretrained_backbone", *CONFIGS[name]])
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    weight_dict = criterion.weight_dict
    optimizer, _ = build_optimizer(model, args)  # main.py's: AdamW, three parameter groups
    params = [p for g in optimizer.param_groups for p in g["params"]]
    samples, targets = batch(torch.Generator().manual_seed(0), size)
    parts: dict[str, list[float]] = {"forward+loss": [], "backward": [], "clip+optimizer": []}

    def train_step() -> None:
        t0 = time.perf_counter()
        outputs = model(samples)
        losses = criterion(outputs, targets)
        loss = sum(losses[k] * weight_dict[k] for k in losses if k in weight_dict)
        t1 = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, args.clip_max_norm)
        optimizer.step()
        t3 = time.perf_counter()
        for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[key].append(seconds)

    @torch.no_grad()
    def eval_forward() -> None:
        model(samples)

    results = {}
    deformable = any(isinstance(m, MSDeformAttn) for m in model.modules())
    for backend in backends if deformable else backends[:1]:
        os.environ["MSDA_BACKEND"] = backend
        key = backend if deformable else "no op"
        model.train()
        train, train_cpu = time_calls(train_step, warmup, steps)
        split = ", ".join(f"{k} {statistics.median(v[-steps:]):.2f}" for k, v in parts.items())
        model.eval()
        evaluation, eval_cpu = time_calls(eval_forward, max(1, warmup - 1), steps)
        results[key] = {
            "train": statistics.median(train), "eval": statistics.median(evaluation),
            "train_cpu": statistics.median(train_cpu), "eval_cpu": statistics.median(eval_cpu),
        }
        all_train = ", ".join(f"{t:.2f}" for t in train)
        all_eval = ", ".join(f"{t:.2f}" for t in evaluation)
        print(f"{name:14s} {key:8s} train {results[key]['train']:6.2f} s/step (all: {all_train})  "
              f"eval {results[key]['eval']:6.2f} s/forward (all: {all_eval})  [{load()}]\n"
              f"      CPU seconds: train {results[key]['train_cpu']:.2f}, "
              f"eval {results[key]['eval_cpu']:.2f}; train step median parts (wall): {split}", flush=True)
    return results  # by backend; without deformable attention one entry, "no op" (no backend matters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--backends", nargs="+", default=["cpp", "pytorch"], choices=["cpp", "pytorch"])
    parser.add_argument("--image_size", type=int, nargs=2, default=(512, 640), metavar=("H", "W"))
    opts = parser.parse_args()

    backends = list(opts.backends)
    if "cpp" in backends and "cpu" not in extension.compiled_device_types():
        print("The compiled op is not available here (build it with `sh models/ops/make.sh`): "
              "timing the pure-PyTorch op only.", flush=True)
        backends.remove("cpp")
    if not backends:
        raise SystemExit("model_step.py: no backend left to time")

    print(f"Machine: {machine()}")
    h, w = opts.image_size
    print(f"Start: {load()}; batch 2 of {h}x{w}, ResNet-50, {opts.warmup} warm-up + {opts.steps} timed steps")
    results = {name: run_config(name, backends, opts.warmup, opts.steps, (h, w)) for name in opts.configs}

    print("\nMedian wall seconds, and process CPU seconds (ratios in the same run):")
    for name, per_backend in results.items():
        for phase in ("train", "eval", "train_cpu", "eval_cpu"):
            line = f"  {name:14s} {phase:9s} "
            line += "  ".join(f"{b} {per_backend[b][phase]:6.2f} s" for b in per_backend)
            if len(per_backend) == 2:
                line += f"  pytorch/cpp {per_backend['pytorch'][phase] / per_backend['cpp'][phase]:.2f}x"
            public = PUBLIC_SECONDS.get((name, phase))
            if public is not None and (h, w) == (512, 640):
                ours = per_backend[backends[0]][phase]
                line += f"  public code {public:.1f} s / {backends[0]}: {public / ours:.2f}x"
            print(line)
    for bf, base in BF_BASELINES.items():
        if bf in results and base in results:
            for b in results[bf]:
                ratio = results[bf][b]["train"] / results[base][b]["train"]
                print(f"  {bf}/{base} train step with {b}: {ratio:.2f}x")
    print(f"End: {load()}")


if __name__ == "__main__":
    main()
