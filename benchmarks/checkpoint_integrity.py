"""What verifying a checkpoint's checksums costs: ``load_checkpoint`` with and without the check.

    python benchmarks/checkpoint_integrity.py [--repeats 5] [--dir /tmp]

The checkpoint is what main.py writes for Deformable DETR R50 (random weights): the model's state and
AdamW's two moments per parameter (~480 MB). The loads run alternately in one process, the file in
the page cache (the usual case: a checkpoint just written or read); the figure is the median of
``--repeats`` loads each. A cold read pays the disk once either way: the check reads the file first
and torch.load then finds it in the page cache.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.model_step import load, machine  # noqa: E402
from main import build_optimizer  # noqa: E402
from models import build_model  # noqa: E402
from util import checkpoint  # noqa: E402
from util.args import get_args_parser  # noqa: E402


def write_checkpoint(path: str) -> None:
    args = get_args_parser().parse_args(["--no_pretrained_backbone", "--device", "cpu"])
    model, _, _ = build_model(args)
    optimizer, scheduler = build_optimizer(model, args)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()  # the moments exist once a step ran
    checkpoint.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "lr_scheduler": scheduler.state_dict(), "epoch": 0, "args": args}, path)


def seconds(load_once) -> float:
    start = time.perf_counter()
    load_once()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the temporary checkpoint is written")
    opts = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(dir=opts.dir) as tmp:
        path = os.path.join(tmp, "checkpoint.pth")
        write_checkpoint(path)
        size_mb = os.path.getsize(path) / 1e6
        verify = checkpoint._verify_checksums

        def unchecked() -> None:
            checkpoint._verify_checksums = lambda *_: None
            try:
                checkpoint.load_checkpoint(path)
            finally:
                checkpoint._verify_checksums = verify

        runs = {"without the check": unchecked, "load_checkpoint": lambda: checkpoint.load_checkpoint(path),
                "the check alone": lambda: verify(path, path)}
        unchecked()  # into the page cache
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(opts.repeats):
            for name, run in runs.items():
                times[name].append(seconds(run))
        print(f"{size_mb:.0f} MB checkpoint, median of {opts.repeats}; {load()}")
        base = statistics.median(times["without the check"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:18s} {median:7.3f} s  ({median / base:.2f}x, {size_mb / median:,.0f} MB/s)")

if __name__ == "__main__":
    main()
