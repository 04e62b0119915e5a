"""Pieces of the prediction heads that every DETR-like detector shares.

``MLP`` (the box head, and the small networks of Conditional DETR), ``box_from_reference`` (how a box
head's output moves a reference point or box: the one place of that arithmetic) and ``aux_outputs``
(the per-decoder-layer predictions the auxiliary losses read).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from util.misc import inverse_sigmoid


class MLP(nn.Module):
    """A feed-forward network: ``num_layers`` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


def box_from_reference(deltas: Tensor, reference: Tensor) -> Tensor:
    """Boxes (..., 4) in [0, 1], normalised cxcywh: sigmoid(delta + logit(reference)).

    ``deltas`` (..., 4) are a box head's outputs; ``reference`` is a box (..., 4), moved as a whole, or
    a point (..., 2), which moves the centre only (the size is the head's alone).
    """
    reference = inverse_sigmoid(reference)
    if reference.shape[-1] == 4:
        return (deltas + reference).sigmoid()
    return torch.cat([deltas[..., :2] + reference, deltas[..., 2:]], -1).sigmoid()


def aux_outputs(logits: Tensor, boxes: Tensor) -> list[dict[str, Tensor]]:
    """The predictions of decoder layers 0..D-2 from the stacked (D, B, Q, ...) logits and boxes, as the
    criterion's ``aux_outputs`` list."""
    return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
