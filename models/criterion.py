"""The set-prediction losses of the DETR family: match, then score each matched pair.

The class loss is the detector's ``models.classification`` kind (sigmoid focal, or softmax cross-entropy);
the box and mask losses are the same for every detector.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.classification import Classification, SigmoidFocal, sigmoid_focal_loss
from util.box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou
from util.dist import all_reduce, get_world_size
from util.misc import accuracy


def dice_loss(inputs: Tensor, targets: Tensor, num_boxes: float) -> Tensor:
    """1 - Dice coefficient (smoothed by 1) of (N, P) mask logits against (N, P) {0, 1} masks.

    Summed over the masks and divided by num_boxes.
    """
    prob = inputs.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (prob * targets).sum(1)
    denominator = prob.sum(1) + targets.sum(1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


def _pad_masks(masks: list[Tensor]) -> Tensor:
    """Stack per-image (n_i, H_i, W_i) masks, zero-padded bottom/right: (B, max n, max H, max W)."""
    n = max(m.shape[0] for m in masks)
    h = max(m.shape[1] for m in masks)
    w = max(m.shape[2] for m in masks)
    out = torch.zeros((len(masks), n, h, w), dtype=torch.float32, device=masks[0].device)
    for m, o in zip(masks, out):
        o[: m.shape[0], : m.shape[1], : m.shape[2]] = m
    return out


class SetCriterion(nn.Module):
    """Hungarian-match predictions to targets, then compute the requested losses on the pairs.

    Every loss is computed in float32, also when the model ran under autocast. Outputs of
    ``num_streams`` = 2 (two-stream BatchFormerV2 training: 2B predictions for B targets) are scored
    against the targets repeated twice, [t ; t], so the loss normaliser num_boxes doubles too.
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict[str, float], losses: list[str],
                 focal_alpha: float = 0.25, classification: Classification | None = None):
        """``classification``: the detector's kind (``models.classification``); without one, the sigmoid
        focal loss with alpha ``focal_alpha`` (Deformable DETR's, the public signature)."""
        super().__init__()
        unknown = [name for name in losses if name not in self._loss_map()]
        if unknown:
            raise ValueError(
                f"SetCriterion: unknown losses {unknown}; valid ones are {sorted(self._loss_map())}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.losses = losses
        self.classification = SigmoidFocal(alpha=focal_alpha) if classification is None else classification

    def _loss_map(self) -> dict:
        return {
            "labels": self.loss_labels,
            "cardinality": self.loss_cardinality,
            "boxes": self.loss_boxes,
            "masks": self.loss_masks,
        }

    @staticmethod
    def _src_permutation_idx(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """(image index, query index) of every matched prediction, image by image."""
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    @staticmethod
    def _tgt_permutation_idx(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(tgt, i) for i, (_, tgt) in enumerate(indices)])
        tgt_idx = torch.cat([tgt for _, tgt in indices])
        return batch_idx, tgt_idx

    def loss_labels(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float,
                    log: bool = True) -> dict[str, Tensor]:
        """The classification's loss of the logits (B, Q, K): matched queries have their target's class,
        the others "no object" (index num_classes)."""
        src_logits = outputs["pred_logits"].float()
        idx = self._src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes_o = target_classes_o.to(src_logits.device)
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=src_logits.device)
        target_classes[idx] = target_classes_o
        losses = {"loss_ce": self.classification.loss(src_logits, target_classes, num_boxes)}
        if log:
            losses["class_error"] = 100 - accuracy(src_logits[idx], target_classes_o)[0]
        return losses

    @torch.no_grad()
    def loss_cardinality(self, outputs: dict, targets: list[dict], indices: list,
                         num_boxes: float) -> dict[str, Tensor]:
        """L1 between the number of predicted objects (``Classification.num_objects``) and of targets;
        logged only, no gradient."""
        logits = outputs["pred_logits"]
        tgt_lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
        card_pred = self.classification.num_objects(logits)
        return {"cardinality_error": F.l1_loss(card_pred.float(), tgt_lengths.float())}

    def loss_boxes(self, outputs: dict, targets: list[dict], indices: list,
                   num_boxes: float) -> dict[str, Tensor]:
        """L1 on cxcywh and 1 - GIoU on xyxy of the matched pairs, each summed and divided by num_boxes."""
        idx = self._src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx].float()  # (N, 4)
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0)
        target_boxes = target_boxes.to(src_boxes.device, torch.float32)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")
        giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": (1 - giou).sum() / num_boxes}

    def loss_masks(self, outputs: dict, targets: list[dict], indices: list,
                   num_boxes: float) -> dict[str, Tensor]:
        """Sigmoid focal and dice losses of the matched masks.

        pred_masks (B, Q, h, w) are upsampled bilinearly to the padded size (H, W) of the targets'
        masks, which are padded to the largest image of the batch.
        """
        if "pred_masks" not in outputs:
            raise ValueError(
                "SetCriterion: the 'masks' loss needs outputs['pred_masks']; build the model with --masks"
            )
        if any("masks" not in t for t in targets):
            raise ValueError(
                "SetCriterion: the 'masks' loss needs a 'masks' entry (n, H, W) in every target dict"
            )
        src_idx = self._src_permutation_idx(indices)
        tgt_idx = self._tgt_permutation_idx(indices)
        src_masks = outputs["pred_masks"][src_idx].float()  # (N, h, w)
        target_masks = _pad_masks([t["masks"] for t in targets]).to(src_masks.device)[tgt_idx]  # (N, H, W)
        src_masks = F.interpolate(src_masks[:, None], size=target_masks.shape[-2:], mode="bilinear",
                                  align_corners=False)[:, 0]
        src_masks = src_masks.flatten(1)
        target_masks = target_masks.flatten(1)
        return {
            "loss_mask": sigmoid_focal_loss(src_masks, target_masks, num_boxes),
            "loss_dice": dice_loss(src_masks, target_masks, num_boxes),
        }

    def get_loss(self, loss: str, outputs: dict, targets: list[dict], indices: list, num_boxes: float,
                 **kwargs) -> dict[str, Tensor]:
        loss_map = self._loss_map()
        if loss not in loss_map:
            raise ValueError(f"SetCriterion: unknown loss {loss!r}; valid ones are {sorted(loss_map)}")
        return loss_map[loss](outputs, targets, indices, num_boxes, **kwargs)

    def _align_targets(self, outputs: dict, targets: list[dict]) -> list[dict]:
        """The targets of each prediction: the B targets once per stream (``outputs['num_streams']``,
        1 when absent)."""
        n_pred = outputs["pred_logits"].shape[0]
        num_streams = outputs.get("num_streams", 1)
        targets = list(targets) * num_streams
        if n_pred != len(targets):
            given = len(targets) // num_streams
            raise ValueError(
                f"SetCriterion: outputs carry {n_pred} images of predictions but {given} target dicts were "
                f"given (expected {n_pred // num_streams}: outputs['num_streams'] is {num_streams})"
            )
        return targets

    def _num_boxes(self, targets: list[dict], device: torch.device) -> float:
        """Targets per process over the whole job, at least 1: the normaliser of every loss."""
        num_boxes = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        all_reduce(num_boxes)
        return torch.clamp(num_boxes / get_world_size(), min=1).item()

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """outputs: the model's dict (pred_logits, pred_boxes, aux_outputs, enc_outputs, pred_masks,
        num_streams);
        targets: one dict per image (labels, boxes, and masks for the 'masks' loss).

        Returns unweighted losses; suffix `_i` for decoder layer i's auxiliary outputs, `_enc`
        for the two-stage encoder proposals. Weights are in `self.weight_dict`.
        """
        targets = self._align_targets(outputs, targets)
        device = outputs["pred_logits"].device
        num_boxes = self._num_boxes(targets, device)
        # Inputs are cast to float32 in each loss; autocast must not cast them back down.
        with torch.autocast(device_type=device.type, enabled=False):
            return self._all_losses(outputs, targets, num_boxes)

    def _all_losses(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict[str, Tensor]:
        main_outputs = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        indices = self.matcher(main_outputs, targets)
        losses = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, main_outputs, targets, indices, num_boxes))

        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._intermediate_losses(aux_outputs, targets, num_boxes, f"_{i}"))

        if "enc_outputs" in outputs:
            # The encoder proposals are class-agnostic: every target is an object of class 0.
            bin_targets = []
            for t in targets:
                t = copy.copy(t)
                t["labels"] = torch.zeros_like(t["labels"])
                bin_targets.append(t)
            losses.update(self._intermediate_losses(outputs["enc_outputs"], bin_targets, num_boxes, "_enc"))
        return losses

    def _intermediate_losses(self, outputs: dict, targets: list[dict], num_boxes: float,
                             suffix: str) -> dict[str, Tensor]:
        """Losses of one decoder layer or of the encoder: no masks (too costly), nothing logged."""
        indices = self.matcher(outputs, targets)
        losses = {}
        for loss in self.losses:
            if loss == "masks":
                continue
            kwargs = {"log": False} if loss == "labels" else {}
            for name, value in self.get_loss(loss, outputs, targets, indices, num_boxes, **kwargs).items():
                losses[name + suffix] = value
        return losses
