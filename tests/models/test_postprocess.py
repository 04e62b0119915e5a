import math

import pytest
import torch

from models.postprocess import PostProcess


def _logit(p):
    return math.log(p / (1 - p))


def test_hand_built_case():
    # Two images, two queries, three classes; per image the 3 best (query, class) scores are kept.
    logits = torch.full((2, 2, 3), _logit(0.01))
    logits[0, 1, 2] = _logit(0.9)
    logits[0, 0, 0] = _logit(0.8)
    logits[0, 1, 1] = _logit(0.7)  # query 1 appears twice, with two labels
    logits[1, 0, 1] = _logit(0.6)
    boxes = torch.tensor([
        [[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]],
        [[0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.1, 0.1]],
    ])
    sizes = torch.tensor([[100, 200], [50, 40]])  # (h, w)
    results = PostProcess(num_select=3)({"pred_logits": logits, "pred_boxes": boxes}, sizes)

    assert len(results) == 2
    r0 = results[0]
    torch.testing.assert_close(r0["scores"], torch.tensor([0.9, 0.8, 0.7]))
    assert r0["labels"].tolist() == [2, 0, 1]
    # Query 1 cxcywh (0.25, 0.75, 0.5, 0.5) -> xyxy (0, 0.5, 0.5, 1) -> pixels * (200, 100, 200, 100).
    q1 = [0.0, 50.0, 100.0, 100.0]
    q0 = [80.0, 30.0, 120.0, 70.0]
    torch.testing.assert_close(r0["boxes"], torch.tensor([q1, q0, q1]))

    r1 = results[1]
    assert r1["scores"][0].item() == pytest.approx(0.6)
    assert r1["labels"][0].item() == 1
    torch.testing.assert_close(r1["boxes"][0], torch.tensor([0.0, 0.0, 40.0, 50.0]))
    assert r1["labels"].dtype == torch.int64


def test_default_keeps_100_and_fewer_when_not_enough_candidates():
    out = {"pred_logits": torch.randn(1, 300, 91), "pred_boxes": torch.rand(1, 300, 4)}
    r = PostProcess()(out, torch.tensor([[480, 640]]))[0]
    assert r["scores"].shape == (100,) and r["boxes"].shape == (100, 4)
    assert torch.all(r["scores"][:-1] >= r["scores"][1:])
    small = {"pred_logits": torch.randn(1, 5, 4), "pred_boxes": torch.rand(1, 5, 4)}
    assert PostProcess()(small, torch.tensor([[10, 10]]))[0]["scores"].shape == (20,)


def test_errors():
    out = {"pred_logits": torch.randn(2, 5, 4), "pred_boxes": torch.rand(2, 5, 4)}
    with pytest.raises(ValueError, match="2 images of predictions but 1 target sizes"):
        PostProcess()(out, torch.tensor([[10, 10]]))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        PostProcess()(out, torch.tensor([10, 10]))


def test_batched_exports_with_a_dynamic_batch():
    """``batched`` is what an exported graph runs (tools/export_onnx.py): traced with 2 images, it must
    take any number, and give ``forward``'s detections."""

    class Detections(torch.nn.Module):
        def forward(self, logits, boxes, sizes):
            out = PostProcess(num_select=4).batched({"pred_logits": logits, "pred_boxes": boxes}, sizes)
            return out["scores"], out["labels"], out["boxes"]

    def inputs(b):
        return torch.randn(b, 5, 3), torch.rand(b, 5, 4), torch.randint(10, 1000, (b, 2))

    batch = {0: torch.export.Dim.DYNAMIC}
    program = torch.export.export(Detections(), inputs(2), dynamic_shapes=(batch, batch, batch), strict=False)
    logits, boxes, sizes = inputs(3)
    scores, labels, xyxy = program.module()(logits, boxes, sizes)
    want = PostProcess(num_select=4)({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    assert len(want) == 3
    torch.testing.assert_close(scores, torch.stack([r["scores"] for r in want]))
    assert torch.equal(labels, torch.stack([r["labels"] for r in want]))
    torch.testing.assert_close(xyxy, torch.stack([r["boxes"] for r in want]))
