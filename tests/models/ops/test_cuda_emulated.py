"""The op's CUDA kernels, run on the CPU by the emulator of models/ops/emulation, against float64.

The emulated module compiles the kernel and launch source that nvcc compiles, so these tests check
the kernels' indexing, launch sizing, warp sums and dtype handling on machines without a GPU. The
reference is the pure-PyTorch path in float64 on the inputs as the kernels see them (value and
grad_output rounded to the value dtype, locations and weights in their coordinate dtype).
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from models.ops import emulation
from models.ops.functions.ms_deform_attn_func import _prepare_inputs, ms_deform_attn_core_pytorch

pytestmark = pytest.mark.cuda_emulated

# The dtype the CUDA kernels take sampling locations and attention weights in, per value dtype.
COORD_DTYPE = {
    torch.float64: torch.float64,
    torch.float32: torch.float32,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}
DTYPES = list(COORD_DTYPE)
# (rtol, atol relative to the largest reference magnitude) for tensors in the value dtype; the
# float32 coordinate gradients are held to the float32 row.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 1e-4),
    torch.bfloat16: (1.6e-2, 1e-3),
}

# (spatial_shapes, n, n_queries, n_heads, head_dim, n_points): the op tests' cases, head_dim 257
# (nine channels per lane, so two register chunks of the forward) and enough threads for many
# blocks with a partial last block and a partial last warp.
CASES = {
    "one-level": ([(4, 5)], 2, 3, 2, 8, 2),
    "non-square-levels": ([(6, 3), (2, 5), (1, 2)], 2, 3, 2, 4, 2),
    "h-or-w-is-1": ([(1, 7), (5, 1), (1, 1)], 1, 4, 2, 3, 2),
    "1-point-1-head": ([(3, 4), (2, 2)], 2, 3, 1, 8, 1),
    "8-points-8-heads": ([(3, 3)], 1, 2, 8, 1, 8),
    "head-dim-1": ([(3, 2), (2, 1)], 2, 2, 3, 1, 3),
    "head-dim-32": ([(3, 3), (2, 2)], 1, 2, 2, 32, 2),
    "head-dim-33": ([(3, 3), (2, 2)], 1, 2, 2, 33, 2),
    "head-dim-64": ([(2, 3)], 1, 2, 1, 64, 2),
    "head-dim-257": ([(3, 4), (2, 2)], 1, 2, 2, 257, 2),
    "batch-3": ([(3, 4), (2, 2)], 3, 2, 2, 4, 2),
    "empty-query-set": ([(3, 4), (2, 2)], 2, 0, 2, 4, 2),
    "many-blocks": ([(7, 9), (3, 5)], 2, 150, 3, 16, 3),
}


@pytest.fixture(scope="module")
def emulated():
    return emulation.load()


def _reference(value, shapes, loc, weights, grad_out):
    """Output and the gradients of value, locations and weights, all float64."""
    leaves = [t.detach().double().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn_core_pytorch(leaves[0], shapes, leaves[1], leaves[2])
    if not out.requires_grad:  # no queries: an output of zeros, cut from the inputs
        return out, *(torch.zeros_like(t) for t in leaves)
    out.backward(grad_out.double())
    return out.detach(), *(t.grad for t in leaves)


def _assert_close(got, want, dtype, name):
    rtol, atol = TOLERANCES[dtype]
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


def _run_and_check(emulated, dtype, value, shapes, start, loc, weights):
    value = value.to(dtype)
    loc = loc.to(COORD_DTYPE[dtype])
    weights = weights.to(COORD_DTYPE[dtype])
    out = emulated.ms_deform_attn_forward(value, shapes, start, loc, weights, 64)
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    grads = emulated.ms_deform_attn_backward(value, shapes, start, loc, weights, grad_out, 64)

    expected = _reference(value, shapes, loc, weights, grad_out)
    assert out.dtype == dtype and out.shape == expected[0].shape
    assert [g.dtype for g in grads] == [dtype, COORD_DTYPE[dtype], COORD_DTYPE[dtype]]
    _assert_close(out, expected[0], dtype, "output")
    _assert_close(grads[0], expected[1], dtype, "grad_value")
    coord_tol = torch.float64 if dtype == torch.float64 else torch.float32
    _assert_close(grads[1], expected[2], coord_tol, "grad_sampling_loc")
    _assert_close(grads[2], expected[3], coord_tol, "grad_attn_weight")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_gradients_match_float64(case, dtype, emulated, inputs):
    shapes_list, n, n_queries, n_heads, head_dim, n_points = CASES[case]
    value, shapes, start, loc, weights = inputs(shapes_list, n, n_queries, n_heads, head_dim, n_points)
    _run_and_check(emulated, dtype, value, shapes, start, loc, weights)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_locations_on_borders_and_outside(dtype, emulated, inputs):
    """Exactly 0 and 1, pixel centres, the half pixel beyond each edge, and far outside the map."""
    value, shapes, start, _, _ = inputs([(3, 4), (1, 2)], n=1, n_heads=1, head_dim=5)
    coords = torch.tensor([0.0, 1.0, 0.125, 0.375, 0.875, -0.125, 1.125, 0.5, -1.0, 2.0], dtype=torch.float64)
    xs, ys = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten()], -1)  # (100, 2)
    loc = grid[None, :, None, None, None, :].expand(1, -1, 1, 2, 1, 2).contiguous()
    weights = torch.full((1, grid.shape[0], 1, 2, 1), 0.5, dtype=torch.float64)
    _run_and_check(emulated, dtype, value, shapes, start, loc, weights)


def test_many_blocks_case_has_a_partial_last_block_and_warp(emulated):
    """The launch the many-blocks case gets: what the real launch code computes for it."""
    shapes_list, n, n_queries, n_heads, head_dim, _ = CASES["many-blocks"]
    group, num_threads, blocks, per_block = emulated.launch_sizes(head_dim, n * n_queries * n_heads)
    assert (group, per_block) == (4, 256)
    assert num_threads == n * n_queries * n_heads * group
    assert blocks == -(-num_threads // per_block) and blocks >= 10
    assert num_threads % per_block != 0 and num_threads % 32 != 0


def test_bf16_values_with_float32_locations_lose_only_the_value_rounding(emulated, inputs):
    """Under bf16 autocast the front hands the CUDA kernels float32 locations and weights.

    At W = 167 a bf16 location is off by up to a third of a pixel; the output must instead be as
    close to float64 as rounding the values (and the output) to bf16 allows.
    """
    value, shapes, start, loc, weights = inputs(
        [(3, 167)], n=1, n_queries=64, n_heads=2, head_dim=8, n_points=4, loc_low=0.0, loc_high=1.0
    )
    with FakeTensorMode():
        fake = [torch.empty(t.shape, dtype=t.dtype, device="cuda") for t in (value, shapes, start, loc)]
        fake.append(torch.empty(weights.shape, dtype=weights.dtype, device="cuda"))
        fake[0] = fake[0].to(torch.bfloat16)
        prepared = _prepare_inputs(*fake)
        prepared_dtypes = [t.dtype for t in prepared]
    assert prepared_dtypes[0] == torch.bfloat16

    v16 = value.to(torch.bfloat16)
    out = emulated.ms_deform_attn_forward(
        v16, shapes, start, loc.to(prepared_dtypes[3]), weights.to(prepared_dtypes[4]), 64
    )
    exact = ms_deform_attn_core_pytorch(value, shapes, loc, weights)
    best = ms_deform_attn_core_pytorch(v16.double(), shapes, loc, weights).to(torch.bfloat16).double()
    rounded_loc = ms_deform_attn_core_pytorch(v16.double(), shapes, loc.bfloat16().double(), weights)

    def rel_error(t):
        return float((t.double() - exact).norm() / exact.norm())

    # The set-up must tell the two apart: rounding the locations costs far more than the values.
    assert rel_error(rounded_loc) > 10 * rel_error(best)
    assert rel_error(out) <= 1.5 * rel_error(best)


def test_emulated_shuffles_follow_cuda_semantics(emulated):
    lanes = torch.arange(64)
    base = 1000 + lanes  # what thread t holds before the shuffle
    segment = lanes - lanes % 8
    expected = {
        ("idx", 3, 32): 1000 + (lanes - lanes % 32) + 3,
        ("idx", 11, 8): 1000 + segment + 3,
        ("up", 2, 8): torch.where(lanes % 8 >= 2, base - 2, base),
        ("down", 3, 8): torch.where(lanes % 8 < 5, base + 3, base),
        ("xor", 4, 8): 1000 + (lanes ^ 4),
        ("xor", 16, 32): 1000 + (lanes ^ 16),
        # A partner in a later segment is out of reach: the lane keeps its own value.
        ("xor", 8, 8): torch.where(lanes % 16 < 8, base, 1000 + (lanes ^ 8)),
    }
    for (mode, arg, width), want in expected.items():
        got = emulated.run_shuffle(mode, 64, arg, width, -1)
        torch.testing.assert_close(got, want, msg=lambda m, k=(mode, arg, width): f"{k}: {m}")


def test_emulated_ballot_and_shared_memory(emulated):
    x = torch.randn(64)
    ballots = emulated.run_ballot(x)
    for warp in range(2):
        bits = sum(1 << lane for lane in range(32) if x[32 * warp + lane] > 0)
        assert ballots[32 * warp : 32 * warp + 32].tolist() == [bits] * 32
    y = torch.randn(3 * 128)
    torch.testing.assert_close(emulated.run_block_sum(y, 128), y.view(3, 128).sum(1), rtol=1e-5, atol=1e-5)


def test_emulator_reports_a_lane_that_skips_a_shuffle(emulated):
    with pytest.raises(RuntimeError, match=r"warp 0: lane 5 ended without joining the __shfl_xor_sync"):
        emulated.run_shuffle("xor", 64, 1, 32, 5)


def test_emulator_reports_out_of_bounds_writes(emulated):
    torch.testing.assert_close(emulated.run_shifted_write(40, 0), torch.arange(40, dtype=torch.float32))
    with pytest.raises(RuntimeError, match=r"thread \(39, 0, 0\): out-of-bounds access to out\[40\]"):
        emulated.run_shifted_write(40, 1)
    with pytest.raises(RuntimeError, match=r"thread \(0, 0, 0\): out-of-bounds access to out\[-1\]"):
        emulated.run_shifted_write(40, -1)


def test_emulator_reports_out_of_bounds_reads(emulated):
    x = torch.arange(40, dtype=torch.float32)
    torch.testing.assert_close(emulated.run_shifted_read(x, 0), x)
    with pytest.raises(RuntimeError, match=r"thread \(39, 0, 0\): out-of-bounds read of x\[40\]"):
        emulated.run_shifted_read(x, 1)
    with pytest.raises(RuntimeError, match=r"thread \(0, 0, 0\): out-of-bounds read of x\[-1\]"):
        emulated.run_shifted_read(x, -1)


def test_pytorch_path_takes_half_values_with_float32_locations(monkeypatch, inputs):
    """What the op gets on a GPU without compiled kernels under bf16 autocast."""
    monkeypatch.setenv("MSDA_BACKEND", "pytorch")
    value, shapes, start, loc, weights = inputs([(4, 3), (2, 2)], dtype=torch.float32)
    leaves = [value.bfloat16().requires_grad_(), loc.requires_grad_(), weights.requires_grad_()]
    out = torch.ops.msda.ms_deform_attn(leaves[0], shapes, start, leaves[1], leaves[2], 64)
    assert out.dtype == torch.bfloat16
    expected = ms_deform_attn_core_pytorch(leaves[0].detach().float(), shapes, loc.detach(), weights.detach())
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)
    out.float().sum().backward()
    assert [t.grad.dtype for t in leaves] == [torch.bfloat16, torch.float32, torch.float32]
