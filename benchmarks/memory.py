"""Peak tensor memory of one training step (forward, criterion, backward) of Deformable DETR.

    python benchmarks/memory.py [--image_size H W] [--configs base bf ...] [--device cpu|cuda]

Batch of 2 random images (default 256x320 on CPU, 800x1333 on CUDA), ResNet-50 with random weights,
300 queries, every other flag at its default; with --masks each image has 6 random box-shaped
masks. The mask head is measured twice: as it runs ("chunked": query chunks, the backward pass
recomputing the matched queries only) and computing every query at once with every activation
stored ("full", ``mask_chunk_rows = 0``: the computation before chunking).

What is measured: the bytes of live tensors above those alive when the step starts (weights, and no
gradient: they are set to None first), at their highest during the step; the parameters' gradients
allocated by the backward pass are part of it.
- CUDA: ``torch.cuda.max_memory_allocated`` (after a warm-up step), minus the allocation at the start.
- CPU: the profiler's allocation and free events of the CPU allocator (``profile_memory``), summed in
  time order; their running maximum is the peak. Freed memory is counted as freed when the tensor dies,
  whatever the C library's allocator keeps cached, so this is tensor memory, not the process's RSS.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.model_step import load, machine  # noqa: E402
from models import build_model  # noqa: E402
from util.args import get_args_parser  # noqa: E402
from util.misc import nested_tensor_from_tensor_list  # noqa: E402

CONFIGS = {
    "base": [],
    "bf": ["--bf", "1"],
    "bf_checkpoint": ["--bf", "1", "--use_checkpoint"],
    "masks": ["--masks"],
    "masks_bf": ["--masks", "--bf", "1"],
}
GIB = 2**30


def mask_head_estimate(image_size: tuple[int, int], images: int, streams: int, queries: int,
                       heads: int = 8, hidden_dim: int = 256, bytes_per_value: int = 4) -> int:
    """Bytes autograd stores for the per-query maps of the mask head when every query is computed at
    once (``mask_chunk_rows = 0``):

        bytes_per_value * images * streams * queries
            * ((2 M + 5 dim8 + 2 dim4) * ceil(H/8) * ceil(W/8) + (3 dim4 + 1) * ceil(H/4) * ceil(W/4))

    with M heads, dim8 = hidden_dim / 4 and dim4 = hidden_dim / 16 channels (at least 8). At stride 8:
    the attention weights (softmax output) and their rescaled copy (M each), then the inputs of the
    GroupNorm after the attention conv, of the ReLU after the memory sum, of conv8, of its GroupNorm and
    of the following ReLU (dim8 each), the narrowing GroupNorm's and ReLU's (dim4 each); at stride 4 the
    inputs of conv4, of its GroupNorm and of its ReLU (dim4 each) and the logits (1).
    """
    h, w = image_size
    dim8, dim4 = max(hidden_dim // 4, 8), max(hidden_dim // 16, 8)
    cells8 = -(-h // 8) * -(-w // 8)
    cells4 = -(-h // 4) * -(-w // 4)
    per_row = (2 * heads + 5 * dim8 + 2 * dim4) * cells8 + (3 * dim4 + 1) * cells4
    return bytes_per_value * images * streams * queries * per_row


def batch(g: torch.Generator, size: tuple[int, int], device: torch.device, masks: bool, images: int = 2,
          objects: int = 6):
    """Random images; ``objects`` random boxes per image, and their box-shaped masks with ``masks``."""
    h, w = size
    samples = nested_tensor_from_tensor_list([torch.randn(3, h, w, generator=g) for _ in range(images)])
    targets = []
    for _ in range(images):
        centre = torch.rand(objects, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(objects, 2, generator=g) * 0.3 + 0.05
        labels = torch.randint(1, 91, (objects,), generator=g)
        target = {"labels": labels, "boxes": torch.cat([centre, wh], 1)}
        if masks:
            m = torch.zeros(objects, h, w, dtype=torch.bool)
            for i, ((cx, cy), (bw, bh)) in enumerate(zip(centre.tolist(), wh.tolist())):
                rows = slice(int((cy - bh / 2) * h), int((cy + bh / 2) * h))
                m[i, rows, int((cx - bw / 2) * w) : int((cx + bw / 2) * w)] = True
            target["masks"] = m
        targets.append({k: v.to(device) for k, v in target.items()})
    return samples.to(device), targets


def cpu_peak_bytes(fn) -> int:
    """Highest sum of live CPU tensor bytes allocated by fn() above the start, from the profiler's
    allocation (+) and free (-) events in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The per-allocation events live in the raw results; key_averages() keeps only per-operator totals.
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()) == "DeviceType.CPU"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def cuda_peak_bytes(fn, device: torch.device) -> int:
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start


def measure(flags: list[str], size: tuple[int, int], device: torch.device, queries: int,
            mask_chunk_rows: int | None, timed: bool) -> tuple[int, float | None]:
    """Peak bytes of one training step, and with ``timed`` the seconds of another (process CPU seconds
    on CPU, where other jobs share the cores; wall seconds on CUDA)."""
    args = get_args_parser().parse_args(["--device", device.type, "--no_pretrained_backbone",
                                         "--num_queries", str(queries), *flags])
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    model.to(device).train()
    if mask_chunk_rows is not None:
        model.mask_chunk_rows = mask_chunk_rows
    samples, targets = batch(torch.Generator().manual_seed(0), size, device, args.masks)

    def step() -> None:
        losses = criterion(model(samples), targets)
        sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses).backward()

    seconds = None
    if device.type == "cuda":
        step()  # the first step also allocates the library workspaces
        model.zero_grad(set_to_none=True)
        peak = cuda_peak_bytes(step, device)
        if timed:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            step()
            torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        return peak, seconds
    model.zero_grad(set_to_none=True)
    if timed:  # unprofiled: the profiler's bookkeeping would be timed too
        start = time.process_time()
        step()
        seconds = time.process_time() - start
        model.zero_grad(set_to_none=True)
    return cpu_peak_bytes(step), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image_size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="default 800 1333 on CUDA, 256 320 on CPU")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--num_queries", type=int, default=300)
    parser.add_argument("--mask_heads", nargs="+", default=["chunked", "full"], choices=["chunked", "full"],
                        help="with --masks: the mask head as it runs, and computing every query at once")
    parser.add_argument("--time", action="store_true", help="also time one more step of each")
    opts = parser.parse_args()
    device = torch.device(opts.device)
    size = tuple(opts.image_size or ((800, 1333) if device.type == "cuda" else (256, 320)))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    print(f"Device: {where}\nStart: {load()}; batch 2 of {size[0]}x{size[1]}, ResNet-50, "
          f"{opts.num_queries} queries", flush=True)
    for name in opts.configs:
        flags = CONFIGS[name]
        variants = [("", None)]
        if "--masks" in flags:
            variants = [(head, 0 if head == "full" else None) for head in opts.mask_heads]
        for head, chunk in variants:
            label = f"{name} ({head} mask head)" if head else name
            peak, seconds = measure(flags, size, device, opts.num_queries, chunk, opts.time)
            timing = "" if seconds is None else f"  step {seconds:6.2f} s"
            print(f"  {label:32s} peak {peak / GIB:7.3f} GiB{timing}  [{load()}]", flush=True)
    for streams in (1, 2):
        est = mask_head_estimate(size, 2, streams, opts.num_queries)
        full = mask_head_estimate((800, 1333), 2, streams, 300)
        print(f"Estimate, mask head maps stored by the full computation, {streams} stream(s): "
              f"{est / GIB:.2f} GiB here, {full / GIB:.1f} GiB at 800x1333 with 300 queries")
    print(f"End: {load()}")


if __name__ == "__main__":
    main()
