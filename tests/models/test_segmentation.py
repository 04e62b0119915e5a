"""Mask head: attention maps against a slow reference, two streams, the frozen-detector recipe,
and the segmentation / panoptic post-processors."""
import argparse
import io

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.panoptic_eval import rgb2id
from models import build_model
from models.postprocess import PostProcess
from models.segmentation import MaskHeadFPN, MHAttentionMap, PostProcessPanoptic, PostProcessSegm
from tests.tiny_model import tiny_flags
from util.args import get_args_parser

TINY = tiny_flags(
    "--dataset_file", "toy_panoptic", "--dim_feedforward", "32", "--dec_layers", "2", "--num_queries",
    "5", "--num_feature_levels", "3", "--masks", "--dropout", "0"
)


def _build(*extra):
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(TINY + list(extra))
    return build_model(args)


def _targets():
    masks = torch.zeros(2, 64, 80, dtype=torch.bool)
    masks[0, 8:40, 8:40] = True
    masks[1, 30:60, 40:78] = True
    return [
        {"labels": torch.tensor([1, 6]), "boxes": torch.tensor([[0.3, 0.4, 0.4, 0.5], [0.7, 0.7, 0.45, 0.5]]),
         "masks": masks},
        {"labels": torch.tensor([7]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]), "masks": masks[1:]},
    ]


def test_attention_map_matches_a_slow_reference():
    torch.manual_seed(0)
    attn = MHAttentionMap(8, 8, num_heads=2).double()
    q = torch.randn(2, 3, 8, dtype=torch.float64)
    k = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, :, 3:] = True  # padding on the right of image 1
    out = attn(q, k, mask)
    ref = torch.zeros(2, 3, 2, 4, 5, dtype=torch.float64)
    for b in range(2):
        keys = [(y, x) for y in range(4) for x in range(5) if not mask[b, y, x]]
        for i in range(3):
            qp = attn.q_linear(q[b, i])
            for h in range(2):
                logits = []
                for y, x in keys:
                    kp = attn.k_linear(k[b, :, y, x])
                    logits.append((qp[4 * h:4 * h + 4] * kp[4 * h:4 * h + 4]).sum() / 2.0)  # sqrt(4)
                weights = torch.stack(logits).softmax(0)
                for (y, x), wgt in zip(keys, weights):
                    ref[b, i, h, y, x] = wgt
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.all(out[1, :, :, :, 3:] == 0)


def test_detrs_attention_map_is_one_softmax_over_heads_and_positions():
    """DETR's published head normalises a query's weights over every head at once: compared with
    transformers' DetrMHAttentionMap given the same projections (an independent implementation)."""
    from transformers.models.detr.modeling_detr import DetrMHAttentionMap

    torch.manual_seed(0)
    ours = MHAttentionMap(16, 16, num_heads=4, softmax_over_heads=True)
    theirs = DetrMHAttentionMap(16, 4)
    theirs.q_proj.load_state_dict(ours.q_linear.state_dict())
    theirs.k_proj.load_state_dict(ours.k_linear.state_dict())
    q, k = torch.randn(2, 3, 16), torch.randn(2, 16, 4, 5)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 2:] = True  # padding below row 2 of image 1
    additive = torch.where(mask[:, None, None], torch.finfo(k.dtype).min, 0.0)
    got = ours(q, k, mask)
    torch.testing.assert_close(got, theirs(q, k, attention_mask=additive), rtol=1e-5, atol=1e-7)
    assert torch.allclose(got.flatten(2).sum(-1), torch.ones(2, 3))  # one distribution per query
    assert torch.allclose(MHAttentionMap(16, 16, 4)(q, k, mask).flatten(3).sum(-1), torch.ones(2, 3, 4))


def test_each_query_mask_depends_on_its_own_attention_maps_only():
    torch.manual_seed(0)
    head = MaskHeadFPN(hidden_dim=32, num_heads=2, c8=16, c4=8).double()
    memory = torch.randn(2, 32, 6, 7, dtype=torch.float64)
    attn = torch.rand(2, 3, 2, 6, 7, dtype=torch.float64)
    feat8 = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    feat4 = torch.randn(2, 8, 11, 13, dtype=torch.float64)
    mask = torch.zeros(2, 6, 7, dtype=torch.bool)
    out = head(attn, memory, mask, [feat8, feat4])
    assert out.shape == (2, 3, 11, 13)
    for q in range(3):
        alone = head(attn[:, q : q + 1], memory, mask, [feat8, feat4])
        assert torch.allclose(out[:, q : q + 1], alone, atol=1e-12)


def test_attention_maps_steer_the_masks_as_strongly_as_the_memory():
    """Regression: under one norm of [memory ; attention], maps that are a softmax over thousands of
    positions were ~1e-3 of the memory and every query of an image got the same mask."""
    torch.manual_seed(0)
    model, _, _ = _build()
    model.eval()
    seen = {}
    model.mask_head.attn_conv.register_forward_hook(lambda mod, inp, out: seen.update(attn=inp[0]))
    images = [torch.rand(3, 96, 128), torch.rand(3, 64, 96)]  # image 1 is padded
    with torch.no_grad():
        masks = model(images)["pred_masks"]  # (2, 5, 24, 32)
    attn = seen["attn"].view(2, 5, 2, 12, 16)
    # the maps come in units of the uniform weight: they average 1 over each image's own area
    assert torch.allclose(attn[0].mean((-2, -1)), torch.ones(5, 2), atol=1e-5)
    assert torch.allclose(attn[1, ..., :8, :12].mean((-2, -1)), torch.ones(5, 2), atol=1e-5)
    # queries differ only by their attention maps, and their masks differ at the scale of the masks
    between_queries = masks[0].std(0).mean()
    within_a_mask = masks[0].flatten(1).std(1).mean()
    assert between_queries > 0.2 * within_a_mask


def test_two_streams_share_the_mask_head():
    model, criterion, _ = _build("--bf", "1", "--insert_idx", "0")
    images = [torch.randn(3, 64, 80), torch.randn(3, 56, 72)]
    model.train()
    out = model(images)
    assert out["pred_masks"].shape == (4, 5, 16, 20)  # 2B streams, stride 4 of the padded batch
    losses = criterion(out, _targets())
    assert torch.isfinite(losses["loss_mask"]) and torch.isfinite(losses["loss_dice"])
    sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses).backward()
    # the second stream's masks reach the BatchFormer through the shared head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.detr.transformer.bf.parameters())
    assert model.bbox_attention.q_linear.weight.grad.abs().sum() > 0
    # stream 0 is the plain model (dropout 0): its masks equal those of inference without the BatchFormer
    model.eval()
    with torch.no_grad():
        plain = model(images)["pred_masks"]
    assert torch.allclose(out["pred_masks"][:2].detach(), plain, atol=1e-4)
    assert not torch.allclose(out["pred_masks"][2:].detach(), plain, atol=1e-4)


def test_frozen_weights_recipe_trains_only_the_mask_head():
    model, criterion, _ = _build("--frozen_weights", "unused.pth")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("bbox_attention.", "mask_head.")) for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    out = model([torch.randn(3, 64, 80), torch.randn(3, 64, 80)])
    losses = criterion(out, _targets())
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    for n, p in model.named_parameters():
        if n.startswith("detr."):
            assert p.grad is None, n
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def _outputs(logits, masks):
    return {"pred_logits": logits, "pred_masks": masks, "pred_boxes": torch.full((*logits.shape[:2], 4), 0.5)}


def test_postprocess_segm_masks_of_the_top_detections_at_original_size():
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 2, 1] = 5.0  # query 2 is the best detection
    logits[0, 0, 3] = 2.0
    masks = torch.full((1, 3, 4, 5), -10.0)
    masks[0, 2, :2, :] = 10.0  # top half of the image (processed size 16 x 20)
    masks[0, 0, :, :1] = 10.0
    outputs = _outputs(logits, masks)
    orig, processed = torch.tensor([[8, 10]]), torch.tensor([[16, 20]])
    results = PostProcess(num_select=2)(outputs, orig)
    results = PostProcessSegm()(results, outputs, orig, processed)
    m = results[0]["masks"]
    assert m.shape == (2, 1, 8, 10) and m.dtype == torch.bool
    assert results[0]["labels"].tolist() == [1, 3]
    assert m[0, 0, :4].all() and not m[0, 0, 4:].any()
    assert m[1, 0, :, :2].all() and not m[1, 0, :, 3:].any()


def _decode(result):
    with Image.open(io.BytesIO(result["png_string"])) as im:
        return rgb2id(np.asarray(im.convert("RGB")))


def test_postprocess_panoptic_segments_never_overlap_and_stuff_merges():
    is_thing = {1: True, 2: True, 6: False, 7: False}
    torch.manual_seed(0)
    q = 8
    logits = torch.full((2, q, 9), -10.0)
    # image 0, on its 8 x 8 stride-4 grid: things 1 and 2 in two quadrants, stuff 6 from two queries
    # (merged), a weaker duplicate of thing 1 reaching one row further (dropped: it wins 4 of its
    # 20 cells), a one-cell thing (dropped: below min_area), an unconfident query and one of an
    # unknown class (never output)
    for i, (c, score) in enumerate([(1, 3.0), (2, 3.0), (6, 3.0), (6, 3.0), (1, 1.0), (2, 3.0), (2, -2.0)]):
        logits[0, i, c] = score
    logits[0, 7, 8] = 5.0
    masks = torch.full((2, q, 8, 8), -10.0)
    masks[0, 0, 0:4, 0:4] = 10
    masks[0, 1, 4:8, 4:8] = 10
    masks[0, 2, 0:4, 4:8] = 10
    masks[0, 3, 5:8, 0:3] = 10
    masks[0, 4, 0:5, 0:4] = 10
    masks[0, 5, 7, 3] = 10  # one stride-4 cell: about 8 x 8 px at the original size
    masks[0, 6] = 10
    masks[0, 7] = 10
    logits[1, :, 7] = torch.linspace(0, 3, q)  # image 1: random masks, many stuff queries
    masks[1] = 4 * torch.randn(q, 8, 8)
    post = PostProcessPanoptic(is_thing, threshold=0.3, min_area=100)
    processed = torch.tensor([[32, 32], [30, 28]])
    orig = torch.tensor([[64, 64], [45, 42]])
    results = post(_outputs(logits, masks), processed, orig)
    for res, size in zip(results, orig.tolist()):
        ids = _decode(res)
        assert list(ids.shape) == size
        seg_ids = [s["id"] for s in res["segments_info"]]
        assert len(set(seg_ids)) == len(seg_ids)
        # one id per pixel and the areas add up: segments never overlap
        present, counts = np.unique(ids[ids > 0], return_counts=True)
        assert sorted(present.tolist()) == sorted(seg_ids)
        areas = {s["id"]: s["area"] for s in res["segments_info"]}
        assert areas == dict(zip(present.tolist(), counts.tolist()))
        assert all(s["category_id"] in is_thing for s in res["segments_info"])
        assert all(s["area"] >= 100 for s in res["segments_info"])
    info = results[0]["segments_info"]
    assert sorted(s["category_id"] for s in info) == [1, 2, 6]
    assert {s["category_id"]: s["isthing"] for s in info} == {1: True, 2: True, 6: False}
    ids = _decode(results[0])
    cell = 8  # one stride-4 cell is 8 x 8 px at the original 64 x 64
    by_cat = {s["category_id"]: s["id"] for s in info}
    assert (ids[: 4 * cell - 2, : 4 * cell - 2] == by_cat[1]).all()  # thing 1 kept its whole mask
    assert (ids[4 * cell + 2 : 5 * cell - 2, : 3 * cell] == 0).all()  # the duplicate's row is VOID
    assert (ids[7 * cell + 2 :, 3 * cell + 2 : 4 * cell - 2] == 0).all()  # so is the tiny thing's cell
    stuff = ids == by_cat[6]
    assert stuff[: 4 * cell - 2, 4 * cell + 2 :].all() and stuff[5 * cell + 2 :, : 3 * cell - 2].all()
    assert len(results[1]["segments_info"]) <= 1  # one stuff class: at most one segment
    assert all(s["category_id"] == 7 for s in results[1]["segments_info"])


def test_postprocess_panoptic_prefers_the_confident_query_where_masks_overlap():
    logits = torch.full((1, 2, 3), -10.0)
    logits[0, 0, 1], logits[0, 1, 2] = 0.5, 3.0  # query 1 is the more confident
    masks = torch.full((1, 2, 4, 8), -10.0)
    masks[0, 0, :, 0:5] = 10  # query 0 covers columns 0-4, query 1 columns 3-7
    masks[0, 1, :, 3:8] = 10
    post = PostProcessPanoptic({1: True, 2: True}, threshold=0.3, overlap=0.5, min_area=1)
    res = post(_outputs(logits, masks), torch.tensor([[16, 32]]))[0]
    ids, by_cat = _decode(res), {s["category_id"]: s["id"] for s in res["segments_info"]}
    assert (ids[:, 13:] == by_cat[2]).all() and (ids[:, :11] == by_cat[1]).all()
    assert res["segments_info"][0]["category_id"] == 2  # ids follow the scores
    with pytest.raises(ValueError, match="--panoptic_threshold"):
        PostProcessPanoptic({1: True}, threshold=1.5)
    _, _, postprocessors = _build("--panoptic_threshold", "0.45")
    assert postprocessors["panoptic"].threshold == 0.45


def test_postprocess_panoptic_without_confident_queries_is_void():
    post = PostProcessPanoptic({1: True}, threshold=0.5)
    res = post(_outputs(torch.full((1, 3, 2), -5.0), torch.randn(1, 3, 4, 4)), torch.tensor([[16, 16]]))
    assert res[0]["segments_info"] == [] and (_decode(res[0]) == 0).all()


def test_masks_need_the_multi_scale_backbone():
    with pytest.raises(ValueError, match="num_feature_levels"):
        _build("--num_feature_levels", "1")
