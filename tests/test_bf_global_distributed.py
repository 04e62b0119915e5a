"""--bf_scope global on two gloo processes equals one process over the concatenated batch, for each detector.

Rank r holds images 2r and 2r + 1 (of different sizes on the two ranks, so the common padding matters);
one process holds all four in one batch. Compared in float64 (the criterion's float32 aside), so that
only the order of sums differs:
- evaluation with --eval_bf: each rank's outputs and detections are the one-process rows of its images;
- a training step with dropout off, under DistributedDataParallel: the losses averaged over the ranks
  and the DDP-averaged gradients equal the one-process losses and gradients. This holds by
  construction: rank k's loss is the sum of its images' terms over num_boxes, the job's box count
  divided by the number of ranks N, so (1/N) sum_k loss_k is the one-process loss, and DDP's
  (1/N) sum_k grad(loss_k) its gradient, provided the gradient that reaches each rank's encoder
  state holds every rank's contribution (util.dist.all_gather_rows);
- the same step with a gather whose backward keeps only the local gradient gives other gradients.
"""
import gc
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import util.dist as du
from models import build_model
from util.args import get_args_parser, parse_args
from util.misc import nested_tensor_from_tensor_list

COMMON = ("--no_pretrained_backbone --backbone resnet18 --hidden_dim 32 --dim_feedforward 64 --enc_layers 2 "
          "--dec_layers 2 --num_queries 6 --nheads 4 --dataset_file toy --device cpu --dropout 0 "
          "--insert_idx 0 1 --bf_scope global --eval_bf").split()
DETECTORS = {
    "deformable_detr": ["--enc_n_points", "2", "--dec_n_points", "2", "--bf", "1"],
    "detr": ["--meta_arch", "detr", "--bf", "3"],
}
SIZES = [(48, 64), (56, 40), (64, 80), (40, 72)]  # rank 0: images 0, 1; rank 1: images 2, 3
WORLD = 2
PER_RANK = len(SIZES) // WORLD


def _build(flags: list[str]):
    torch.manual_seed(0)
    model, criterion, postprocessors = build_model(parse_args(get_args_parser(), [*COMMON, *flags]))
    for m in model.modules():  # dropout off, the BatchFormer's 0.5 included: the runs draw no masks
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    return model.double(), criterion, postprocessors["bbox"]


def _data(indices) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(7)
    images = [torch.randn(3, h, w, generator=g, dtype=torch.float64) for h, w in SIZES]
    targets = [{"labels": torch.tensor([1 + i % 3, 2]),
                "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.5, 0.3 + 0.05 * i, 0.4]]).double()}
               for i in range(len(SIZES))]
    return [images[i] for i in indices], [targets[i] for i in indices]


def _evaluate(model, postprocess, indices) -> dict:
    images, _ = _data(indices)
    with torch.no_grad():
        out = model.eval()(nested_tensor_from_tensor_list(images))
    sizes = torch.tensor([img.shape[-2:] for img in images])
    return {"logits": out["pred_logits"], "boxes": out["pred_boxes"], "detections": postprocess(out, sizes)}


def _train_step(model, criterion, indices) -> tuple[dict, dict]:
    """One forward and backward; the weighted losses (averaged over the ranks) and every gradient."""
    images, targets = _data(indices)
    model.zero_grad()
    out = model.train()(nested_tensor_from_tensor_list(images))
    losses = criterion(out, targets)
    weighted = {k: v * criterion.weight_dict[k] for k, v in losses.items() if k in criterion.weight_dict}
    sum(weighted.values()).backward()
    net = model.module if isinstance(model, DistributedDataParallel) else model
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in du.reduce_dict(weighted).items()}, grads


def _local_only_backward(ctx, grad):
    rank = dist.get_rank(ctx.group)
    start = sum(ctx.counts[:rank])
    return grad[start: start + ctx.counts[rank]], None


def _worker(rank: int, store: str, out: str, flags: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        model, criterion, postprocess = _build(flags)
        model.load_state_dict(torch.load(os.path.join(out, "weights.pt")))
        mine = list(range(rank * PER_RANK, (rank + 1) * PER_RANK))
        result = {"eval": _evaluate(model, postprocess, mine)}
        ddp = DistributedDataParallel(model)
        result["losses"], result["grads"] = _train_step(ddp, criterion, mine)
        du._AllGatherRows.backward = staticmethod(_local_only_backward)  # this process only
        _, result["grads_local_only"] = _train_step(ddp, criterion, mine)
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
        del ddp
    finally:
        gc.collect()  # the DDP wrapper's reference cycles go before its process group
        dist.destroy_process_group()


def _close(a, b, rtol: float = 1e-9, atol: float = 1e-11) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("detector", list(DETECTORS))
def test_two_processes_compute_what_one_process_computes_over_the_whole_batch(detector):
    torch.set_num_threads(1)
    model, criterion, postprocess = _build(DETECTORS[detector])
    everything = list(range(len(SIZES)))
    with tempfile.TemporaryDirectory() as d:
        torch.save(model.state_dict(), os.path.join(d, "weights.pt"))
        mp.spawn(_worker, args=(os.path.join(d, "store"), d, DETECTORS[detector]), nprocs=WORLD, join=True)
        ranks = [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(WORLD)]
    reference_eval = _evaluate(model, postprocess, everything)
    reference_losses, reference_grads = _train_step(model, criterion, everything)

    for rank, got in enumerate(ranks):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        _close(got["eval"]["logits"], reference_eval["logits"][rows])
        _close(got["eval"]["boxes"], reference_eval["boxes"][rows])
        for mine, ref in zip(got["eval"]["detections"], reference_eval["detections"][rows]):
            assert torch.equal(mine["labels"], ref["labels"])
            # PostProcess scores in float32
            torch.testing.assert_close(mine["scores"], ref["scores"], rtol=1e-6, atol=1e-8)
            torch.testing.assert_close(mine["boxes"], ref["boxes"], rtol=1e-6, atol=1e-6)
        assert got["losses"].keys() == reference_losses.keys()
        # The criterion computes in float32: losses and the gradients they seed agree to float32's precision
        # (relative to each gradient's scale: an element near zero keeps the absolute error of the largest).
        for k, v in reference_losses.items():
            _close(got["losses"][k], v, rtol=1e-6, atol=1e-8)
        assert got["grads"].keys() == reference_grads.keys()
        for name, grad in reference_grads.items():
            _close(got["grads"][name], grad, rtol=1e-5, atol=max(1e-9, 1e-6 * grad.abs().max().item()))

    # The gather's backward must sum every rank's contribution: keeping the local one changes the
    # gradients of the BatchFormer and of everything before it.
    wrong = ranks[0]["grads_local_only"]
    differ = [n for n, g in reference_grads.items() if not torch.allclose(wrong[n], g, rtol=1e-3, atol=1e-6)]
    assert any(n.startswith("transformer.bf.") for n in differ)
    assert any(n.startswith("backbone.") for n in differ)
    assert not any(n.startswith("class_embed") for n in differ)  # after the encoder: all ranks' heads agree
