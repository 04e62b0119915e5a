"""Box conversions and overlap measures.

Boxes are (..., 4) tensors, either centre form (cx, cy, w, h) or corner form (x0, y0, x1, y1).
"""
from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(x: Tensor) -> Tensor:
    cx, cy, w, h = x.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(x: Tensor) -> Tensor:
    x0, y0, x1, y1 = x.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of (..., 4) xyxy boxes."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _check_xyxy(boxes: Tensor, name: str) -> None:
    """GIoU's enclosing box is only meaningful if x1 >= x0 and y1 >= y0 for every box."""
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name}: expected boxes of shape (..., 4) in xyxy form, got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{name}: boxes contain NaN or infinite values (did the loss diverge?)")
    bad = boxes[..., 2:] < boxes[..., :2]
    if bad.any():
        first = bad.any(-1).nonzero()[0].tolist()
        raise ValueError(
            f"{name}: degenerate boxes (x1 < x0 or y1 < y0), e.g. at index {first}: "
            f"{boxes[tuple(first)].tolist()}; boxes must be xyxy with x1 >= x0 and y1 >= y0"
        )


def _iou_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union area of broadcastable (..., 4) xyxy boxes."""
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union, union


def _giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of broadcastable (..., 4) xyxy boxes: IoU - (enclosing area - union) / enclosing area."""
    iou, union = _iou_union(boxes1, boxes2)
    top_left = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union of (N, 4) and (M, 4) xyxy boxes: two (N, M) tensors."""
    return _iou_union(boxes1[:, None, :], boxes2[None, :, :])


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of (N, 4) and (M, 4) xyxy boxes: (N, M)."""
    _check_xyxy(boxes1, "generalized_box_iou boxes1")
    _check_xyxy(boxes2, "generalized_box_iou boxes2")
    return _giou(boxes1[:, None, :], boxes2[None, :, :])


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of matching rows of (N, 4) and (N, 4) xyxy boxes: (N,), the diagonal of the pairwise one."""
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            "paired_generalized_box_iou: boxes must pair up, "
            f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    _check_xyxy(boxes1, "paired_generalized_box_iou boxes1")
    _check_xyxy(boxes2, "paired_generalized_box_iou boxes2")
    return _giou(boxes1, boxes2)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight xyxy boxes, in pixel indices (inclusive), around (N, H, W) masks: (N, 4).

    An empty mask gives the box (0, 0, 0, 0).
    """
    if masks.dim() != 3:
        raise ValueError(f"masks_to_boxes expects (N, H, W) masks, got shape {tuple(masks.shape)}")
    if masks.numel() == 0:
        return torch.zeros((masks.shape[0], 4), device=masks.device)
    h, w = masks.shape[-2:]
    filled = masks.bool()
    rows = filled.any(dim=2)  # (N, H)
    cols = filled.any(dim=1)  # (N, W)
    ys = torch.arange(h, device=masks.device, dtype=torch.float)
    xs = torch.arange(w, device=masks.device, dtype=torch.float)
    big = float(max(h, w))
    y_min = torch.where(rows, ys, big).min(dim=1).values
    y_max = torch.where(rows, ys, -1.0).max(dim=1).values
    x_min = torch.where(cols, xs, big).min(dim=1).values
    x_max = torch.where(cols, xs, -1.0).max(dim=1).values
    boxes = torch.stack((x_min, y_min, x_max, y_max), dim=1)
    empty = ~rows.any(dim=1)
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)
