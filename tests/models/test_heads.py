"""The shared head pieces: the reference update against its formula in float64, the auxiliary outputs."""
import math

import torch

from models.heads import aux_outputs, box_from_reference


def _logit(p: float) -> float:
    p = min(max(p, 1e-5), 1 - 1e-5)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_a_box_reference_moves_every_coordinate_and_a_point_the_centre_only():
    deltas = torch.randn(3, 5, 4, dtype=torch.float64)
    boxes = torch.rand(3, 5, 4, dtype=torch.float64)
    points = torch.rand(3, 5, 2, dtype=torch.float64)
    moved_boxes, moved_points = box_from_reference(deltas, boxes), box_from_reference(deltas, points)
    for i in range(3):
        for q in range(5):
            for c in range(4):
                want = _sigmoid(deltas[i, q, c].item() + _logit(boxes[i, q, c].item()))
                assert math.isclose(moved_boxes[i, q, c].item(), want, rel_tol=1e-12)
                shift = _logit(points[i, q, c].item()) if c < 2 else 0.0
                assert math.isclose(moved_points[i, q, c].item(), _sigmoid(deltas[i, q, c].item() + shift),
                                    rel_tol=1e-12)


def test_aux_outputs_are_every_layer_but_the_last():
    logits, boxes = torch.randn(3, 2, 4, 5), torch.rand(3, 2, 4, 4)
    aux = aux_outputs(logits, boxes)
    assert len(aux) == 2
    for layer, out in enumerate(aux):
        assert torch.equal(out["pred_logits"], logits[layer]) and torch.equal(out["pred_boxes"], boxes[layer])
