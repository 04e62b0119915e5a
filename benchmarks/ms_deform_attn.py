"""Speed of multi-scale deformable attention per backend, at the shapes of Deformable DETR R50.

Batch 2 at 800x1333: levels 100x167, 50x84, 25x42, 13x21 (S = 22,223), 8 heads x 32 channels,
4 points. Encoder: every token is a query (22,223); decoder: 300 queries. Locations are realistic:
a reference grid (encoder: each token's pixel centre; decoder: random points) plus offsets of a
few pixels. For each backend the forward and the forward+backward times are printed with their
ratio to the pure-PyTorch path measured in the same run; on a GPU also per dtype and the fraction
of the memory-bandwidth floor (bytes the op must move / 3.35 TB/s, H100 SXM HBM3).

    python benchmarks/ms_deform_attn.py                       # CPU, 2 threads, float32
    python benchmarks/ms_deform_attn.py --device cuda --dtypes float32 bfloat16 float16
"""

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models.ops.functions import extension, ms_deform_attn  # noqa: E402

LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]
N, N_HEADS, HEAD_DIM, N_POINTS = 2, 8, 32, 4
PEAK_BANDWIDTH = 3.35e12  # bytes/s
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def make_inputs(kind: str, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor(LEVELS, dtype=torch.long)
    sizes = shapes.prod(1)
    start = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    n_levels = len(LEVELS)
    if kind == "encoder":  # every token, at its pixel centre in its own level
        refs = []
        for h, w in LEVELS:
            ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            refs.append(torch.stack([xs.flatten() / w, ys.flatten() / h], -1))
        ref = torch.cat(refs)[None].expand(N, -1, -1)  # (N, Lq, 2)
    else:
        ref = torch.rand(N, 300, 2, generator=g)
    n_queries = ref.shape[1]
    # Offsets of a few pixels of each level, as a trained layer produces.
    offsets = torch.randn(N, n_queries, N_HEADS, n_levels, N_POINTS, 2, generator=g) * 2.0
    wh = shapes.flip(-1).float()
    loc = ref[:, :, None, None, None, :] + offsets / wh[None, None, None, :, None, :]
    weights = torch.rand(N, n_queries, N_HEADS, n_levels * N_POINTS, generator=g).softmax(-1)
    weights = weights.view(N, n_queries, N_HEADS, n_levels, N_POINTS)
    value = torch.randn(N, int(sizes.sum()), N_HEADS, HEAD_DIM, generator=g)
    to = {"device": device, "dtype": dtype}
    return value.to(**to), shapes.to(device), start.to(device), loc.to(**to), weights.to(**to)


def bytes_moved(value, loc, weights, backward: bool) -> int:
    """The least the op must read and write: every input once, every output once.

    The forward reads value, locations, weights and writes the output; the backward then reads
    them and grad_output again and writes one gradient per input.
    """
    out = value.shape[0] * loc.shape[1] * value.shape[2] * value.shape[3] * value.element_size()
    inputs = sum(t.numel() * t.element_size() for t in (value, loc, weights))
    forward = inputs + out
    return forward + (2 * inputs + out if backward else 0)


def timed(fn, device: str, reps: int) -> float:
    fn()  # warm-up (and, for the compiled path, the extension load)
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(kind: str, device: str, dtype: torch.dtype, backends: list[str], reps: int) -> None:
    value, shapes, start, loc, weights = make_inputs(kind, device, dtype)
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    grad = torch.randn(N, loc.shape[1], N_HEADS * HEAD_DIM, device=device, dtype=dtype)

    def forward():
        with torch.no_grad():
            ms_deform_attn(value, shapes, start, loc, weights)

    def forward_backward():
        for t in leaves:
            t.grad = None
        ms_deform_attn(leaves[0], shapes, start, leaves[1], leaves[2]).backward(grad)

    results = {}
    for backend in backends:
        os.environ["MSDA_BACKEND"] = backend
        results[backend] = (timed(forward, device, reps), timed(forward_backward, device, reps))
    base_f, base_fb = results["pytorch"]
    label = f"{kind} ({loc.shape[1]} queries), {device}, {str(dtype).split('.')[-1]}"
    print(f"\n{label}")
    print(f"  {'backend':<9} {'forward ms':>11} {'ratio':>6} {'fwd+bwd ms':>11} {'ratio':>6}", end="")
    print(f" {'fwd % of BW floor':>18} {'fwd+bwd %':>10}" if device == "cuda" else "")
    for backend, (f, fb) in results.items():
        name = "compiled" if backend == "cpp" else backend
        line = f"  {name:<9} {f * 1e3:>11.2f} {base_f / f:>5.2f}x {fb * 1e3:>11.2f} {base_fb / fb:>5.2f}x"
        if device == "cuda":
            floor_f = bytes_moved(value, loc, weights, False) / PEAK_BANDWIDTH
            floor_fb = bytes_moved(value, loc, weights, True) / PEAK_BANDWIDTH
            line += f" {100 * floor_f / f:>17.1f}% {100 * floor_fb / fb:>9.1f}%"
        print(line)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    text = (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)"
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=list(DTYPES),
        help="default: float32 on CPU; float32, bfloat16, float16 on CUDA",
    )
    parser.add_argument("--shapes", nargs="+", default=["encoder", "decoder"], choices=["encoder", "decoder"])
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (default 2, the CI machine)"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"machine: {machine()}")
    for device in devices:
        backends = ["pytorch"] + (["cpp"] if device in extension.compiled_device_types() else [])
        if len(backends) == 1:
            print(f"\n{device}: no compiled kernels (build: `sh models/ops/make.sh`); pure PyTorch only")
        dtypes = args.dtypes or (["float32"] if device == "cpu" else ["float32", "bfloat16", "float16"])
        for kind in args.shapes:
            for name in dtypes:
                run_case(kind, device, DTYPES[name], backends, args.reps)


if __name__ == "__main__":
    main()
