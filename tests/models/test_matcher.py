import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from models.matcher import HungarianMatcher, build_matcher


def _giou(a, b):
    """GIoU of two cxcywh boxes (Python floats)."""
    def xyxy(box):
        cx, cy, w, h = box
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    a, b = xyxy(a), xyxy(b)
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (enclosing - union) / enclosing


def _pair_cost(logits, box, label, tgt_box, w_class, w_bbox, w_giou):
    """The cost of matching one query to one target, written out with Python floats."""
    p = 1 / (1 + math.exp(-logits[label]))
    positive = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
    negative = 0.75 * p**2 * -math.log(1 - p + 1e-8)
    l1 = sum(abs(x - y) for x, y in zip(box, tgt_box))
    return w_class * (positive - negative) + w_bbox * l1 - w_giou * _giou(box, tgt_box)


def _brute_force(logits, boxes, labels, tgt_boxes, weights):
    """Minimum total cost over every injective map of targets to queries, and that map."""
    num_queries, n = len(logits), len(labels)
    best = (math.inf, None)
    for queries in itertools.permutations(range(num_queries), n):
        total = sum(_pair_cost(logits[q], boxes[q], labels[j], tgt_boxes[j], *weights)
                    for j, q in enumerate(queries))
        if total < best[0]:
            best = (total, queries)
    return best


def _random_boxes(n, g):
    centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


@pytest.mark.parametrize("weights", [(2.0, 5.0, 2.0), (1.0, 0.0, 0.0), (0.0, 1.0, 3.0)])
def test_matches_brute_force(weights):
    g = torch.Generator().manual_seed(3)
    num_classes, num_queries = 4, 5
    target_counts = [3, 0, 5, 1]  # no targets, and as many targets as queries
    logits = torch.randn(len(target_counts), num_queries, num_classes, generator=g) * 2
    boxes = _random_boxes(len(target_counts) * num_queries, g).view(len(target_counts), num_queries, 4)
    targets = [{"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": _random_boxes(n, g)}
               for n in target_counts]
    matcher = HungarianMatcher(*weights)
    indices = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)

    assert len(indices) == len(targets)
    for b, ((rows, cols), t) in enumerate(zip(indices, targets)):
        n = len(t["labels"])
        assert rows.dtype == torch.int64 and cols.dtype == torch.int64
        assert len(rows) == len(cols) == n
        assert sorted(cols.tolist()) == list(range(n))
        args = (logits[b].tolist(), boxes[b].tolist(), t["labels"].tolist(), t["boxes"].tolist())
        best_cost, best_map = _brute_force(*args, weights)
        got = sum(_pair_cost(args[0][q], args[1][q], args[2][j], args[3][j], *weights)
                  for q, j in zip(rows.tolist(), cols.tolist()))
        assert got == pytest.approx(best_cost, abs=1e-5)
        ties_possible = weights[1] == weights[2] == 0 and len(set(args[2])) < n  # same class twice
        if n and not ties_possible:
            assert dict(zip(cols.tolist(), rows.tolist())) == dict(enumerate(best_map))


def test_all_images_without_targets():
    matcher = HungarianMatcher(2, 5, 2)
    outputs = {"pred_logits": torch.randn(2, 3, 4), "pred_boxes": torch.rand(2, 3, 4) * 0.5 + 0.2}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    for rows, cols in matcher(outputs, [empty, empty]):
        assert rows.numel() == 0 and cols.numel() == 0 and rows.dtype == torch.int64


def test_half_precision_outputs_match_float32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, 3, generator=g)
    boxes = _random_boxes(6, g)[None]
    targets = [{"labels": torch.tensor([0, 2]), "boxes": _random_boxes(2, g)}]
    matcher = HungarianMatcher(2, 5, 2)
    ref = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = matcher({"pred_logits": logits.bfloat16(), "pred_boxes": boxes.bfloat16()}, targets)
    assert [r.tolist() for r in ref[0]] == [r.tolist() for r in low[0]]


def test_errors():
    matcher = HungarianMatcher(2, 5, 2)
    outputs = {"pred_logits": torch.randn(2, 3, 4), "pred_boxes": torch.rand(2, 3, 4) * 0.5 + 0.2}
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    with pytest.raises(ValueError, match="2 images of predictions but 1 target"):
        matcher(outputs, [target])
    outputs["pred_logits"][0, 0, :] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        matcher(outputs, [target, target])
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(0, 0, 0)


def test_build_matcher_reads_args():
    args = SimpleNamespace(set_cost_class=2.0, set_cost_bbox=5.0, set_cost_giou=3.0, focal_alpha=0.5)
    m = build_matcher(args)
    assert (m.cost_class, m.cost_bbox, m.cost_giou, m.classification.cost_alpha) == (2.0, 5.0, 3.0, 0.25)
