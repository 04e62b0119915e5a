"""Everything to run on a GPU the first time, in one command (about 8 minutes on one H200).

    sh tools/gpu_check.sh                       # = python tools/gpu_check.py
    python tools/gpu_check.py --only full_size memcheck --json /tmp/figures.json

One line per check, then a summary; the figures go to a JSON file ($OUT/gpu_check.json when OUT
is set, else exps/gpu_check/gpu_check.json). Each check runs in its own process with a time
limit, so a crash or a hang stops that check only; checks that would start after ``--budget``
seconds are skipped. Without a visible CUDA GPU every check is skipped, saying so (a dry run),
and the exit status is 0; otherwise it is 1 when any check failed.

Checks, in order:
  build          sh models/ops/make.sh: the extension, with CUDA kernels for the visible GPU
  selftest       python models/ops/test.py: compiled vs PyTorch path, head_dim 8 and 32
  pytest_ops     pytest tests/models/ops, where the compiled-CUDA cases now run
  half_precision float16 and bfloat16 forward and backward vs the float64 reference, head_dim 32
  full_size      Deformable DETR's encoder shape (batch 2, 22,223 queries, 8 heads x 32, 4 points)
                 forward and backward, compiled vs the pure-PyTorch path, float32
  no_host_sync   the detector's eval forward (base, two-stage, BatchFormerV2) under
                 torch.cuda.set_sync_debug_mode("error"): no host synchronisation
  memcheck       compute-sanitizer --tool memcheck on a small case (skipped without the tool)
  benchmark      benchmarks/ms_deform_attn.py on CUDA: float32, bfloat16, float16
  torchrun_nccl  torchrun, one process, NCCL: a short epoch on the toy set, then --eval of its
                 checkpoint; base and --bf 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_TAG = "GPU_CHECK_RESULT "
# The op checks' device; the tests set GPU_CHECK_DEVICE=cpu to run the checking code itself.
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
# Deformable DETR R50 at 800x1333: the encoder's levels (S = 22,223 positions, all of them queries).
FULL_SIZE_LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]
TINY_MODEL = (
    "--backbone resnet18 --no_pretrained_backbone --hidden_dim 64 --dim_feedforward 128 --nheads 8 "
    "--enc_layers 2 --dec_layers 2 --num_feature_levels 3 --num_queries 20 --enc_n_points 2 "
    "--dec_n_points 2"
).split()


def _result(status: str, detail: str, **figures) -> dict:
    return {"status": status, "detail": detail, "figures": figures}


def _rel_err(got, want) -> float:
    """max |got - want| / max |want|: an error relative to the tensor's scale."""
    want = want.double()
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30))


# ----------------------------------------------------------------------------------------------
# Checks that run as Python code, each in a child process (``--one NAME``).


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _op_inputs(levels, n, n_queries, heads, head_dim, points, dtype, loc_range=(0.0, 1.0)):
    """Random op inputs on DEVICE: value, spatial_shapes, level_start_index, locations, weights."""
    import torch

    from models.ops.functions.level_shapes import level_tensors

    shapes, start = level_tensors(levels, DEVICE)
    s = sum(h * w for h, w in levels)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    kw = {"device": DEVICE, "generator": g}
    value = torch.randn(n, s, heads, head_dim, **kw).to(dtype)
    low, high = loc_range
    loc = (torch.rand(n, n_queries, heads, len(levels), points, 2, **kw) * (high - low) + low).to(dtype)
    weights = torch.rand(n, n_queries, heads, len(levels) * points, **kw).softmax(-1)
    weights = weights.view(n, n_queries, heads, len(levels), points).to(dtype)
    return value, shapes, start, loc, weights


def _forward_backward(fn, value, loc, weights, grad):
    """fn's output and the gradients of <output, grad> in value, locations and weights."""
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, weights)]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def check_half_precision() -> dict:
    """float16 / bfloat16 against the float64 reference computed from the same (rounded) inputs."""
    import torch

    from models.ops.functions import ms_deform_attn, ms_deform_attn_core_pytorch

    os.environ["MSDA_BACKEND"] = "cpp"
    levels = [(40, 60), (20, 30), (10, 15), (5, 8)]
    # Bounds: the output rounding of the dtype (eps/2 relative) plus float32 accumulation, with room.
    limits = {torch.float16: (2e-3, 5e-3), torch.bfloat16: (1.6e-2, 4e-2)}
    figures, failed = {}, []
    for dtype, (out_limit, grad_limit) in limits.items():
        value, shapes, start, loc, weights = _op_inputs(levels, 2, 300, 8, 32, 4, dtype, (-0.05, 1.05))
        grad = torch.randn(2, 300, 8 * 32, device=DEVICE).to(dtype)
        got = _forward_backward(
            lambda v, sl, aw, s=shapes, i=start: ms_deform_attn(v, s, i, sl, aw), value, loc, weights, grad
        )
        want = _forward_backward(
            lambda v, sl, aw, s=shapes: ms_deform_attn_core_pytorch(v, s, sl, aw),
            value.double(), loc.double(), weights.double(), grad.double(),
        )
        name = str(dtype).split(".")[-1]
        for what, g, w in zip(("output", "grad_value", "grad_loc", "grad_attn"), got, want, strict=True):
            err = _rel_err(g, w)
            figures[f"{name}_{what}_rel_err"] = err
            if not err <= (out_limit if what == "output" else grad_limit):
                failed.append(f"{name} {what} {err:.1e}")
    detail = ", ".join(f"{k.removesuffix('_rel_err')} {v:.1e}" for k, v in figures.items() if "output" in k)
    return _result("fail" if failed else "pass", "; ".join(failed) or f"relative errors: {detail}", **figures)


def check_full_size() -> dict:
    """The R50 encoder shape, compiled CUDA kernels vs the pure-PyTorch path on the same GPU."""
    import torch

    from models.ops.functions import ms_deform_attn

    n_queries = sum(h * w for h, w in FULL_SIZE_LEVELS)  # 22,223: every position is a query
    value, shapes, start, loc, weights = _op_inputs(FULL_SIZE_LEVELS, 2, n_queries, 8, 32, 4, torch.float32)
    grad = torch.randn(2, n_queries, 8 * 32, device=DEVICE)
    results, figures = {}, {}
    for backend in ("cpp", "pytorch"):
        os.environ["MSDA_BACKEND"] = backend
        fn = lambda v, sl, aw: ms_deform_attn(v, shapes, start, sl, aw)
        _forward_backward(fn, value, loc, weights, grad)  # warm-up
        _sync()
        t0 = time.perf_counter()
        results[backend] = _forward_backward(fn, value, loc, weights, grad)
        _sync()
        figures[f"{backend}_fwd_bwd_ms"] = 1e3 * (time.perf_counter() - t0)
    failed = []
    limits = {"output": 1e-5, "grad_value": 1e-5, "grad_loc": 1e-3, "grad_attn": 1e-5}
    for (what, limit), g, w in zip(limits.items(), results["cpp"], results["pytorch"], strict=True):
        err = _rel_err(g, w)
        figures[f"{what}_rel_err"] = err
        if not err <= limit:
            failed.append(f"{what} {err:.1e} > {limit:.0e}")
    detail = (
        f"output {figures['output_rel_err']:.1e}, grad_loc {figures['grad_loc_rel_err']:.1e}; "
        f"fwd+bwd {figures['cpp_fwd_bwd_ms']:.1f} ms compiled vs {figures['pytorch_fwd_bwd_ms']:.1f} ms"
    )
    return _result("fail" if failed else "pass", "; ".join(failed) or detail, **figures)


def check_no_host_sync() -> dict:
    """The eval forward raises on any host synchronisation (torch.cuda.set_sync_debug_mode)."""
    import torch

    from models import build_model
    from util.args import get_args_parser

    os.environ["MSDA_BACKEND"] = "cpp"
    configs = {
        "base": [], "two_stage": ["--with_box_refine", "--two_stage"], "bf": ["--bf", "1", "--eval_bf"]
    }
    failed, figures = [], {}
    for name, flags in configs.items():
        args = get_args_parser().parse_args([*TINY_MODEL, "--dataset_file", "toy", *flags])
        model = build_model(args)[0].cuda().eval()
        images = [torch.randn(3, 320, 288, device="cuda"), torch.randn(3, 256, 320, device="cuda")]
        with torch.no_grad():
            model(images)  # warm-up: cuDNN's algorithm search and the extension load may synchronise
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                model(images)
                figures[name] = "no sync"
            except RuntimeError as err:
                figures[name] = str(err).splitlines()[0]
                failed.append(f"{name}: {figures[name]}")
            finally:
                torch.cuda.set_sync_debug_mode(0)
    detail = "; ".join(failed) or "base, two-stage, bf: no sync"
    return _result("fail" if failed else "pass", detail, **figures)


def memcheck_case() -> dict:
    """A small forward and backward for compute-sanitizer: odd sizes, locations off the maps."""
    import torch

    from models.ops.functions import ms_deform_attn

    os.environ["MSDA_BACKEND"] = "cpp"
    for dtype, head_dim in ((torch.float32, 32), (torch.float32, 33), (torch.float16, 8)):
        levels = [(7, 5), (3, 4), (1, 2)]
        value, shapes, start, loc, weights = _op_inputs(levels, 3, 37, 3, head_dim, 3, dtype, (-0.2, 1.2))
        grad = torch.randn(3, 37, 3 * head_dim, device=DEVICE).to(dtype)
        fn = lambda v, sl, aw, s=shapes, i=start: ms_deform_attn(v, s, i, sl, aw)
        _forward_backward(fn, value, loc, weights, grad)
    _sync()
    return _result("pass", "ran")


PYTHON_CHECKS: dict[str, Callable[[], dict]] = {
    "half_precision": check_half_precision,
    "full_size": check_full_size,
    "no_host_sync": check_no_host_sync,
    "memcheck_case": memcheck_case,
}


# ----------------------------------------------------------------------------------------------
# The driver.


def _run(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """Runs argv in the repository root; (exit status, output, seconds). 124 on timeout."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=timeout,
        )
        code, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        code = 124
    return code, out, time.perf_counter() - t0


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _python_check(name: str, timeout: float) -> dict:
    code, out, _ = _run([sys.executable, os.path.abspath(__file__), "--one", name], timeout)
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    why = "timed out" if code == 124 else f"exit status {code}"
    return _result("fail", f"{why}: {_tail(out)}")


def _command_check(argv: list[str], timeout: float, ok_text: str | None = None) -> dict:
    code, out, _ = _run(argv, timeout)
    passed = code == 0 and (ok_text is None or ok_text in out)
    figures = {"exit_status": code, "output_tail": out.strip().splitlines()[-40:]}
    return _result("pass" if passed else "fail", _tail(out, 2), **figures)


def check_build(timeout: float) -> dict:
    result = _command_check(["sh", "models/ops/make.sh"], timeout, ok_text="CPU + CUDA kernels")
    if result["status"] == "fail" and result["figures"]["exit_status"] == 0:
        result["detail"] = "built without CUDA kernels: " + result["detail"]
    return result


def check_selftest(timeout: float) -> dict:
    result = _command_check([sys.executable, "models/ops/test.py"], timeout, ok_text="all checks passed")
    lines = result["figures"]["output_tail"]
    cuda = [line for line in lines if "_cuda_" in line]
    result["figures"]["cuda_checks"] = len(cuda)
    if result["status"] == "pass" and not cuda:
        result.update(status="fail", detail="no CUDA checks ran")
    return result


def check_pytest_ops(timeout: float) -> dict:
    result = _command_check([sys.executable, "-m", "pytest", "-q", "-rs", "tests/models/ops"], timeout)
    skipped_cuda = [line for line in result["figures"]["output_tail"] if "SKIPPED" in line and "GPU" in line]
    if result["status"] == "pass" and skipped_cuda:
        result.update(status="fail", detail=f"CUDA cases were skipped: {skipped_cuda[0]}")
    return result


def check_memcheck(timeout: float) -> dict:
    from models.ops import build_config

    home = build_config.find_cuda_home()
    tool = shutil.which("compute-sanitizer") or (
        home and os.path.join(home, "bin", "compute-sanitizer")
    )
    if not tool or not os.path.isfile(tool):
        return _result("skip", "compute-sanitizer not found (PATH, CUDA_HOME/bin)")
    argv = [tool, "--tool", "memcheck", "--error-exitcode", "3", sys.executable, os.path.abspath(__file__),
            "--one", "memcheck_case"]
    # One cudaMalloc per tensor: inside the caching allocator's pooled blocks an access past a
    # tensor's end would land in valid memory, where memcheck cannot see it.
    code, out, _ = _run(argv, timeout, env=dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1"))
    summary = [line for line in out.splitlines() if "ERROR SUMMARY" in line]
    status = "pass" if code == 0 and RESULT_TAG in out else "fail"
    return _result(status, summary[-1].strip() if summary else _tail(out), exit_status=code,
                   output_tail=out.strip().splitlines()[-40:])


def check_benchmark(timeout: float) -> dict:
    argv = [sys.executable, "benchmarks/ms_deform_attn.py", "--device", "cuda",
            "--dtypes", "float32", "bfloat16", "float16"]
    result = _command_check(argv, timeout)
    lines = [line for line in result["figures"]["output_tail"] if line.strip().startswith("compiled")]
    result["detail"] = f"{len(lines)} compiled-kernel timings (see the JSON)" if lines else result["detail"]
    return result


def torchrun_steps(out_root: str) -> list[tuple[str, str, list[str]]]:
    """(config, step, main.py arguments) of the smoke run: a short epoch, then --eval of its checkpoint."""
    common = [*TINY_MODEL, "--dataset_file", "toy", "--device", "cuda", "--num_workers", "2",
              "--batch_size", "4", "--max_eval_iters", "10", "--print_freq", "10"]
    steps = []
    for name, flags in (("base", []), ("bf", ["--bf", "1"])):
        out_dir = os.path.join(out_root, f"torchrun_{name}")
        train = ["--epochs", "1", "--max_iters_per_epoch", "30", "--output_dir", out_dir]
        checkpoint = os.path.join(out_dir, "checkpoint.pth")
        evaluate = ["--eval", "--resume", checkpoint, "--output_dir", out_dir + "_eval"]
        steps += [(name, "train", [*common, *flags, *train]), (name, "eval", [*common, *flags, *evaluate])]
    return steps


def check_torchrun_nccl(timeout: float) -> dict:
    """Train briefly and evaluate the checkpoint, through torchrun with one process and NCCL."""
    deadline = time.perf_counter() + timeout
    out_root = os.path.join(ROOT, "exps", "gpu_check")
    shutil.rmtree(out_root, ignore_errors=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    figures, failed = {}, []
    for name, step, main_args in torchrun_steps(out_root):
        if any(f.startswith(f"{name} ") for f in failed):
            continue  # its training failed: nothing to evaluate
        code, out, secs = _run([*launcher, "main.py", *main_args], max(1.0, deadline - time.perf_counter()))
        figures[f"{name}_{step}_s"] = round(secs, 1)
        if code != 0 or "nccl" not in out:
            failed.append(f"{name} {step}: exit {code}, {_tail(out, 2)}")
            continue
        stats_path = os.path.join(main_args[main_args.index("--output_dir") + 1], "eval_stats.json")
        if step == "eval" and os.path.isfile(stats_path):
            with open(stats_path) as f:
                figures[f"{name}_eval_stats"] = json.load(f)
    detail = ", ".join(f"{k} {v} s" for k, v in figures.items() if k.endswith("_s"))
    return _result("fail" if failed else "pass", "; ".join(failed) or detail, **figures)


# (name, function taking the time limit, the limit in seconds)
CHECKS: list[tuple[str, Callable[[float], dict], float]] = [
    ("build", check_build, 300),
    ("selftest", check_selftest, 120),
    ("pytest_ops", check_pytest_ops, 300),
    ("half_precision", lambda t: _python_check("half_precision", t), 120),
    ("full_size", lambda t: _python_check("full_size", t), 120),
    ("no_host_sync", lambda t: _python_check("no_host_sync", t), 120),
    ("memcheck", check_memcheck, 240),
    ("benchmark", check_benchmark, 240),
    ("torchrun_nccl", check_torchrun_nccl, 300),
]


def gpu_present() -> tuple[bool, str]:
    """Whether a CUDA GPU is visible, and a description of it or of why not."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, f"no CUDA GPU visible (torch {torch.__version__}, CUDA build {torch.version.cuda})"
    return True, f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"


def default_json_path() -> str:
    out = os.environ.get("OUT")
    return os.path.join(out or os.path.join(ROOT, "exps", "gpu_check"), "gpu_check.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="where the figures go (default: $OUT/gpu_check.json, "
                        "else exps/gpu_check/gpu_check.json)")
    parser.add_argument("--budget", type=float, default=480,
                        help="seconds: checks that would start later are skipped (default 480)")
    parser.add_argument("--only", nargs="+", choices=[c[0] for c in CHECKS], help="run these checks only")
    parser.add_argument("--one", choices=list(PYTHON_CHECKS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    if args.one:
        print(RESULT_TAG + json.dumps(PYTHON_CHECKS[args.one]()), flush=True)
        return 0

    has_gpu, device = gpu_present()
    print(f"gpu_check: {device}", flush=True)
    if not has_gpu:
        print("gpu_check: DRY RUN: no GPU, so every check below is skipped", flush=True)
    start = time.perf_counter()
    report = {"device": device, "gpu": has_gpu, "checks": {}}
    for name, run, limit in CHECKS:
        if args.only and name not in args.only:
            continue
        elapsed = time.perf_counter() - start
        t0 = time.perf_counter()
        if not has_gpu:
            result = _result("skip", "skipped: no CUDA GPU visible")
        elif elapsed > args.budget:
            result = _result("skip", f"skipped: past the {args.budget:.0f} s budget")
        else:
            try:
                result = run(limit)
            except Exception as err:  # a broken check is a failed check, never a crashed run
                result = _result("fail", f"{type(err).__name__}: {err}")
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report["checks"][name] = result
        print(f"{name:<15} {result['status'].upper():<4} {result['seconds']:>6.1f} s  {result['detail']}",
              flush=True)

    counts = {s: sum(r["status"] == s for r in report["checks"].values()) for s in ("pass", "fail", "skip")}
    report["seconds"] = round(time.perf_counter() - start, 1)
    path = args.json or default_json_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(
        f"gpu_check: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
        f"in {report['seconds']:.0f} s{' (dry run: no GPU)' if not has_gpu else ''}; figures in {path}",
        flush=True,
    )
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
