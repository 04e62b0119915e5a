"""``--use_checkpoint``: recompute a block's activations in the backward pass instead of storing them."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def maybe_checkpointed(enabled: bool, fn: Callable, *inputs):
    """fn(*inputs), with its activations recomputed in the backward pass instead of stored when
    ``enabled`` and autograd is recording. The recomputation replays the saved RNG state, so dropout
    draws the same masks and the gradients equal those of the stored pass."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *inputs, use_reentrant=False)
    return fn(*inputs)
