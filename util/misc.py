"""Batching of variable-size images and small tensor helpers.

The public names of the original ``util/misc.py`` (distributed helpers, metric logging) are
re-exported here so that code written against it keeps working.
"""
from __future__ import annotations

import torch
from torch import Tensor

from util.atomic import write_atomically
from util.dist import (  # noqa: F401  (public names of the original module)
    all_gather,
    get_local_rank,
    get_local_size,
    get_rank,
    get_world_size,
    init_distributed_mode,
    is_dist_avail_and_initialized,
    is_main_process,
    reduce_dict,
    setup_for_distributed,
)
from util.logger import MetricLogger, SmoothedValue  # noqa: F401


class NestedTensor:
    """A padded batch of images, (B, C, H, W), and its padding mask, (B, H, W), True on padding."""

    def __init__(self, tensors: Tensor, mask: Tensor | None):
        self.tensors = tensors
        self.mask = mask

    def to(self, device, non_blocking: bool = False) -> NestedTensor:
        mask = self.mask.to(device, non_blocking=non_blocking) if self.mask is not None else None
        return NestedTensor(self.tensors.to(device, non_blocking=non_blocking), mask)

    def record_stream(self, *args, **kwargs) -> None:
        self.tensors.record_stream(*args, **kwargs)
        if self.mask is not None:
            self.mask.record_stream(*args, **kwargs)

    def decompose(self) -> tuple[Tensor, Tensor | None]:
        return self.tensors, self.mask

    def __repr__(self) -> str:
        mask = None if self.mask is None else tuple(self.mask.shape)
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={mask})"


def nested_tensor_from_tensor_list(tensor_list: list[Tensor]) -> NestedTensor:
    """Pad (C, H_i, W_i) images bottom/right to the batch maximum: (B, C, H, W) and a mask (B, H, W)."""
    if len(tensor_list) == 0:
        raise ValueError("nested_tensor_from_tensor_list: got an empty list of images")
    if any(t.dim() != 3 for t in tensor_list):
        shapes = [tuple(t.shape) for t in tensor_list]
        raise ValueError(f"nested_tensor_from_tensor_list expects (C, H, W) images, got shapes {shapes}")
    channels = {t.shape[0] for t in tensor_list}
    if len(channels) != 1:
        raise ValueError(f"nested_tensor_from_tensor_list: images have different channel counts {channels}")
    c = tensor_list[0].shape[0]
    h = max(t.shape[1] for t in tensor_list)
    w = max(t.shape[2] for t in tensor_list)
    first = tensor_list[0]
    tensor = first.new_zeros((len(tensor_list), c, h, w))
    mask = torch.ones((len(tensor_list), h, w), dtype=torch.bool, device=first.device)
    for img, pad_img, m in zip(tensor_list, tensor, mask):
        pad_img[:, : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return NestedTensor(tensor, mask)


def save_on_master(obj, path: str) -> None:
    """``torch.save(obj, path)`` on the main process only (the original module's name), written as
    ``util.checkpoint.save_checkpoint`` writes (``util.atomic``): a kill mid-write leaves the old file."""
    if is_main_process():
        write_atomically(path, lambda tmp: torch.save(obj, tmp))


def collate_fn(batch: list[tuple]) -> tuple:
    """Collate (image, target) pairs into (NestedTensor, tuple of targets)."""
    images, targets = tuple(zip(*batch))
    return nested_tensor_from_tensor_list(list(images)), targets


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)), with x clamped to [0, 1] and both terms to at least eps."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


@torch.no_grad()
def accuracy(output: Tensor, target: Tensor, topk: tuple[int, ...] = (1,)) -> list[Tensor]:
    """Top-k accuracy in percent of (N, C) logits against (N,) labels."""
    if target.numel() == 0:
        return [torch.zeros([], device=output.device)]
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0) * (100.0 / target.numel()) for k in topk]
