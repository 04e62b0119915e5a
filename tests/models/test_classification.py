"""The two classification kinds against slow, obvious float64 implementations: the losses, the matcher's
class costs, the detections and class scores, and the criterion / matcher / post-processors that use them."""
import itertools
import math

import pytest
import torch

from models.classification import SigmoidFocal, SoftmaxCrossEntropy
from models.criterion import SetCriterion
from models.matcher import HungarianMatcher
from models.postprocess import PostProcess
from models.segmentation import PostProcessPanoptic

NUM_CLASSES = 3


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _logits(kind, b=2, q=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, q, kind.num_logits(NUM_CLASSES), generator=g, dtype=torch.float64) * 2


def _target_classes(b=2, q=5, seed=1):
    """Every query "no object" (NUM_CLASSES) but a few matched ones."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.full((b, q), NUM_CLASSES, dtype=torch.int64)
    matched = torch.rand(b, q, generator=g) < 0.4
    classes[matched] = torch.randint(0, NUM_CLASSES, (int(matched.sum()),), generator=g)
    return classes


def _focal_loss_slow(logits, classes, num_boxes, alpha, gamma=2.0):
    """Per (query, class): -alpha_t (1 - p_t)^gamma log p_t; the mean over queries summed, / num_boxes,
    times the number of queries: the sum over every (query, class) / num_boxes."""
    total = 0.0
    for i, q, c in itertools.product(*map(range, logits.shape)):
        p = _sigmoid(logits[i, q, c].item())
        positive = classes[i, q].item() == c
        p_t, alpha_t = (p, alpha) if positive else (1 - p, 1 - alpha)
        total += -alpha_t * (1 - p_t) ** gamma * math.log(p_t)
    return total / num_boxes


def _cross_entropy_slow(logits, classes, eos_coef):
    """sum_i w(y_i) * -log softmax(x_i)[y_i] / sum_i w(y_i), w = 1 but eos_coef for "no object"."""
    num, den = 0.0, 0.0
    for i, q in itertools.product(*map(range, logits.shape[:2])):
        y = classes[i, q].item()
        w = eos_coef if y == logits.shape[-1] - 1 else 1.0
        num += w * -math.log(_softmax(logits[i, q].tolist())[y])
        den += w
    return num / den


@pytest.mark.parametrize("alpha", [0.25, 0.6])
def test_focal_loss_against_the_slow_sum(alpha):
    kind = SigmoidFocal(alpha=alpha)
    logits, classes = _logits(kind), _target_classes()
    got = kind.loss(logits, classes, num_boxes=3.0).item()
    assert got == pytest.approx(_focal_loss_slow(logits, classes, 3.0, alpha), rel=1e-12)


@pytest.mark.parametrize("eos_coef", [0.1, 1.0])
def test_cross_entropy_weighs_no_object_by_eos_coef(eos_coef):
    kind = SoftmaxCrossEntropy(eos_coef=eos_coef)
    logits, classes = _logits(kind), _target_classes()
    got = kind.loss(logits, classes, num_boxes=3.0).item()  # not divided by num_boxes
    assert got == pytest.approx(_cross_entropy_slow(logits, classes, eos_coef), rel=1e-12)


def test_focal_cost_against_its_formula():
    kind = SigmoidFocal(alpha=0.6)  # the loss's alpha: the cost keeps the published 0.25
    logits = _logits(kind).flatten(0, 1)
    ids = torch.tensor([2, 0, 2, 1])
    cost = kind.match_cost(logits, ids)
    for n, (t, c) in itertools.product(range(len(logits)), enumerate(ids.tolist())):
        p = _sigmoid(logits[n, c].item())
        want = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p**2 * -math.log(1 - p + 1e-8)
        assert cost[n, t].item() == pytest.approx(want, rel=1e-12)


def test_softmax_cost_is_minus_the_target_probability():
    kind = SoftmaxCrossEntropy()
    logits = _logits(kind).flatten(0, 1)
    ids = torch.tensor([2, 0, 2, 1])
    cost = kind.match_cost(logits, ids)
    for n, (t, c) in itertools.product(range(len(logits)), enumerate(ids.tolist())):
        assert cost[n, t].item() == pytest.approx(-_softmax(logits[n].tolist())[c], rel=1e-12)


def test_focal_detections_are_the_best_query_class_pairs():
    kind = SigmoidFocal()
    logits = _logits(kind)
    scores, labels, queries = kind.detections(logits, 4)
    for i in range(len(logits)):
        pairs = sorted(((_sigmoid(logits[i, q, c].item()), q, c) for q in range(logits.shape[1])
                        for c in range(NUM_CLASSES)), reverse=True)[:4]
        assert scores[i].tolist() == pytest.approx([p for p, _, _ in pairs], rel=1e-6)
        assert list(zip(queries[i].tolist(), labels[i].tolist())) == [(q, c) for _, q, c in pairs]


def test_softmax_detections_are_every_query_with_its_best_real_class():
    kind = SoftmaxCrossEntropy()
    logits = _logits(kind)
    logits[0, 1, -1] = 50.0  # a confident "no object": still a detection, with its best real class
    scores, labels, queries = kind.detections(logits, 2)  # num_select does not apply
    assert queries.tolist() == [list(range(5))] * 2
    for i, q in itertools.product(range(2), range(5)):
        probs = _softmax(logits[i, q].tolist())[:-1]
        assert labels[i, q].item() == probs.index(max(probs))
        assert scores[i, q].item() == pytest.approx(max(probs), rel=1e-6)
    total = kind.class_scores(logits).double().sum(-1) + logits.softmax(-1)[..., -1]
    assert torch.allclose(total, torch.ones(2, 5, dtype=torch.float64))


def test_cardinality_counts_queries_whose_best_logit_is_not_the_last():
    logits = torch.tensor([[[0.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 5.0], [3.0, 0.0, 0.0, 0.0]]])
    for kind in (SigmoidFocal(), SoftmaxCrossEntropy()):
        assert kind.num_objects(logits).tolist() == [2]


def test_focal_head_starts_at_the_prior_and_softmax_at_the_default():
    head = torch.nn.Linear(4, 3)
    SigmoidFocal().init_head(head)
    assert torch.allclose(head.bias.sigmoid(), torch.full((3,), 0.01))
    bias = head.bias.clone()
    SoftmaxCrossEntropy().init_head(head)
    assert torch.equal(head.bias, bias)
    assert (SigmoidFocal().num_logits(91), SoftmaxCrossEntropy().num_logits(91)) == (91, 92)


def _boxes(g, n):
    centre, size = torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([centre, size], 1)


def test_softmax_matcher_and_criterion_use_the_softmax_kind():
    """The matcher's assignment minimises the softmax cost (brute force over every assignment), and the
    criterion's loss_ce is the slow cross-entropy of the matched classes."""
    g = torch.Generator().manual_seed(2)
    kind = SoftmaxCrossEntropy(eos_coef=0.1)
    logits = torch.randn(1, 4, NUM_CLASSES + 1, generator=g) * 2
    boxes = _boxes(g, 4)[None]
    target = {"labels": torch.tensor([1, 2]), "boxes": _boxes(g, 2)}
    matcher = HungarianMatcher(1, 0, 0, classification=kind)
    rows, cols = matcher({"pred_logits": logits, "pred_boxes": boxes}, [target])[0]
    probs = [_softmax(row) for row in logits[0].tolist()]

    def cost(assign):
        return sum(-probs[q][target["labels"][j].item()] for j, q in enumerate(assign))

    best = min(itertools.permutations(range(4), 2), key=cost)
    assert cost(dict(zip(cols.tolist(), rows.tolist())).values()) == pytest.approx(cost(best), abs=1e-6)

    criterion = SetCriterion(NUM_CLASSES, matcher, {"loss_ce": 1.0}, ["labels", "cardinality"],
                             classification=kind)
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, [target])
    classes = torch.full((1, 4), NUM_CLASSES)
    classes[0, rows] = target["labels"][cols]
    want = _cross_entropy_slow(logits.double(), classes, 0.1)
    assert losses["loss_ce"].item() == pytest.approx(want, rel=1e-5)


def test_postprocessors_follow_the_softmax_kind():
    kind = SoftmaxCrossEntropy()
    logits = _logits(kind).float()
    boxes = torch.rand(2, 5, 4) * 0.5 + 0.25
    results = PostProcess(classification=kind)({"pred_logits": logits, "pred_boxes": boxes},
                                                torch.tensor([[10, 20], [30, 40]]))
    scores, labels, _ = kind.detections(logits, 100)
    for i, r in enumerate(results):
        assert torch.equal(r["scores"], scores[i]) and torch.equal(r["labels"], labels[i])
        assert r["boxes"].shape == (5, 4)
    # Panoptic keeps the queries whose best real class's softmax score passes the threshold.
    logits = torch.full((1, 3, NUM_CLASSES + 1), -10.0)
    logits[0, 0, 1] = 10.0  # confident class 1
    logits[0, 1, -1] = 10.0  # confident "no object"
    logits[0, 2, 2] = 0.0  # unsure
    masks = torch.full((1, 3, 4, 4), -10.0)
    masks[0, 0] = 10.0
    post = PostProcessPanoptic({1: True, 2: True}, threshold=0.85, min_area=1, classification=kind)
    result = post({"pred_logits": logits, "pred_masks": masks}, torch.tensor([[16, 16]]))[0]
    segments = result["segments_info"]
    assert [s["category_id"] for s in segments] == [1]
