"""From the model's outputs to COCO-style detections in the pixel space of the original images."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.classification import Classification, SigmoidFocal
from util.box_ops import box_cxcywh_to_xyxy


class PostProcess(nn.Module):
    """The detections of each image, as the detector's classification selects them
    (``Classification.detections``).

    With sigmoid scores (the default) every class of every query is a candidate, so the `num_select`
    best of the Q * C scores are kept and a query may appear several times with different labels; with
    DETR's softmax every query is one detection with its best real class.
    """

    def __init__(self, num_select: int = 100, classification: Classification | None = None):
        super().__init__()
        self.num_select = num_select
        self.classification = SigmoidFocal() if classification is None else classification

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """outputs: `pred_logits` (B, Q, C), `pred_boxes` (B, Q, 4) normalised cxcywh;
        target_sizes: (B, 2) as (h, w) of each original image.

        Returns B dicts of `scores` (k,), `labels` (k,) int64, `boxes` (k, 4) xyxy in pixels.
        """
        batch = self.batched(outputs, target_sizes)
        return [{"scores": s, "labels": lab, "boxes": b}
                for s, lab, b in zip(batch["scores"], batch["labels"], batch["boxes"])]

    @torch.no_grad()
    def batched(self, outputs: dict, target_sizes: Tensor) -> dict[str, Tensor]:
        """``forward``'s detections as batch tensors: `scores` (B, k), `labels` (B, k) int64, `boxes`
        (B, k, 4) xyxy in pixels; what an exported graph computes (tools/export_onnx.py)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if target_sizes.dim() != 2 or target_sizes.shape[1] != 2:
            raise ValueError(
                f"PostProcess: target_sizes must be (B, 2) as (h, w), got {tuple(target_sizes.shape)}"
            )
        if logits.shape[0] != target_sizes.shape[0]:  # not len(): it would fix an exported batch size
            raise ValueError(f"PostProcess: {logits.shape[0]} images of predictions but "
                             f"{target_sizes.shape[0]} target sizes")
        scores, labels, query_idx = self.classification.detections(logits, self.num_select)  # (B, k) each
        xyxy = box_cxcywh_to_xyxy(boxes.float())
        xyxy = torch.gather(xyxy, 1, query_idx.unsqueeze(-1).expand(-1, -1, 4))  # (B, k, 4)
        img_h, img_w = target_sizes.float().unbind(1)
        scale = torch.stack([img_w, img_h, img_w, img_h], dim=1).to(xyxy.device)  # (B, 4)
        return {"scores": scores, "labels": labels, "boxes": xyxy * scale[:, None, :]}
