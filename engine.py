"""The training and evaluation loops."""
from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from datasets.coco_eval import CocoEvaluator, per_class_table
from datasets.data_prefetcher import DataPrefetcher
from util.dist import reduce_dict
from util.logger import MetricLogger, SmoothedValue
from util.tensorboard_writer import TensorBoardWriter

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# What the progress lines show unless print_all_terms: the loss and the main terms of the last
# decoder layer (the keys without a layer suffix). Every term still reaches the returned stats.
PROGRESS_TERMS = ("lr", "loss", "loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "class_error",
                  "grad_norm")

# --amp fp16: GradScaler skips a step whose gradients overflow and lowers the scale; a few skips are
# normal, a long run of them means training has broken down.
MAX_CONSECUTIVE_SKIPS = 100

# Epoch statistics that are totals, not averages over the iterations.
EPOCH_COUNTS = ("amp_skipped_steps",)

# Consecutive skipped steps per GradScaler: a run of skips may span an epoch boundary.
_consecutive_skips: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class NonFiniteLossError(FloatingPointError):
    """The loss became inf or NaN; training must stop before the weights are corrupted."""


class UnusedParametersError(RuntimeError):
    """Trainable parameters got no gradient, which DistributedDataParallel cannot handle by default."""


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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _params_without_grad(model: nn.Module) -> list[str]:
    return [n for n, p in _unwrap(model).named_parameters() if p.requires_grad and p.grad is None]


def _unused_message(names: list[str], when: str) -> str:
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    where = f"{len(names)} trainable parameter(s) got no gradient {when}: {shown}" if names else (
        f"trainable parameters got no gradient {when} on another process")
    return (f"{where}. DistributedDataParallel cannot train a model with parameters outside the loss unless "
            "told to look for them every step: pass --find_unused_parameters (slower), or freeze those "
            "parameters (requires_grad=False).")


def _forward(model: nn.Module, samples, device: torch.device, amp: str | None):
    try:
        with autocast(device, amp):
            return model(samples)
    except RuntimeError as e:
        # DDP without find_unused_parameters notices a parameter left out of the previous step's loss
        # only here, at the next forward; the previous step's gradients are still in place.
        if "find_unused_parameters" not in str(e):
            raise
        names = _params_without_grad(model)
        raise UnusedParametersError(_unused_message(names, "in the previous step")) from e


def _grad_norm(params: list[Tensor], max_norm: float) -> Tensor:
    """Total gradient norm (before clipping); clips to max_norm when it is positive."""
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad.detach().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


def _non_finite_terms(terms: dict[str, float], weight_dict: dict[str, float]) -> str:
    bad = sorted(k for k, v in terms.items() if not math.isfinite(v))
    weighted = [k for k in bad if k in weight_dict]
    return ", ".join(f"{k}={terms[k]}" for k in (weighted or bad)) or "none (overflow in the sum)"


# The predictions the matcher reads, in the last decoder layer's outputs and each of aux_outputs and
# enc_outputs.
_MATCHED = ("pred_logits", "pred_boxes")


def _prediction_sets(outputs: dict) -> list[tuple[str, dict]]:
    """Each set of predictions in the model's outputs, named with the layer that made it."""
    sets = [("the last decoder layer", outputs)]
    sets += [(f"decoder layer {i} (aux_outputs[{i}])", aux)
             for i, aux in enumerate(outputs.get("aux_outputs", []))]
    if "enc_outputs" in outputs:
        sets.append(("the encoder proposals (enc_outputs)", outputs["enc_outputs"]))
    return sets


def _non_finite_outputs(outputs: dict) -> list[str]:
    """The model's predictions that hold NaN or inf (one device read each: for messages only)."""
    return [f"{key} of {where}" for where, out in _prediction_sets(outputs)
            for key in ("pred_logits", "pred_boxes", "pred_masks")
            if isinstance(out.get(key), Tensor) and not torch.isfinite(out[key]).all()]


def _finite_copy(out: dict) -> dict:
    """``out`` with NaN -> 0, +inf -> 1, -inf -> 0 in the predictions the matcher reads."""
    return {**out, **{k: torch.nan_to_num(out[k], nan=0.0, posinf=1.0, neginf=0.0)
                      for k in _MATCHED if k in out}}


def _criterion(criterion: nn.Module, outputs: dict, targets) -> dict[str, Tensor]:
    """The criterion's losses, NaN when a prediction the matcher reads is not finite.

    Such predictions (fp16 overflow, a diverged model) leave no finite matching cost: the matcher,
    and the GIoU of the boxes, would stop with an error. The criterion gets them with NaN -> 0,
    +inf -> 1, -inf -> 0 instead (the same values and gradients wherever they are finite), and NaN is
    added to every loss if any was not: the step then has its usual terms and graph, every process
    takes part in the loss reduction and DistributedDataParallel's gradient all-reduce as in any
    step, and all of them find the step not finite (a stop, or a skip under --amp fp16) together.
    """
    checked = [out[k] for _, out in _prediction_sets(outputs) for k in _MATCHED if k in out]
    if not checked:
        return criterion(outputs, targets)
    stand_in = _finite_copy(outputs)
    if "aux_outputs" in outputs:
        stand_in["aux_outputs"] = [_finite_copy(aux) for aux in outputs["aux_outputs"]]
    if "enc_outputs" in outputs:
        stand_in["enc_outputs"] = _finite_copy(outputs["enc_outputs"])
    finite = torch.stack([torch.isfinite(t).all() for t in checked]).all()  # stays on the device
    nan_if_not = torch.where(finite, 0.0, math.nan)
    return {k: v + nan_if_not for k, v in criterion(stand_in, targets).items()}


def _what_was_not_finite(loss: float, terms: dict[str, float], weight_dict: dict[str, float],
                         grad_norm: float, outputs: dict) -> str:
    if math.isfinite(loss):
        return f"gradients not finite: total norm {grad_norm}, with a finite loss of {loss:.4f}"
    bad = _non_finite_outputs(outputs)
    if bad:
        return (f"the model's outputs hold NaN/inf in {', '.join(bad)}, so neither the matching cost nor "
                "the loss is finite")
    return f"loss is {loss}; non-finite terms: {_non_finite_terms(terms, weight_dict)}"


def _weighted(terms: dict[str, float], weight_dict: dict[str, float]) -> dict[str, float]:
    """The terms of the loss, each times its weight (the public log's ``loss_ce``)."""
    return {k: v * weight_dict[k] for k, v in terms.items() if k in weight_dict}


def _log_terms(logger: MetricLogger, loss: float, terms: dict[str, float],
               weight_dict: dict[str, float]) -> None:
    """The public log names: ``loss_ce`` weighted, ``loss_ce_unscaled`` raw; ``class_error`` as is."""
    logger.update(loss=loss, **_weighted(terms, weight_dict),
                  **{f"{k}_unscaled": v for k, v in terms.items()})
    if "class_error" in terms:
        logger.update(class_error=terms["class_error"])


_ADVICE = ("The last checkpoint written is the last good one. Try a lower --lr, --clip_max_norm, "
           "or training without --amp fp16.")


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader: Iterable,
                    optimizer: torch.optim.Optimizer, device: torch.device, epoch: int,
                    max_norm: float = 0, print_freq: int = 10, max_iters: int = 0,
                    amp: str | None = None, scaler: torch.amp.GradScaler | None = None, *,
                    find_unused_parameters: bool = False, print_all_terms: bool = False,
                    max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPS, start_iteration: int = 0,
                    tensorboard: TensorBoardWriter | None = None) -> dict[str, float]:
    """One pass over ``data_loader`` (or its first ``max_iters`` batches); returns epoch averages.

    The returned stats use the public log names: ``loss_ce`` is the weighted term, ``loss_ce_unscaled``
    the raw one. Without ``scaler`` a non-finite loss or gradient stops training before the update
    (NonFiniteLossError, naming the iteration, the terms and the non-finite outputs). With ``scaler``
    (``--amp fp16``) such a step is skipped, as GradScaler intends, and counted
    (``amp_skipped_steps``); it enters no average. Training stops only after
    ``max_consecutive_skips`` skipped steps in a row. Non-finite predictions make the loss NaN
    (``_criterion``), not an error of the matcher.

    After the first backward pass every trainable parameter must have a gradient, unless
    ``find_unused_parameters`` (or the DDP model was built with it): DDP without that option would
    fail at the next step with an error that names neither the parameters nor the flag.

    ``start_iteration``: the epoch's iterations done before ``data_loader``'s first batch (a
    mid-epoch resume). ``tensorboard``: receives the figures of each iteration a progress line shows.
    """
    model.train()
    criterion.train()
    logger = MetricLogger(delimiter="  ", shown=None if print_all_terms else PROGRESS_TERMS)
    logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    logger.add_meter("grad_norm", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    total = len(data_loader) if not max_iters else min(max_iters, len(data_loader))
    epoch_length = start_iteration + total
    weight_dict = criterion.weight_dict
    params = [p for g in optimizer.param_groups for p in g["params"]]
    check_unused = not (find_unused_parameters or getattr(model, "find_unused_parameters", False))
    skipped = 0
    step_figures: dict[str, float] = {}

    def write_iteration(i: int, iteration_seconds: float, data_seconds: float) -> None:
        figures = {**step_figures, "iteration_time": iteration_seconds, "data_time": data_seconds}
        if device.type == "cuda":
            figures["max_memory_allocated_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
        tensorboard.iteration(epoch, start_iteration + i, figures)

    batches = _limited(DataPrefetcher(data_loader, device, prefetch=True), max_iters)
    for i, (samples, targets) in enumerate(logger.log_every(
            batches, print_freq, f"Epoch: [{epoch}]", total=total,
            on_print=write_iteration if tensorboard is not None else None)):
        outputs = to_float32(_forward(model, samples, device, amp))
        loss_dict = _criterion(criterion, outputs, targets)
        losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)
        # The same numbers on every rank, so that every rank skips or stops together.
        loss_dict_reduced = reduce_dict(loss_dict)

        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(losses).backward()
            scaler.unscale_(optimizer)
        else:
            losses.backward()
        if check_unused:
            names = _params_without_grad(model)
            if names:
                raise UnusedParametersError(_unused_message(names, "in the first step"))
            check_unused = False
        grad_norm = _grad_norm(params, max_norm)

        # The step's one wait for the device: every logged number comes back in a single copy.
        names = list(loss_dict_reduced)
        values = torch.stack([*(loss_dict_reduced[k].detach().float().to(grad_norm.device) for k in names),
                              grad_norm.detach().float()]).tolist()
        terms, grad_norm_value = dict(zip(names, values[:-1])), values[-1]
        loss_value = sum(terms[k] * weight_dict[k] for k in names if k in weight_dict)
        finite = math.isfinite(loss_value) and math.isfinite(grad_norm_value)
        if not finite:
            where = f"iteration {start_iteration + i} of {epoch_length}"
            what = _what_was_not_finite(loss_value, terms, weight_dict, grad_norm_value, outputs)
        if scaler is None:
            if not finite:
                raise NonFiniteLossError(f"{where}: {what}; stopping training. {_ADVICE}")
            optimizer.step()
        elif finite:
            scaler.step(optimizer)
            scaler.update()
            _consecutive_skips[scaler] = 0
        else:
            skipped += 1
            in_a_row = _consecutive_skips[scaler] = _consecutive_skips.get(scaler, 0) + 1
            if in_a_row >= max_consecutive_skips:
                raise NonFiniteLossError(f"{where}: --amp fp16: {in_a_row} consecutive steps skipped, "
                                         f"stopping training; the last: {what}. {_ADVICE}")
            # update() without step(): the scale drops if the gradients overflowed, the weights stay.
            scaler.update()
            print(f"Epoch: [{epoch}] {where}: --amp fp16 step skipped, the weights unchanged ({what}); "
                  f"{skipped} skipped this epoch, {in_a_row} in a row", flush=True)

        lr = optimizer.param_groups[0]["lr"]
        if math.isfinite(loss_value):
            _log_terms(logger, loss_value, terms, weight_dict)
        if finite:
            logger.update(grad_norm=grad_norm_value)
        logger.update(lr=lr)
        if tensorboard is not None:
            step_figures = {"loss": loss_value, **_weighted(terms, weight_dict), "lr": lr,
                            "grad_norm": grad_norm_value, "class_error": terms.get("class_error", math.nan)}
            if scaler is not None:
                step_figures["amp_skipped_steps"] = skipped
    logger.synchronize_between_processes()
    print("Averaged stats:", logger, flush=True)
    stats = {k: meter.global_avg for k, meter in logger.meters.items() if meter.count}
    if scaler is not None:
        stats["amp_skipped_steps"] = skipped
        if skipped:
            print(f"--amp fp16: {skipped} of {total} steps skipped in epoch {epoch} "
                  "(loss or gradients not finite)", flush=True)
    return stats


def _drop_non_finite(results: list[dict]) -> int:
    """Remove the detections whose score or box is NaN/inf (COCOeval cannot rank or match them) from
    each image's results; returns how many there were."""
    dropped = 0
    for r in results:
        keep = torch.isfinite(r["scores"]) & torch.isfinite(r["boxes"]).all(-1)  # (k,)
        n = len(keep) - int(keep.sum())
        if n:
            dropped += n
            r.update({key: v[keep] for key, v in r.items() if isinstance(v, Tensor) and len(v) == len(keep)})
    return dropped


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, postprocessors: dict, data_loader: Iterable,
             base_ds, device: torch.device, output_dir: str = "", print_freq: int = 10,
             max_iters: int = 0, amp: str | None = None, eval_backend: str = "pycocotools",
             print_all_terms: bool = False):
    """Losses and COCO box AP on ``data_loader``; the predictions of every rank are merged first.

    Returns (stats, coco_evaluator): stats holds the averaged losses (public names, as in training),
    ``coco_eval_bbox`` and, with a mask head, ``coco_eval_masks`` (the 12 COCOeval numbers each);
    coco_evaluator is None without COCO ground truth. The per-class AP table of each IoU type is
    printed after the COCO summary.

    Non-finite outputs (possible under --amp fp16, or from a diverged model) do not stop the
    evaluation: a batch whose loss is not finite is left out of the loss averages, so that the stats
    stay valid JSON, and detections whose score or box is not finite are dropped (they count as
    misses); both are counted and the outputs named in one line at the end.
    """
    model.eval()
    criterion.eval()
    logger = MetricLogger(delimiter="  ", shown=None if print_all_terms else PROGRESS_TERMS)
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
    non_finite, dropped, bad_outputs = 0, 0, {}
    batches = _limited(DataPrefetcher(data_loader, device, prefetch=True), max_iters)
    for samples, targets in logger.log_every(batches, print_freq, "Test:", total=total):
        with autocast(device, amp):
            outputs = model(samples)
        outputs = to_float32(outputs)
        loss_dict_reduced = reduce_dict(_criterion(criterion, outputs, targets))
        names = list(loss_dict_reduced)
        terms = dict(zip(names, torch.stack([loss_dict_reduced[k].float() for k in names]).tolist()))
        loss_value = sum(terms[k] * weight_dict[k] for k in names if k in weight_dict)
        if math.isfinite(loss_value):
            _log_terms(logger, loss_value, terms, weight_dict)
        else:
            non_finite += 1
            bad_outputs.update(dict.fromkeys(_non_finite_outputs(outputs)))

        orig_target_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
        results = postprocessors["bbox"](outputs, orig_target_sizes)
        if "segm" in postprocessors:
            target_sizes = torch.stack([t["size"] for t in targets], dim=0)
            results = postprocessors["segm"](results, outputs, orig_target_sizes, target_sizes)
        dropped += _drop_non_finite(results)
        if coco_evaluator is not None:
            coco_evaluator.update({t["image_id"].item(): r for t, r in zip(targets, results)})
        if panoptic_evaluator is not None:
            target_sizes = torch.stack([t["size"] for t in targets], dim=0)
            panoptic = postprocessors["panoptic"](outputs, target_sizes, orig_target_sizes)
            panoptic_evaluator.update(panoptic, targets)

    logger.synchronize_between_processes()
    if non_finite or dropped:
        where = f" (NaN/inf in {', '.join(bad_outputs)})" if bad_outputs else ""
        print(f"Test: the loss of {non_finite} batch(es) was not finite{where}: the loss averages leave "
              f"them out; {dropped} detection(s) with a non-finite score or box were dropped (they count as "
              "misses)", flush=True)
    print("Averaged stats:", logger, flush=True)
    stats = {k: meter.global_avg for k, meter in logger.meters.items() if meter.count}
    if coco_evaluator is not None:
        coco_evaluator.synchronize_between_processes()
        coco_evaluator.accumulate()
        coco_evaluator.summarize()
        for iou_type in iou_types:
            # The public log names: coco_eval_bbox and coco_eval_masks.
            key = "coco_eval_masks" if iou_type == "segm" else f"coco_eval_{iou_type}"
            stats[key] = coco_evaluator.coco_eval[iou_type].stats.tolist()
        for iou_type, rows in coco_evaluator.per_class().items():
            print(per_class_table(rows, iou_type), flush=True)
    if panoptic_evaluator is not None:
        panoptic_evaluator.synchronize_between_processes()
        pq = panoptic_evaluator.summarize()
        stats.update(PQ_all=pq["All"], PQ_th=pq["Things"], PQ_st=pq["Stuff"])
    return stats, coco_evaluator

