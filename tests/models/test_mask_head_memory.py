"""The mask head stores no per-query maps: forward in query chunks, backward recomputing only the queries
the loss reads. Losses, gradients and predictions equal those of the full computation (every query at
once, every activation stored), which is reimplemented here from the head's modules as the reference."""
import argparse

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from tests.models.test_segmentation import _targets
from tests.tiny_model import tiny_flags
from util.args import get_args_parser

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = tiny_flags("--dataset_file", "toy_panoptic", "--dim_feedforward", "32", "--dec_layers", "2",
                  "--num_feature_levels", "3", "--masks", "--dropout", "0")


def _build(*extra, queries=7):
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(
        TINY + ["--num_queries", str(queries), *extra])
    torch.manual_seed(0)
    return build_model(args)


def full_masks(model, features):
    """The head as it was computed before chunking: every query at once through the modules' forwards."""
    n = features.num_streams
    mask8 = features.mask.repeat(n, 1, 1)
    fpn = [features.fpn[stride].repeat(n, 1, 1, 1) for stride in (8, 4)]
    attn = model.bbox_attention(features.queries, features.memory, mask=mask8)
    return model.mask_head(attn, features.memory, mask8, fpn)


def _images():
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, 64, 80, generator=g), torch.rand(3, 56, 72, generator=g)]


def _step(model, criterion):
    model.train()
    model.zero_grad()
    torch.manual_seed(5)  # the BatchFormer's dropout draws the same masks in both runs
    losses = criterion(model(_images()), _targets())
    sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("flags", [[], ["--bf", "1"]], ids=["base", "bf"])
@pytest.mark.parametrize("chunk_rows", [1, 4, 64])
def test_losses_and_gradients_match_the_full_computation(monkeypatch, flags, chunk_rows):
    model, criterion, _ = _build(*flags)
    reference, ref_criterion, _ = _build(*flags)
    reference.load_state_dict(model.state_dict())
    model.mask_chunk_rows = chunk_rows
    monkeypatch.setattr(reference, "predict_masks", lambda features: full_masks(reference, features))
    losses, grads = _step(model, criterion)
    ref_losses, ref_grads = _step(reference, ref_criterion)
    assert losses.keys() == ref_losses.keys() and "loss_mask" in losses
    for k in losses:
        torch.testing.assert_close(losses[k], ref_losses[k], rtol=1e-5, atol=1e-6, msg=k)
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    assert grads["mask_head.conv8.weight"].abs().sum() > 0
    assert grads["bbox_attention.q_linear.weight"].abs().sum() > 0


def test_gradients_exact_in_float64(monkeypatch):
    """In double precision the only difference left, the order of the sums, is invisible."""
    model, criterion, _ = _build("--bf", "1")
    model.double()
    model.mask_chunk_rows = 3
    reference, _, _ = _build("--bf", "1")
    reference.double().load_state_dict(model.state_dict())
    monkeypatch.setattr(reference, "predict_masks", lambda features: full_masks(reference, features))
    grads = {}
    for m in (model, reference):
        m.train()
        torch.manual_seed(5)
        out = m([x.double() for x in _images()])
        losses = criterion(out, _targets())
        (losses["loss_mask"] + losses["loss_dice"]).backward()
        grads[m] = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    for n, g in grads[reference].items():
        torch.testing.assert_close(grads[model][n], g, rtol=1e-10, atol=1e-12, msg=n)


@pytest.mark.parametrize("flags", [[], ["--bf", "1", "--eval_bf"]], ids=["base", "eval_bf"])
def test_eval_predictions_match_the_full_computation(flags):
    model, _, post = _build(*flags)
    model.mask_chunk_rows = 4  # 2 queries per chunk for 2 images: 7 queries in 4 chunks
    model.eval()
    with torch.no_grad():
        out = model(_images())
        _, state = model.detr.forward_with_state(_nested())
        ref = full_masks(model, model.detr.mask_features(state))
    assert out["pred_masks"].shape == ref.shape == (2, 7, 16, 20)
    torch.testing.assert_close(out["pred_masks"], ref, rtol=1e-5, atol=1e-5)
    sizes = torch.tensor([[64, 80], [56, 72]])
    results = post["segm"](post["bbox"](out, sizes), out, sizes, sizes)
    ref_results = post["segm"](post["bbox"](out, sizes), {**out, "pred_masks": ref}, sizes, sizes)
    for r, e in zip(results, ref_results):
        assert torch.equal(r["masks"], e["masks"])


def _nested():
    from util.misc import nested_tensor_from_tensor_list

    return nested_tensor_from_tensor_list(_images())


def _saved_bytes_of_the_head(model, monkeypatch) -> int:
    """Bytes autograd keeps for the backward pass of ``predict_masks`` in one training forward."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    predict = model.predict_masks

    def recorded(*args):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return predict(*args)

    monkeypatch.setattr(model, "predict_masks", recorded)
    model.train()
    model(_images())
    return sum(seen.values())


def test_training_stores_no_per_query_maps(monkeypatch):
    """Stored activations grow with the number of queries only by their embeddings: the full computation
    stores ~50 maps of the image's size per query, the chunked one none."""
    growth = {}
    for name in ("chunked", "full"):
        saved = []
        for queries in (5, 25):
            model, _, _ = _build(queries=queries)
            if name == "full":
                monkeypatch.setattr(model, "predict_masks", lambda features, m=model: full_masks(m, features))
            saved.append(_saved_bytes_of_the_head(model, monkeypatch))
        growth[name] = (saved[1] - saved[0]) / (2 * 20)  # per (image, query) row
    # docs/benchmarks.md's estimate of the full computation, per row: (2M + 5 dim8 + 2 dim4) stride-8
    # maps and (3 dim4 + 1) stride-4 maps, float32; here M = 2 heads, dim8 = dim4 = 8 channels, and the
    # padded 64x80 batch has 8x10 cells at stride 8 and 16x20 at stride 4.
    estimate = 4 * ((2 * 2 + 5 * 8 + 2 * 8) * 8 * 10 + (3 * 8 + 1) * 16 * 20)
    assert 0.95 * estimate < growth["full"] < 1.05 * estimate, (growth, estimate)
    # chunked: a few query embeddings (hidden_dim 32, float32) per row, no map
    assert growth["chunked"] <= 4 * 32 * 4, growth


def test_backward_recomputes_only_the_matched_queries():
    model, criterion, _ = _build("--bf", "1", queries=9)
    rows = []
    model.mask_head.conv8.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    model.train()
    out = model(_images())
    assert sum(rows) == 4 * 9  # forward: every (image, query) row of both streams
    losses = criterion(out, _targets())
    rows.clear()
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert sum(rows) == 2 * 3  # backward: the 3 matched targets of each stream


def test_chunking_reads_nothing_back_in_eval(fake_cuda):
    model, _, _ = _build(queries=5)
    model.mask_chunk_rows = 4
    model = fake_cuda.module(model.eval())
    with fake_cuda.run(), torch.no_grad():
        out = model([torch.randn(3, 40, 56, device="cuda"), torch.randn(3, 32, 44, device="cuda")])
    assert out["pred_masks"].shape == (2, 5, 10, 14)


def test_losses_unchanged_by_a_zero_weight_query_mask():
    """Sanity of the selection rule: a loss that reads a query's mask with weight 0 still gets the
    exact (zero) contribution; the masks of unread queries are still predicted in training."""
    model, _, _ = _build(queries=5)
    model.train()
    out = model(_images())
    assert out["pred_masks"].shape == (2, 5, 16, 20) and out["pred_masks"].requires_grad
    (0 * out["pred_masks"][0, 1].sum() + F.relu(out["pred_masks"][1, 2]).sum()).backward()
    assert model.mask_head.out.weight.grad is not None
