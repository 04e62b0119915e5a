import math

import pytest
import torch

from models.criterion import SetCriterion, dice_loss, sigmoid_focal_loss
from models.matcher import HungarianMatcher

NUM_CLASSES = 3
LOSSES = ["labels", "boxes", "cardinality"]


def _criterion(losses=LOSSES, alpha=0.25):
    return SetCriterion(NUM_CLASSES, HungarianMatcher(2, 5, 2), weight_dict={"loss_ce": 2.0}, losses=losses,
                        focal_alpha=alpha)


def _outputs(g, batch, queries=4, aux=0, enc=False):
    def head():
        centre = torch.rand(batch, queries, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(batch, queries, 2, generator=g) * 0.3 + 0.05
        return {"pred_logits": torch.randn(batch, queries, NUM_CLASSES, generator=g),
                "pred_boxes": torch.cat([centre, size], dim=-1)}

    out = head()
    if aux:
        out["aux_outputs"] = [head() for _ in range(aux)]
    if enc:
        out["enc_outputs"] = head()
    return out


def _targets(g, counts):
    out = []
    for n in counts:
        centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        out.append({"labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
                    "boxes": torch.cat([centre, size], dim=-1)})
    return out


def _focal_reference(logits, targets, num_boxes, alpha, gamma=2.0):
    """The focal loss element by element in float64: -alpha_t (1 - p_t)^gamma log(p_t)."""
    logits, targets = logits.double(), targets.double()
    total = 0.0
    n, k = logits.shape[:2]
    for i in range(n):
        for rest in range(logits[i].numel() // k):
            column = 0.0
            for j in range(k):
                x = logits[i, j].flatten()[rest].item()
                t = targets[i, j].flatten()[rest].item()
                p = 1 / (1 + math.exp(-x))
                p_t = p if t == 1 else 1 - p
                alpha_t = alpha if t == 1 else 1 - alpha
                column += -alpha_t * (1 - p_t) ** gamma * math.log(p_t)
            total += column / k
    return total / num_boxes


@pytest.mark.parametrize("alpha", [0.25, 0.6])
def test_sigmoid_focal_loss_against_formula(alpha):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(2, 5, 3, generator=g) > 0.7).double()
    got = sigmoid_focal_loss(logits, targets, num_boxes=3.0, alpha=alpha)
    assert got.item() == pytest.approx(_focal_reference(logits, targets, 3.0, alpha), rel=1e-12)


def test_dice_loss_against_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 10, generator=g, dtype=torch.float64)
    masks = (torch.rand(3, 10, generator=g) > 0.5).double()
    expected = 0.0
    for x, m in zip(logits.tolist(), masks.tolist()):
        p = [1 / (1 + math.exp(-v)) for v in x]
        expected += 1 - (2 * sum(a * b for a, b in zip(p, m)) + 1) / (sum(p) + sum(m) + 1)
    assert dice_loss(logits, masks, 2.0).item() == pytest.approx(expected / 2.0, rel=1e-12)


def test_hand_built_case():
    # One image, two queries, one target of class 1 that query 1 obviously matches.
    logits = torch.tensor([[[-3.0, -2.0, -4.0], [-1.0, 2.0, -3.0]]])
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.4, 0.4]]])
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.6, 0.4, 0.2]])}
    losses = _criterion()({"pred_logits": logits, "pred_boxes": boxes}, [target])

    onehot = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    expected_ce = _focal_reference(logits, onehot, 1.0, 0.25) * 2  # times num_queries
    assert losses["loss_ce"].item() == pytest.approx(expected_ce, rel=1e-5)
    # L1: |0.5-0.5| + |0.5-0.6| + |0.4-0.4| + |0.4-0.2| = 0.3.
    assert losses["loss_bbox"].item() == pytest.approx(0.3, rel=1e-5)
    # Prediction [0.3, 0.3, 0.7, 0.7], target [0.3, 0.5, 0.7, 0.7]: the target lies inside it,
    # IoU = 0.08 / 0.16 and the enclosing box is the prediction itself, so GIoU = IoU = 0.5.
    assert losses["loss_giou"].item() == pytest.approx(0.5, rel=1e-5)
    # Query 1's top class is 1 (correct): no class error. Both queries' top class is not the
    # last one, so 2 predicted objects for 1 target.
    assert losses["class_error"].item() == pytest.approx(0.0)
    assert losses["cardinality_error"].item() == pytest.approx(1.0)


def test_two_stream_outputs_duplicate_the_targets():
    g = torch.Generator().manual_seed(1)
    targets = _targets(g, [2, 3])
    outputs = _outputs(g, batch=4, aux=2)  # 2B predictions for B = 2 images
    outputs["num_streams"] = 2
    criterion = _criterion()
    implicit = criterion(outputs, targets)
    explicit = criterion({**outputs, "num_streams": 1}, targets + targets)
    assert implicit.keys() == explicit.keys()
    for k in implicit:
        torch.testing.assert_close(implicit[k], explicit[k])


def test_duplicated_outputs_give_the_losses_of_one_copy():
    # [o ; o] against B targets: every sum doubles and so does num_boxes.
    g = torch.Generator().manual_seed(2)
    targets = _targets(g, [1, 4])
    single = _outputs(g, batch=2, aux=1, enc=True)

    def twice(d):
        return {k: (torch.cat([v, v]) if torch.is_tensor(v) else
                    [twice(a) for a in v] if isinstance(v, list) else twice(v)) for k, v in d.items()}

    criterion = _criterion()
    ref = criterion(single, targets)
    dup = criterion({**twice(single), "num_streams": 2}, targets)
    assert ref.keys() == dup.keys()
    for k in ref:
        torch.testing.assert_close(dup[k], ref[k])


def test_the_number_of_streams_is_read_not_guessed():
    # Four images of one stream with the targets of two: a caller's mistake, not two streams.
    g = torch.Generator().manual_seed(5)
    targets = _targets(g, [2, 1])
    outputs = _outputs(g, batch=4, aux=1)
    criterion = _criterion()
    with pytest.raises(ValueError, match=r"4 images of predictions but 2 .* is 1\)"):
        criterion({**outputs, "num_streams": 1}, targets)
    with pytest.raises(ValueError, match=r"num_streams'\] is 1\)"):
        criterion(outputs, targets)  # no num_streams: one stream
    with pytest.raises(ValueError, match=r"num_streams'\] is 2\)"):
        criterion({**outputs, "num_streams": 2}, targets + targets)


def test_aux_and_enc_suffixes_and_binary_encoder_targets():
    g = torch.Generator().manual_seed(3)
    targets = _targets(g, [2, 1])
    outputs = _outputs(g, batch=2, aux=3, enc=True)
    criterion = _criterion()
    losses = criterion(outputs, targets)
    for suffix in ["", "_0", "_1", "_2", "_enc"]:
        for name in ["loss_ce", "loss_bbox", "loss_giou", "cardinality_error"]:
            assert name + suffix in losses
    assert "class_error_0" not in losses and "class_error_enc" not in losses
    assert "loss_ce_3" not in losses

    # The encoder's losses are those of its outputs against the same targets relabelled to 0.
    zero = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
    direct = criterion(outputs["enc_outputs"], zero)
    for name in ["loss_ce", "loss_bbox", "loss_giou"]:
        torch.testing.assert_close(losses[name + "_enc"], direct[name])
    # The original targets are left alone.
    assert targets[0]["labels"].ne(0).any() or targets[1]["labels"].ne(0).any()


def test_losses_are_float32_under_low_precision_outputs():
    g = torch.Generator().manual_seed(4)
    targets = _targets(g, [3, 2])
    outputs = _outputs(g, batch=2, aux=1)
    low = {k: (v.bfloat16() if torch.is_tensor(v) else [{n: a.bfloat16() for n, a in x.items()} for x in v])
           for k, v in outputs.items()}
    upcast = {k: (v.float() if torch.is_tensor(v) else [{n: a.float() for n, a in x.items()} for x in v])
              for k, v in low.items()}
    criterion = _criterion()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = criterion(low, targets)
    ref = criterion(upcast, targets)
    for k in ref:
        assert got[k].dtype == torch.float32, k
        torch.testing.assert_close(got[k], ref[k])


def test_no_targets_normalises_by_one():
    g = torch.Generator().manual_seed(5)
    outputs = _outputs(g, batch=2)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    losses = _criterion()(outputs, [empty, empty])
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    expected = _focal_reference(outputs["pred_logits"], torch.zeros(2, 4, NUM_CLASSES), 1.0, 0.25) * 4
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)


def test_gradients_flow():
    g = torch.Generator().manual_seed(6)
    outputs = _outputs(g, batch=2)
    for v in outputs.values():
        v.requires_grad_(True)
    losses = _criterion()(outputs, _targets(g, [2, 2]))
    (losses["loss_ce"] + losses["loss_bbox"] + losses["loss_giou"]).backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0 and outputs["pred_boxes"].grad.abs().sum() > 0


def test_mask_losses():
    g = torch.Generator().manual_seed(7)
    # Image 0: 8x8 with 2 objects; image 1: 6x8 with 1 object. Predictions are 8x8 (already the padded
    # size), so the bilinear resize is the identity and the reference needs no interpolation.
    targets = _targets(g, [2, 1])
    targets[0]["masks"] = torch.rand(2, 8, 8, generator=g) > 0.5
    targets[1]["masks"] = torch.rand(1, 6, 8, generator=g) > 0.5
    outputs = _outputs(g, batch=2)
    outputs["pred_masks"] = torch.randn(2, 4, 8, 8, generator=g)
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(2, 5, 2), {}, ["labels", "boxes", "masks"])
    losses = criterion(outputs, targets)
    indices = criterion.matcher(outputs, targets)

    src, tgt = [], []
    for b, (rows, cols) in enumerate(indices):
        for q, j in zip(rows.tolist(), cols.tolist()):
            src.append(outputs["pred_masks"][b, q].double().flatten())
            padded = torch.zeros(8, 8, dtype=torch.float64)
            mask = targets[b]["masks"][j]
            padded[: mask.shape[0], : mask.shape[1]] = mask.double()
            tgt.append(padded.flatten())
    src, tgt = torch.stack(src), torch.stack(tgt)
    assert losses["loss_mask"].item() == pytest.approx(_focal_reference(src, tgt, 3.0, 0.25), rel=1e-5)
    p = src.sigmoid()
    dice = (1 - (2 * (p * tgt).sum(1) + 1) / (p.sum(1) + tgt.sum(1) + 1)).sum() / 3.0
    assert losses["loss_dice"].item() == pytest.approx(dice.item(), rel=1e-5)

    # Low-resolution predictions are upsampled to the targets' padded size.
    outputs["pred_masks"] = torch.randn(2, 4, 2, 2, generator=g)
    small = criterion(outputs, targets)
    assert torch.isfinite(small["loss_mask"]) and torch.isfinite(small["loss_dice"])


def test_errors():
    g = torch.Generator().manual_seed(8)
    outputs = _outputs(g, batch=3)
    with pytest.raises(ValueError, match="3 images of predictions but 2 target dicts"):
        _criterion()(outputs, _targets(g, [1, 1]))
    with pytest.raises(ValueError, match=r"unknown losses \['focal'\]; valid ones are \['boxes', 'card"):
        _criterion(losses=["labels", "focal"])
    criterion = _criterion()
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        criterion.get_loss("nope", outputs, [], [], 1.0)
    masks_criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(2, 5, 2), {}, ["masks"])
    with pytest.raises(ValueError, match="pred_masks"):
        masks_criterion(outputs, _targets(g, [1, 1, 1]))
