"""What --bf_scope global costs: bytes gathered per BatchFormer insertion, and time on 2 gloo processes.

    python benchmarks/bf_global_comm.py bytes [--image_size 800 1333] [--hidden_dim 256]
    python benchmarks/bf_global_comm.py time [--steps 3] [--warmup 1] [--image_size 256 320] [--batch_size 2]

``bytes``: at each insertion every rank gathers the encoder state of every image of the job, S tokens
of C numbers per image (S = the positions of the four feature levels at strides 8, 16, 32, 64 of the
padded image), so it holds N * B * S * C numbers, (N - 1) * B * S * C of them received; in backward
the gradient of the gathered tensor is all-reduced (a ring all-reduce sends and receives about
2 (N - 1) / N times its size per rank). Printed per insertion and for the published insertion at one
index; a step with k insert indices pays k times.

``time``: two gloo processes on this machine's CPU, each with a small model (ResNet-18, ``--hidden_dim``,
two encoder and decoder layers, ``--bf 1 --insert_idx 0``) on ``--batch_size`` random images, time a
training step (forward, loss, backward under DistributedDataParallel, AdamW step) with --bf_scope device
and global, and one all_gather_rows forward + backward of a (B, S, 256) float32 encoder state at
800x1333 (what one insertion of the published model moves).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BYTES_PER = {"float32": 4, "bf16": 2}


def level_sizes(height: int, width: int, levels: int = 4) -> list[tuple[int, int]]:
    """(H_l, W_l) of the multi-scale levels of a ResNet input of (height, width): strides 8, 16, 32,
    then stride-2 3x3 convolutions (padding 1) for the extra levels."""

    def conv(n: int, kernel: int, stride: int, pad: int) -> int:
        return (n + 2 * pad - kernel) // stride + 1

    def trunk(n: int) -> list[int]:
        n = conv(conv(n, 7, 2, 3), 3, 2, 1)  # stem: 7x7 stride-2 conv, 3x3 stride-2 max pool -> stride 4
        out = []
        for _ in range(3):  # layer2, layer3, layer4: one stride-2 3x3 conv (padding 1) each
            n = conv(n, 3, 2, 1)
            out.append(n)
        while len(out) < levels:
            out.append(conv(out[-1], 3, 2, 1))
        return out[:levels] if levels >= 3 else out[2:3]

    return list(zip(trunk(height), trunk(width)))


def tokens(height: int, width: int, levels: int = 4) -> int:
    """S: the encoder positions of one padded image."""
    return sum(h * w for h, w in level_sizes(height, width, levels))


def gathered_bytes(images_per_gpu: int, gpus: int, height: int, width: int, channels: int = 256,
                   bytes_per: int = 4, levels: int = 4) -> dict[str, float]:
    """Bytes per insertion and rank: held after the gather, received from the other ranks, and sent +
    received by the ring all-reduce of the gathered gradient in backward."""
    per_image = tokens(height, width, levels) * channels * bytes_per
    held = gpus * images_per_gpu * per_image
    return {"held": held, "received": (gpus - 1) * images_per_gpu * per_image,
            "backward": 2 * (gpus - 1) / gpus * held}


def print_bytes(opts: argparse.Namespace) -> None:
    h, w = opts.image_size
    print(f"Encoder positions S of a padded {h}x{w} image: {tokens(h, w)} "
          f"(levels {level_sizes(h, w)}); C = {opts.hidden_dim}")
    print("GB per insertion and rank (1 GB = 1e9 bytes): gathered (held) / received / backward all-reduce")
    header = "| images per GPU | GPUs | " + " | ".join(f"{d} gathered / received / backward"
                                                      for d in BYTES_PER)
    print(header + " |")
    print("|---" * (2 + len(BYTES_PER)) + "|")
    for per_gpu in opts.images_per_gpu:
        for gpus in opts.gpus:
            cells = []
            for size in BYTES_PER.values():
                b = gathered_bytes(per_gpu, gpus, h, w, opts.hidden_dim, size)
                cells.append(" / ".join(f"{b[k] / 1e9:.3f}" for k in ("held", "received", "backward")))
            print(f"| {per_gpu} | {gpus} | " + " | ".join(cells) + " |")


# ------------------------------------------------------------------------------------------------
# Timing on two gloo processes


def _model_flags(opts: argparse.Namespace, scope: str) -> list[str]:
    return ["--device", "cpu", "--no_pretrained_backbone", "--backbone", "resnet18", "--hidden_dim",
            str(opts.hidden_dim), "--dim_feedforward", str(2 * opts.hidden_dim), "--enc_layers", "2",
            "--dec_layers", "2", "--num_queries", "50", "--dataset_file", "toy", "--bf", "1", "--insert_idx",
            "0", "--bf_scope", scope, "--batch_size", str(opts.batch_size)]


def _median_step(opts: argparse.Namespace, scope: str, rank: int) -> tuple[float, float]:
    from torch.nn.parallel import DistributedDataParallel

    from main import build_optimizer
    from models import build_model
    from util.args import get_args_parser
    from util.misc import nested_tensor_from_tensor_list

    args = get_args_parser().parse_args(_model_flags(opts, scope))
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    ddp = DistributedDataParallel(model.train())
    optimizer, _ = build_optimizer(model, args)
    g = torch.Generator().manual_seed(rank)
    h, w = opts.image_size
    samples = nested_tensor_from_tensor_list([torch.randn(3, h - 16 * i, w, generator=g)
                                              for i in range(opts.batch_size)])
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.4]])
    targets = [{"labels": torch.tensor([1, 2]), "boxes": boxes} for _ in range(opts.batch_size)]
    wall, cpu = [], []
    for step in range(opts.warmup + opts.steps):
        t, c = time.perf_counter(), time.process_time()
        losses = criterion(ddp(samples), targets)
        loss = sum(v * criterion.weight_dict[k] for k, v in losses.items() if k in criterion.weight_dict)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= opts.warmup:
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def _median_gather(opts: argparse.Namespace) -> float:
    from util.dist import all_gather_rows

    s = tokens(800, 1333)
    x = torch.randn(opts.batch_size, s, 256, requires_grad=True)
    times = []
    for step in range(opts.warmup + opts.steps):
        t = time.perf_counter()
        all_gather_rows(x).sum().backward()
        if step >= opts.warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _worker(rank: int, store: str, opts: argparse.Namespace, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(opts.threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        results = {}
        for scope in ("device", "global"):
            results[scope] = _median_step(opts, scope, rank)
            gc.collect()  # the DDP wrapper holds reference cycles: freed now, on every rank alike
        results["gather"] = _median_gather(opts)
        if rank == 0:
            torch.save(results, out)
    finally:
        gc.collect()
        dist.destroy_process_group()


def print_times(opts: argparse.Namespace) -> None:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "results.pt")
        mp.spawn(_worker, args=(os.path.join(d, "store"), opts, out), nprocs=2, join=True)
        results = torch.load(out)
    load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    h, w = opts.image_size
    print(f"2 gloo processes, {opts.threads} thread(s) each, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, "
          f"{load}; {opts.batch_size} images of about {h}x{w} per process, --hidden_dim {opts.hidden_dim}; "
          f"medians of {opts.steps} steps after {opts.warmup}")
    (dw, dc), (gw, gc) = results["device"], results["global"]
    print(f"training step, --bf_scope device: {dw:.3f} s wall ({dc:.3f} CPU s)")
    print(f"training step, --bf_scope global: {gw:.3f} s wall ({gc:.3f} CPU s): "
          f"{100 * (gw / dw - 1):+.1f} % wall, {100 * (gc / dc - 1):+.1f} % CPU")
    mb = opts.batch_size * tokens(800, 1333) * 256 * 4 / 1e6
    print(f"all_gather_rows forward + backward of ({opts.batch_size}, {tokens(800, 1333)}, 256) float32 "
          f"({mb:.0f} MB per rank, one insertion at 800x1333): {results['gather']:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="*", choices=("bytes", "time"), default=["bytes", "time"])
    parser.add_argument("--image_size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="bytes: default 800 1333; time: default 256 320")
    parser.add_argument("--hidden_dim", type=int, default=None, help="bytes: default 256; time: default 64")
    parser.add_argument("--images_per_gpu", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--batch_size", type=int, default=2, help="time: images per process")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    opts = parser.parse_args()
    if "bytes" in opts.what:
        bytes_opts = argparse.Namespace(**{**vars(opts), "image_size": opts.image_size or (800, 1333),
                                           "hidden_dim": opts.hidden_dim or 256})
        print_bytes(bytes_opts)
    if "time" in opts.what:
        time_opts = argparse.Namespace(**{**vars(opts), "image_size": opts.image_size or (256, 320),
                                          "hidden_dim": opts.hidden_dim or 64})
        print_times(time_opts)


if __name__ == "__main__":
    main()
