"""Self-test of the compiled op: `python models/ops/test.py` (from anywhere) after `sh models/ops/make.sh`.

Compares the compiled kernels with the pure-PyTorch path in float64 and float32, forward and the
three gradients, and runs gradcheck, at head_dim 8 and 32 (Deformable DETR's: 8 heads x 32
channels, where the CUDA kernels give each query a group of 8 lanes); on CPU, and on CUDA when a
GPU and the CUDA kernels are there. One line per check; the exit status is non-zero if any fails.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from models.ops.functions import ms_deform_attn, ms_deform_attn_core_pytorch  # noqa: E402

SHAPES = [(6, 4), (3, 2), (2, 1)]
N, N_QUERIES, N_HEADS, N_POINTS = 2, 5, 2, 2
HEAD_DIMS = (8, 32)


def make_inputs(device: str, dtype: torch.dtype, head_dim: int):
    shapes = torch.tensor(SHAPES, dtype=torch.long, device=device)
    sizes = shapes.prod(1)
    start = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.rand(N, int(sizes.sum()), N_HEADS, head_dim, dtype=dtype, device=device) * 0.01
    loc = torch.rand(N, N_QUERIES, N_HEADS, len(SHAPES), N_POINTS, 2, dtype=dtype, device=device)
    weights = torch.rand(N, N_QUERIES, N_HEADS, len(SHAPES), N_POINTS, dtype=dtype, device=device) + 1e-5
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, shapes, start, loc, weights


def report(name: str, passed: bool, detail: str) -> bool:
    print(f"* {name}: {detail} {passed}")
    return passed


def _suffix(dtype: torch.dtype, device: str, head_dim: int) -> str:
    return f"{str(dtype).split('.')[-1]}_{device}_head_dim{head_dim}"


def check_forward(device: str, dtype: torch.dtype, tol: float, head_dim: int) -> bool:
    value, shapes, start, loc, weights = make_inputs(device, dtype, head_dim)
    compiled = ms_deform_attn(value, shapes, start, loc, weights, 2)
    expected = ms_deform_attn_core_pytorch(value, shapes, loc, weights)
    err = (compiled - expected).abs().max().item()
    rel = ((compiled - expected).abs() / expected.abs().clamp_min(1e-12)).max().item()
    name = f"check_forward_equal_with_pytorch_{_suffix(dtype, device, head_dim)}"
    return report(name, err < tol, f"max_abs_err {err:.2e} max_rel_err {rel:.2e}")


def check_backward(device: str, dtype: torch.dtype, tol: float, head_dim: int) -> bool:
    value, shapes, start, loc, weights = make_inputs(device, dtype, head_dim)
    grad_out = torch.rand(N, N_QUERIES, N_HEADS * head_dim, dtype=dtype, device=device)
    results = []
    for fn in (
        lambda v, sl, aw: ms_deform_attn(v, shapes, start, sl, aw, 2),
        lambda v, sl, aw: ms_deform_attn_core_pytorch(v, shapes, sl, aw),
    ):
        leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
        fn(*leaves).backward(grad_out)
        results.append([t.grad for t in leaves])
    ok = True
    for name, got, want in zip(("value", "sampling_loc", "attn_weight"), *results, strict=True):
        err = (got - want).abs().max().item()
        ok &= report(
            f"check_gradient_{name}_{_suffix(dtype, device, head_dim)}", err < tol, f"max_abs_err {err:.2e}"
        )
    return ok


def check_gradcheck(device: str, head_dim: int) -> bool:
    value, shapes, start, loc, weights = make_inputs(device, torch.float64, head_dim)
    leaves = [value, loc.clamp(0.02, 0.98), weights]
    leaves = [t.detach().requires_grad_() for t in leaves]
    passed = torch.autograd.gradcheck(
        lambda v, sl, aw: ms_deform_attn(v, shapes, start, sl, aw, 2),
        leaves,
        eps=1e-6,
        atol=1e-5,
        raise_exception=False,
    )
    name = f"check_gradcheck_{_suffix(torch.float64, device, head_dim)}"
    return report(name, passed, "value, sampling_loc, attn_weight")


def main() -> int:
    os.environ["MSDA_BACKEND"] = "cpp"  # test the compiled kernels; fail if they are missing
    try:
        import MultiScaleDeformableAttention as ext
    except ImportError as err:
        print(
            f"MultiScaleDeformableAttention is not importable ({err}); build it with `sh models/ops/make.sh`"
        )
        return 1
    devices = ["cpu"]
    if torch.cuda.is_available() and ext.compiled_with_cuda():
        devices.append("cuda")
    else:
        gpu, kernels = torch.cuda.is_available(), ext.compiled_with_cuda()
        print(f"CUDA checks skipped (GPU visible: {gpu}, CUDA kernels: {kernels})")
    torch.manual_seed(3)
    ok = True
    for device in devices:
        for head_dim in HEAD_DIMS:
            ok &= check_forward(device, torch.float64, 1e-12, head_dim)
            ok &= check_forward(device, torch.float32, 1e-6, head_dim)
            ok &= check_backward(device, torch.float64, 1e-12, head_dim)
            ok &= check_backward(device, torch.float32, 1e-5, head_dim)
            ok &= check_gradcheck(device, head_dim)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
