"""Hungarian matching of predictions to ground-truth objects, one image at a time."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from models.classification import FOCAL_GAMMA, MATCHER_FOCAL_ALPHA, Classification, SigmoidFocal
from util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising

        cost_bbox * L1(cxcywh) + cost_class * class cost + cost_giou * (-GIoU).

    The class cost is the detector's classification's (``models.classification``): the focal cost
    (alpha 0.25, gamma 2) of Deformable DETR and Conditional DETR, or DETR's minus the probability of the
    target class. Every target is matched; the other queries stay unmatched (they are the "no object"
    predictions).
    """

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1,
                 focal_alpha: float = MATCHER_FOCAL_ALPHA, focal_gamma: float = FOCAL_GAMMA,
                 classification: Classification | None = None):
        """Without ``classification``, the focal cost with ``focal_alpha`` and ``focal_gamma``."""
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError(
                "HungarianMatcher: all costs are 0 (set_cost_class/bbox/giou); the match would be arbitrary"
            )
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        if classification is None:
            classification = SigmoidFocal(gamma=focal_gamma, cost_alpha=focal_alpha)
        self.classification = classification

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """outputs: `pred_logits` (B, Q, C), `pred_boxes` (B, Q, 4); targets: B dicts of `labels`, `boxes`.

        Returns, per image, (query indices, target indices): two int64 tensors of length
        min(Q, n_targets), with target j of the image matched to query i.
        """
        logits = outputs["pred_logits"]
        bs, num_queries = logits.shape[:2]
        if len(targets) != bs:
            raise ValueError(f"HungarianMatcher: {bs} images of predictions but {len(targets)} target dicts")
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]

        # All images at once: (B*Q, T) with T the targets of the whole batch; only each image's
        # own block is used. float32 whatever the autocast dtype, so costs of close boxes stay apart.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            out_bbox = outputs["pred_boxes"].flatten(0, 1).float()  # (B*Q, 4)
            tgt_ids = torch.cat([t["labels"] for t in targets])
            tgt_bbox = torch.cat([t["boxes"] for t in targets]).float()

            cost_class = self.classification.match_cost(logits.flatten(0, 1).float(), tgt_ids)  # (B*Q, T)
            cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
            cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
            cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

        if not torch.isfinite(cost).all():
            raise ValueError("HungarianMatcher: the cost matrix has NaN/inf entries (non-finite predictions)")
        cost = cost.view(bs, num_queries, -1).cpu()
        indices = []
        for i, block in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(block[i].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64),
                            torch.as_tensor(cols, dtype=torch.int64)))
        return indices


def build_matcher(args, classification: Classification | None = None) -> HungarianMatcher:
    """The matcher of ``args`` with the detector's ``classification`` (the focal cost without one). As in
    the published matchers, the focal cost keeps alpha 0.25 whatever --focal_alpha says."""
    return HungarianMatcher(cost_class=args.set_cost_class, cost_bbox=args.set_cost_bbox,
                            cost_giou=args.set_cost_giou, classification=classification)
