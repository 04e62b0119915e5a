"""The training and evaluation loops."""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from datasets.coco_eval import CocoEvaluator
from datasets.data_prefetcher import DataPrefetcher
from util.dist import reduce_dict
from util.logger import MetricLogger, SmoothedValue

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The loss became inf or NaN; training must stop before the weights are corrupted."""


def autocast(device: torch.device, amp: str | None):
    """Mixed precision for the model's forward pass (a no-op context when amp is None)."""
    if amp is None:
        return torch.autocast(device_type=device.type, enabled=False)
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def to_float32(obj):
    """Outputs of an autocast forward pass back in float32 for the matcher and losses.

    The Hungarian matcher hands costs to scipy, which cannot read bfloat16, and focal/GIoU losses
    are better computed in full precision.
    """
    if isinstance(obj, Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float32(v) for v in obj)
    return obj


def _limited(iterable: Iterable, limit: int) -> Iterator:
    for i, item in enumerate(iterable):
        if limit and i >= limit:
            return
        yield item


def _check_finite(loss_dict: dict[str, Tensor], weight_dict: dict[str, float], total: float) -> None:
    if math.isfinite(total):
        return
    bad = sorted(k for k, v in loss_dict.items() if not math.isfinite(float(v.detach())))
    weighted = sorted(k for k in bad if k in weight_dict)
    shown = ", ".join(f"{k}={float(loss_dict[k].detach())}" for k in (weighted or bad))
    raise NonFiniteLossError(
        f"loss is {total}, stopping training; non-finite terms: {shown or 'none (overflow in the sum)'}. "
        "The last checkpoint written is the last good one. Try a lower --lr, --clip_max_norm, "
        "or training without --amp fp16."
    )


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader: Iterable,
                    optimizer: torch.optim.Optimizer, device: torch.device, epoch: int,
                    max_norm: float = 0, print_freq: int = 10, max_iters: int = 0,
                    amp: str | None = None, scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One pass over ``data_loader`` (or its first ``max_iters`` batches); returns epoch averages."""
    model.train()
    criterion.train()
    logger = MetricLogger(delimiter="  ")
    logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    logger.add_meter("grad_norm", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    total = len(data_loader) if not max_iters else min(max_iters, len(data_loader))
    weight_dict = criterion.weight_dict
    batches = _limited(DataPrefetcher(data_loader, device, prefetch=True), max_iters)
    for samples, targets in logger.log_every(batches, print_freq, f"Epoch: [{epoch}]", total=total):
        with autocast(device, amp):
            outputs = model(samples)
        loss_dict = criterion(to_float32(outputs), targets)
        losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)

        # The same numbers on every rank, so that every rank stops together on a bad loss.
        loss_dict_reduced = reduce_dict(loss_dict)
        scaled = {f"{k}_scaled": v * weight_dict[k] for k, v in loss_dict_reduced.items() if k in weight_dict}
        unscaled = {f"{k}_unscaled": v for k, v in loss_dict_reduced.items()}
        loss_value = sum(scaled.values()).item()
        _check_finite(loss_dict_reduced, weight_dict, loss_value)

        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(losses).backward()
            scaler.unscale_(optimizer)
        else:
            losses.backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if max_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            grads = [p.grad.detach().norm() for p in params if p.grad is not None]
            grad_norm = torch.stack(grads).norm() if grads else torch.zeros(())
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

        logger.update(loss=loss_value, **scaled, **unscaled)
        if "class_error" in loss_dict_reduced:
            logger.update(class_error=loss_dict_reduced["class_error"])
        logger.update(lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm)
    logger.synchronize_between_processes()
    print("Averaged stats:", logger, flush=True)
    return {k: meter.global_avg for k, meter in logger.meters.items() if meter.count}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, postprocessors: dict, data_loader: Iterable,
             base_ds, device: torch.device, output_dir: str = "", print_freq: int = 10,
             max_iters: int = 0, amp: str | None = None, eval_backend: str = "pycocotools"):
    """Losses and COCO box AP on ``data_loader``; the predictions of every rank are merged first.

    Returns (stats, coco_evaluator): stats holds the averaged losses and ``coco_eval_bbox`` (the 12
    COCOeval numbers); coco_evaluator is None when the postprocessors have no 'bbox' entry.
    """
    model.eval()
    criterion.eval()
    logger = MetricLogger(delimiter="  ")
    logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    iou_types = tuple(k for k in ("segm", "bbox") if k in postprocessors)
    # COCO panoptic without instance annotations has no COCO ground truth: PQ only.
    coco_evaluator = (CocoEvaluator(base_ds, iou_types, backend=eval_backend)
                      if iou_types and base_ds is not None else None)
    panoptic_evaluator = None
    if "panoptic" in postprocessors:
        from datasets.panoptic_eval import build_panoptic_evaluator

        panoptic_evaluator = build_panoptic_evaluator(data_loader, output_dir)
    weight_dict = criterion.weight_dict
    total = len(data_loader) if not max_iters else min(max_iters, len(data_loader))
    batches = _limited(DataPrefetcher(data_loader, device, prefetch=True), max_iters)
    for samples, targets in logger.log_every(batches, print_freq, "Test:", total=total):
        with autocast(device, amp):
            outputs = model(samples)
        outputs = to_float32(outputs)
        loss_dict_reduced = reduce_dict(criterion(outputs, targets))
        scaled = {f"{k}_scaled": v * weight_dict[k] for k, v in loss_dict_reduced.items() if k in weight_dict}
        unscaled = {f"{k}_unscaled": v for k, v in loss_dict_reduced.items()}
        logger.update(loss=sum(scaled.values()), **scaled, **unscaled)
        if "class_error" in loss_dict_reduced:
            logger.update(class_error=loss_dict_reduced["class_error"])

        orig_target_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
        results = postprocessors["bbox"](outputs, orig_target_sizes)
        if "segm" in postprocessors:
            target_sizes = torch.stack([t["size"] for t in targets], dim=0)
            results = postprocessors["segm"](results, outputs, orig_target_sizes, target_sizes)
        if coco_evaluator is not None:
            coco_evaluator.update({t["image_id"].item(): r for t, r in zip(targets, results)})
        if panoptic_evaluator is not None:
            target_sizes = torch.stack([t["size"] for t in targets], dim=0)
            panoptic = postprocessors["panoptic"](outputs, target_sizes, orig_target_sizes)
            panoptic_evaluator.update(panoptic, targets)

    logger.synchronize_between_processes()
    print("Averaged stats:", logger, flush=True)
    stats = {k: meter.global_avg for k, meter in logger.meters.items() if meter.count}
    if coco_evaluator is not None:
        coco_evaluator.synchronize_between_processes()
        coco_evaluator.accumulate()
        coco_evaluator.summarize()
        for iou_type in iou_types:
            stats[f"coco_eval_{iou_type}"] = coco_evaluator.coco_eval[iou_type].stats.tolist()
    if panoptic_evaluator is not None:
        panoptic_evaluator.synchronize_between_processes()
        pq = panoptic_evaluator.summarize()
        stats.update(PQ_all=pq["All"], PQ_th=pq["Things"], PQ_st=pq["Stuff"])
    return stats, coco_evaluator

