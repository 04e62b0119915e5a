"""How a detector scores classes: its loss, its matcher's class cost and its detections, chosen together.

Two kinds, one object each, shared by ``SetCriterion``, ``HungarianMatcher``, ``PostProcess`` and the
segmentation / panoptic post-processors (the detector registry, ``models/detectors.py``, says which a
detector uses):

- ``SigmoidFocal`` (Deformable DETR, Conditional DETR): ``num_classes`` logits, each an independent
  sigmoid; "no object" is every class off. Sigmoid focal loss; the matcher's focal cost; detections are
  the top-k (query, class) pairs, so a query may appear with several labels.
- ``SoftmaxCrossEntropy`` (DETR): ``num_classes + 1`` logits and a softmax, the last being "no object".
  Cross-entropy with the no-object class weighted by ``--eos_coef``; the matcher's cost is minus the
  probability of the target class; every query is a detection, with its best real class.

Logits are (B, Q, K): B images, Q queries, K = ``num_logits(num_classes)``. Labels are class indices; the
criterion marks an unmatched query with the index ``num_classes`` ("no object" in both kinds).
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The focal cost of the published matchers (Deformable DETR, Conditional DETR) uses these, whatever
# --focal_alpha says: the flag sets the loss's alpha only, as in the public code (docs/design/model.md).
MATCHER_FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
# The class head's bias starts at the logit of this probability, so that training starts from "nothing
# here" for every (query, class) pair instead of a loss dominated by thousands of false positives.
FOCAL_PRIOR_PROB = 0.01


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25,
                       gamma: float = 2) -> Tensor:
    """Focal loss (Lin et al. 2017) of (N, K, ...) logits against same-shape {0, 1} targets.

    The element losses are averaged over dim 1 (queries, or mask pixels), summed over the rest and
    divided by num_boxes. The classification loss multiplies this by the number of queries.
    """
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_boxes


class Classification:
    """The interface; ``SigmoidFocal`` and ``SoftmaxCrossEntropy`` implement it."""

    def num_logits(self, num_classes: int) -> int:
        """Width of the class head for a data set of ``num_classes`` classes."""
        raise NotImplementedError

    def init_head(self, head: nn.Linear) -> None:
        """Initialise the class head's bias as the published detectors of this kind do."""

    def loss(self, logits: Tensor, target_classes: Tensor, num_boxes: float) -> Tensor:
        """logits (B, Q, K), float32; target_classes (B, Q) int64, ``num_classes`` where unmatched."""
        raise NotImplementedError

    def match_cost(self, logits: Tensor, target_ids: Tensor) -> Tensor:
        """logits (N, K) of N queries, float32; target_ids (T,) -> the class cost (N, T) of each pair."""
        raise NotImplementedError

    def class_scores(self, logits: Tensor) -> Tensor:
        """(..., K) -> (..., num_classes): the probability each query gives each real class, float32."""
        raise NotImplementedError

    def detections(self, logits: Tensor, num_select: int) -> tuple[Tensor, Tensor, Tensor]:
        """logits (B, Q, K) -> (scores, labels, query indices), each (B, n): the detections of each image,
        best first for SigmoidFocal, in query order for SoftmaxCrossEntropy."""
        raise NotImplementedError

    @staticmethod
    def num_objects(logits: Tensor) -> Tensor:
        """(B, Q, K) -> (B,): how many queries predict an object, for the logged cardinality error.

        As in every published criterion: a query whose best logit is not the last one. That is DETR's "no
        object"; with sigmoid logits it is a real class, which the published focal criteria count as
        nothing all the same (the number is logged, never trained on).
        """
        return (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)


class SigmoidFocal(Classification):
    """Independent sigmoids and the focal loss (alpha ``--focal_alpha``, gamma 2).

    ``cost_alpha``: the alpha of the matcher's focal cost, the published 0.25 (see MATCHER_FOCAL_ALPHA).
    """

    def __init__(self, alpha: float = 0.25, gamma: float = FOCAL_GAMMA,
                 cost_alpha: float = MATCHER_FOCAL_ALPHA):
        self.alpha = alpha
        self.gamma = gamma
        self.cost_alpha = cost_alpha

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SigmoidFocal:
        return cls(alpha=args.focal_alpha)

    def num_logits(self, num_classes: int) -> int:
        return num_classes

    def init_head(self, head: nn.Linear) -> None:
        nn.init.constant_(head.bias, -math.log((1 - FOCAL_PRIOR_PROB) / FOCAL_PRIOR_PROB))

    def loss(self, logits: Tensor, target_classes: Tensor, num_boxes: float) -> Tensor:
        """Focal loss on one-hot classes, times Q, so that the per-query mean becomes a per-image sum."""
        num_classes = logits.shape[-1]
        # Index num_classes is "no object": its one-hot column is dropped.
        onehot = F.one_hot(target_classes, num_classes + 1)[..., :-1].to(logits.dtype)
        loss = sigmoid_focal_loss(logits, onehot, num_boxes, alpha=self.alpha, gamma=self.gamma)
        return loss * logits.shape[1]

    def match_cost(self, logits: Tensor, target_ids: Tensor) -> Tensor:
        """The focal loss a query would pay if the target's class were its positive minus the one it pays
        while that class is a negative."""
        prob = logits.sigmoid()
        alpha, gamma = self.cost_alpha, self.gamma
        neg_cost = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
        pos_cost = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
        return pos_cost[:, target_ids] - neg_cost[:, target_ids]

    def class_scores(self, logits: Tensor) -> Tensor:
        return logits.float().sigmoid()

    def detections(self, logits: Tensor, num_select: int) -> tuple[Tensor, Tensor, Tensor]:
        """The ``num_select`` best of the Q * K (query, class) scores."""
        bs, _, num_classes = logits.shape
        prob = logits.float().sigmoid().view(bs, -1)  # (B, Q*K), index = query * K + class
        scores, flat_idx = prob.topk(min(num_select, prob.shape[1]), dim=1)
        return scores, flat_idx % num_classes, torch.div(flat_idx, num_classes, rounding_mode="floor")


class SoftmaxCrossEntropy(Classification):
    """A softmax over the classes and "no object" (the last logit), whose loss weight is ``eos_coef``:
    most queries are unmatched, and at full weight they would teach every query to say nothing."""

    def __init__(self, eos_coef: float = 0.1):
        self.eos_coef = eos_coef

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SoftmaxCrossEntropy:
        return cls(eos_coef=args.eos_coef)

    def num_logits(self, num_classes: int) -> int:
        return num_classes + 1

    def loss(self, logits: Tensor, target_classes: Tensor, num_boxes: float) -> Tensor:
        """Cross-entropy averaged over every query with the class weights (not divided by num_boxes)."""
        weight = torch.ones(logits.shape[-1], dtype=logits.dtype, device=logits.device)
        weight[-1] = self.eos_coef
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight)

    def match_cost(self, logits: Tensor, target_ids: Tensor) -> Tensor:
        return -logits.softmax(-1)[:, target_ids]

    def class_scores(self, logits: Tensor) -> Tensor:
        return logits.float().softmax(-1)[..., :-1]

    def detections(self, logits: Tensor, num_select: int) -> tuple[Tensor, Tensor, Tensor]:
        """Every query, with its most probable real class; ``num_select`` does not apply (DETR's queries
        are its detections)."""
        scores, labels = self.class_scores(logits).max(-1)
        queries = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
        return scores, labels, queries
