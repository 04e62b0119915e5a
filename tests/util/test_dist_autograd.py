"""util.dist.all_gather_rows: a differentiable all-gather whose backward sums every rank's gradient.

Two gloo processes on the CPU. Rank k's loss reads every rank's rows, so the gradient that reaches
rank r's rows is the sum over k of rank k's gradient at r's slice; the reference below is that sum
written out by hand. The same check run with the common mistake (keep only the local gradient) must
fail, which shows that the check can tell the two apart.
"""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import util.dist as du

ROWS = (2, 3)  # rows per rank: different on purpose
COLS = 4


def _rows(rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(10 + rank)
    return torch.randn(ROWS[rank], COLS, generator=g, dtype=torch.float64)


def _weights(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s loss sum(w * y**2) + sum(v * y) over the gathered y (sum(ROWS), COLS)."""
    g = torch.Generator().manual_seed(100 + rank)
    shape = (sum(ROWS), COLS)
    return (torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64))


def _expected_grad(rank: int) -> torch.Tensor:
    """d(sum_k loss_k)/d(rows of ``rank``) = sum_k 2 w_k[s] x + v_k[s], s the rank's slice of y."""
    start = sum(ROWS[:rank])
    s = slice(start, start + ROWS[rank])
    x = _rows(rank)
    grad = torch.zeros_like(x)
    for k in range(len(ROWS)):
        w, v = _weights(k)
        grad += 2 * w[s] * x + v[s]
    return grad


def _local_only_backward(ctx, grad):
    """The common GatherLayer mistake: this rank's slice of its own gradient, nothing from the others."""
    rank = dist.get_rank(ctx.group)
    start = sum(ctx.counts[:rank])
    return grad[start: start + ctx.counts[rank]], None


def _gather_and_backward(rank: int) -> dict:
    x = _rows(rank).requires_grad_()
    y = du.all_gather_rows(x)
    w, v = _weights(rank)
    (w * y.pow(2) + v * y).sum().backward()
    return {"y": y.detach(), "grad": x.grad}


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=len(ROWS))
    try:
        right = _gather_and_backward(rank)
        du._AllGatherRows.backward = staticmethod(_local_only_backward)  # this process only
        wrong = _gather_and_backward(rank)
        torch.save({"right": right, "wrong": wrong}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    """Each rank's gathered rows and gradient, with the real backward ("right") and the mistake."""
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(os.path.join(d, "store"), d), nprocs=len(ROWS), join=True)
        return [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(len(ROWS))]


def test_forward_concatenates_and_backward_sums_every_rank(two_ranks):
    results = [r["right"] for r in two_ranks]
    everything = torch.cat([_rows(r) for r in range(len(ROWS))])
    for rank, got in enumerate(results):
        assert torch.equal(got["y"], everything)
        torch.testing.assert_close(got["grad"], _expected_grad(rank), rtol=1e-12, atol=1e-12)


def test_the_check_fails_for_a_backward_that_keeps_only_the_local_gradient(two_ranks):
    results = [r["wrong"] for r in two_ranks]
    assert not any(torch.allclose(got["grad"], _expected_grad(r)) for r, got in enumerate(results))


def test_one_process_is_the_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert du.all_gather_rows(x) is x
    assert du.max_over_ranks((5, 7)) == (5, 7)
