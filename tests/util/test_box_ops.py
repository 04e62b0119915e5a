import pytest
import torch

from util.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    masks_to_boxes,
    paired_generalized_box_iou,
)


def _reference_iou_giou(a, b):
    """IoU and GIoU of two xyxy boxes given as plain tuples, computed with Python floats."""
    ix0, iy0 = max(a[0], b[0]), max(a[1], b[1])
    ix1, iy1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix1 - ix0) * max(0.0, iy1 - iy0)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    ex0, ey0 = min(a[0], b[0]), min(a[1], b[1])
    ex1, ey1 = max(a[2], b[2]), max(a[3], b[3])
    enclosing = (ex1 - ex0) * (ey1 - ey0)
    iou = inter / union
    return iou, iou - (enclosing - union) / enclosing


def test_conversions_by_hand_and_round_trip():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.0, 0.2]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.1, 0.8, 0.1, 1.0]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)

    random = torch.rand(2, 7, 4, dtype=torch.float64)  # any leading dims
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(random)), random)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(random)), random)


def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [4.0, 0.0, 5.0, 1.0]])
    iou, union = box_iou(a, b)
    # Overlap 1 of union 7; identical boxes; disjoint boxes.
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 4.0, 5.0]]))
    giou = generalized_box_iou(a, b)
    # Enclosing boxes: 3x3 = 9, 2x2 = 4, 5x2 = 10.
    torch.testing.assert_close(giou, torch.tensor([[1 / 7 - 2 / 9, 1.0, 0.0 - 5 / 10]]))


def test_giou_against_scalar_reference_on_random_boxes():
    g = torch.Generator().manual_seed(1)
    def rand_boxes(n):
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64)
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.5
        return torch.cat([xy, xy + wh], dim=1)

    b1, b2 = rand_boxes(5), rand_boxes(6)
    iou, _ = box_iou(b1, b2)
    giou = generalized_box_iou(b1, b2)
    for i in range(5):
        for j in range(6):
            ref_iou, ref_giou = _reference_iou_giou(b1[i].tolist(), b2[j].tolist())
            assert iou[i, j].item() == pytest.approx(ref_iou, abs=1e-12)
            assert giou[i, j].item() == pytest.approx(ref_giou, abs=1e-12)
    b3 = rand_boxes(5)
    paired = paired_generalized_box_iou(b1, b3)
    torch.testing.assert_close(paired, torch.diagonal(generalized_box_iou(b1, b3)))
    assert (giou <= 1).all() and (giou >= -1).all()


def test_giou_rejects_degenerate_and_nonfinite_boxes():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="degenerate"):
        generalized_box_iou(torch.tensor([[0.5, 0.0, 0.4, 1.0]]), good)
    with pytest.raises(ValueError, match="boxes2.*degenerate"):
        generalized_box_iou(good, torch.tensor([[0.0, 0.6, 1.0, 0.5]]))
    with pytest.raises(ValueError, match="NaN"):
        generalized_box_iou(torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), good)
    with pytest.raises(ValueError, match="pair up"):
        paired_generalized_box_iou(good, good.repeat(2, 1))


def test_masks_to_boxes():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True  # rows 1..3, cols 2..6
    masks[1, 5, 0] = True
    boxes = masks_to_boxes(masks)
    expected = torch.tensor([[2.0, 1.0, 6.0, 3.0], [0.0, 5.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(boxes, expected)
    assert masks_to_boxes(torch.zeros(0, 4, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        masks_to_boxes(torch.zeros(4, 4))
