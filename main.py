"""Train or evaluate Deformable DETR (with BatchFormerV2) on COCO, COCO panoptic or the toy set.

    python main.py --coco_path data/coco --output_dir exps/r50            # train
    python main.py --coco_path data/coco --resume ckpt.pth --eval         # evaluate
    python main.py --train_json ... --val_json ... --finetune ckpt.pth    # fine-tune on other classes
    python tools/launch.py --nproc_per_node 8 main.py ...                 # distributed

Resuming (--resume OUTPUT_DIR/checkpoint.pth) continues the run as if it had never stopped: the
generators of every rank travel in the checkpoint, an evaluation a kill cut short is completed
first, and the lr and its schedule come from the current command line. SIGTERM (SLURM's notice
before preemption) lets the current batch finish and saves the epoch's progress to checkpoint.pth;
a requeued job with --resume continues in the middle of that epoch.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

import util.dist as dist_utils
from datasets import DatasetError, data_error_message
from engine import EPOCH_COUNTS, NonFiniteLossError, evaluate, train_one_epoch
from models.param_groups import match_name_keywords, param_groups_from_args  # noqa: F401 (public main.py name)
from util.args import FlagError, get_args_parser, parse_args, validate_args
from util.atomic import write_atomically
from util.checkpoint import (
    CheckpointError,
    evaluation_notice,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from util.finetune import finetune_from
from util.from_checkpoint import LoadedDetector
from util.hf.convert import load_checkpoint_or_folder
from util.misc import collate_fn
from util.run_state import (
    EpochLoader,
    Preempted,
    ResumableBatchSampler,
    StopRequest,
    gather_rng_states,
    ignore_sigterm,
    merge_stats,
    preserved_rng,
    set_rng_state,
)
from util.tensorboard_writer import open_tensorboard


def build_param_groups(model: torch.nn.Module, args) -> list[dict]:
    """The optimizer groups of the detector's recipe (``models.param_groups.param_groups_from_args``);
    parameters that do not require grad are left out."""
    return param_groups_from_args(model, args)


def build_optimizer(model: torch.nn.Module, args) -> tuple[torch.optim.Optimizer, object]:
    groups = build_param_groups(model, args)
    if args.sgd:
        optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    if args.lr_drop_epochs:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, sorted(args.lr_drop_epochs))
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_drop)
    return optimizer, scheduler


def build_loaders(dataset_train, dataset_val, args) -> tuple[DataLoader | None, DataLoader]:
    from datasets.samplers import DistributedSampler, NodeDistributedSampler

    if args.distributed:
        sampler_cls = NodeDistributedSampler if args.cache_mode else DistributedSampler
        sampler_train = sampler_cls(dataset_train, shuffle=True) if dataset_train is not None else None
        sampler_val = sampler_cls(dataset_val, shuffle=False)
    else:
        sampler_train = RandomSampler(dataset_train) if dataset_train is not None else None
        sampler_val = SequentialSampler(dataset_val)
    loader_train = None
    if dataset_train is not None:
        # Resumable: the epoch's batch order travels in a checkpoint written in the middle of it.
        batch_sampler = ResumableBatchSampler(BatchSampler(sampler_train, args.batch_size, drop_last=True))
        loader_train = DataLoader(dataset_train, batch_sampler=batch_sampler, collate_fn=collate_fn,
                                  num_workers=args.num_workers, pin_memory=args.device != "cpu",
                                  worker_init_fn=ignore_sigterm)
    loader_val = DataLoader(dataset_val, args.batch_size, sampler=sampler_val, drop_last=False,
                            collate_fn=collate_fn, num_workers=args.num_workers,
                            pin_memory=args.device != "cpu")
    return loader_train, loader_val


def _lr_factor(scheduler, epoch: int) -> float:
    """How much the lr of ``epoch`` is dropped by ``scheduler``'s schedule (StepLR or MultiStepLR)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
        drops = sum(n for milestone, n in scheduler.milestones.items() if milestone <= epoch)
    else:
        drops = epoch // scheduler.step_size if scheduler.step_size > 0 else 0
    return scheduler.gamma ** drops


def _resume_schedule(optimizer: torch.optim.Optimizer, scheduler, saved_scheduler: dict) -> None:
    """Continue at the saved position with the lrs and the schedule of the current command line.

    As in the public code (its "decrease lr in advance"): ``optimizer`` and ``scheduler`` are built
    from the command line, so each group's lr, the step size or milestones and the base lrs come
    from there; the checkpoint contributes only how many epochs the schedule has run. The lr of the
    resumed epoch is then recomputed, so that a run resumed past a new drop starts dropped. Must be
    called after ``optimizer.load_state_dict``, which replaces the groups' lrs by the saved ones.
    """
    fresh = scheduler.state_dict()
    last_epoch = int(saved_scheduler["last_epoch"])
    factor = _lr_factor(scheduler, last_epoch)
    lrs = [base_lr * factor for base_lr in fresh["base_lrs"]]
    for group, base_lr, lr in zip(optimizer.param_groups, fresh["base_lrs"], lrs):
        group["initial_lr"], group["lr"] = base_lr, lr
    scheduler.load_state_dict({**fresh, "last_epoch": last_epoch, "_last_lr": lrs,
                               "_step_count": saved_scheduler.get("_step_count", last_epoch + 1)})


def _check_device(args) -> torch.device:
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    return torch.device(args.device)


def _load_frozen_weights(model: torch.nn.Module, path: str, args) -> None:
    """The detector's weights for mask-head training: into ``model.detr`` when the model wraps one.

    They stay frozen, so a missing one would stay random: the detector must be complete.
    """
    checkpoint = load_checkpoint(path)
    if not (isinstance(checkpoint, dict) and "model" in checkpoint):
        checkpoint = {"model": checkpoint}
    target = getattr(model, "detr", model)
    load_weights(target, checkpoint, args, name=f"--frozen_weights {path}", complete=True,
                 skip_flags=("masks",))


def _saved_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, saved: dict,
                           new: set[str], name: str) -> dict:
    """``saved``, the optimizer state of a model that lacked the parameters named in ``new``, numbered for
    ``optimizer``: every other parameter gets its saved moments, the new ones none (they start at zero),
    and a group of new parameters only, which ``saved`` lacks, keeps this run's settings.

    Raises CheckpointError where the rest does not fit: other groups or group sizes, other shapes.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    saved_groups = saved.get("param_groups", [])
    ours = optimizer.state_dict()["param_groups"]
    state, groups, number = {}, [], 0
    for g, group in enumerate(optimizer.param_groups):
        old = [p for p in group["params"] if names[id(p)] not in new]
        if g < len(saved_groups):
            settings, saved_numbers = saved_groups[g], list(saved_groups[g]["params"])
        else:  # a group this run adds (--bf_lr): it may hold new parameters only
            settings, saved_numbers = ours[g], []
        if len(saved_numbers) != len(old):
            raise _optimizer_misfit(name)
        saved_numbers = iter(saved_numbers)
        numbers = []
        for p in group["params"]:
            if names[id(p)] not in new:
                moments = saved["state"].get(next(saved_numbers), {})
                if any(torch.is_tensor(v) and v.dim() and v.shape != p.shape for v in moments.values()):
                    raise _optimizer_misfit(name)
                if moments:
                    state[number] = moments
            numbers.append(number)
            number += 1
        groups.append({**settings, "params": numbers})
    if len(saved_groups) > len(groups):
        raise _optimizer_misfit(name)
    return {"state": state, "param_groups": groups}


def _optimizer_misfit(name: str) -> CheckpointError:
    return CheckpointError(
        f"{name}: the optimizer state does not fit this model's parameter groups "
        "(it was trained with a different configuration, or different --lr_backbone_names / "
        "--lr_linear_proj_names / --lr_backbone, or --bf_lr / --bf_weight_decay, which give the "
        "BatchFormer a group of its own); resuming would mix up the optimizer's moments")


def _resume(args, model, optimizer, scheduler, scaler) -> dict | None:
    """Weights always; optimizer, scheduler, epoch (and the fp16 grad scaler) unless --eval.

    When training continues from the checkpoint, returns its run-state entries (epoch, args, rng,
    train_stats, progress) for ``_unlogged_epoch`` and ``_continue_run``; not the weights, which would
    stay referenced for the whole run.
    """
    checkpoint = load_checkpoint_or_folder(args.resume)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"--resume {args.resume}: expected a dict with a 'model' entry "
                              f"(a checkpoint written by main.py), got {type(checkpoint).__name__}")
    report = load_weights(model, checkpoint, args, name=f"--resume {args.resume}", complete=args.eval,
                          new_batchformer=not args.eval)
    if args.eval:
        notice = evaluation_notice(f"--resume {args.resume}", checkpoint.get("args"), args)
        if notice:
            print(notice, flush=True)
        return None
    if not all(k in checkpoint for k in ("optimizer", "lr_scheduler", "epoch")):
        print(f"--resume {args.resume} holds no optimizer, lr_scheduler or epoch (weights only): training "
              f"starts at epoch {args.start_epoch} with a fresh optimizer and schedule", flush=True)
        return None
    if getattr(args, "allow_partial_load", False) and not report.clean:
        # The saved moments and epoch belong to a model whose tensors did not all load.
        print(f"--resume {args.resume} loaded in part (--allow_partial_load): optimizer, schedule and epoch "
              f"are not restored; training starts at epoch {args.start_epoch}", flush=True)
        return None
    from models.batchformer import is_batchformer_parameter

    # A --bf run from a checkpoint trained without a BatchFormer: only the BatchFormer is new.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    new = {k for k in report.missing if k in trainable}
    if not (args.bf and new and all(is_batchformer_parameter(k) for k in new)):
        new = set()
    optimizer.load_state_dict(_saved_optimizer_state(optimizer, model, checkpoint["optimizer"], new,
                                                     name=f"--resume {args.resume}"))
    _resume_schedule(optimizer, scheduler, checkpoint["lr_scheduler"])
    if scaler is not None and "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
    args.start_epoch = checkpoint["epoch"] + 1
    lrs = ", ".join(f"{g['lr']:.3g}" for g in optimizer.param_groups)
    print(f"Resumed from {args.resume} at epoch {args.start_epoch} (group lrs {lrs}, from the command line)",
          flush=True)
    if new:
        print(f"--resume {args.resume} has no BatchFormer: the BatchFormer's {len(new)} parameters start at "
              "their initial values and their optimizer moments at zero; every other weight, its optimizer "
              f"moments and the schedule come from the checkpoint, and training continues at epoch "
              f"{args.start_epoch}", flush=True)
    return {k: checkpoint[k] for k in ("epoch", "args", "rng", "train_stats", "progress") if k in checkpoint}


def _continue_run(checkpoint: dict | None, args, epoch_loader: EpochLoader) -> tuple[dict, int]:
    """Put back the random generators of each rank and, for a run stopped in the middle of an epoch,
    its batch order and position. Returns the stopped run's training stats of that epoch and the
    number of iterations they average ({} and 0 when the epoch starts afresh)."""
    if checkpoint is None:
        return {}, 0
    rank, world_size = dist_utils.get_rank(), dist_utils.get_world_size()
    saved_rng = checkpoint.get("rng")
    rng = saved_rng[rank] if isinstance(saved_rng, list) and len(saved_rng) == world_size else None
    if saved_rng is not None and rng is None:
        print(f"note: {args.resume} holds the random generator states of {len(saved_rng)} processes and "
              f"this run has {world_size}; the random streams start from --seed instead", flush=True)
    progress = checkpoint.get("progress")
    if progress is None or progress["epoch"] != args.start_epoch:
        if rng is not None:
            set_rng_state(rng)
        return {}, 0
    epoch, done, batches = progress["epoch"], progress["iteration"], progress["batches"]
    mine = batches[rank] if len(batches) == world_size else None
    if mine is None or tuple(mine.shape) != (len(epoch_loader.batch_sampler.batch_sampler), args.batch_size):
        print(f"note: epoch {epoch} was stopped after iteration {done} by a run with another number of "
              "processes, batch size or data set; it restarts from its first batch", flush=True)
        return {}, 0
    epoch_loader.resume(mine.tolist(), done, rng)
    print(f"Continuing epoch {epoch}, iteration {done} of {epoch_loader.epoch_length}, with the batch "
          "order of the stopped run", flush=True)
    return progress["train_stats"], done


def _logged_epochs(output_dir: str) -> set[int]:
    path = os.path.join(output_dir, "log.txt")
    if not os.path.isfile(path):
        return set()
    epochs = set()
    with open(path) as f:
        for line in f:
            try:
                epochs.add(int(json.loads(line)["epoch"]))
            except (ValueError, KeyError, TypeError):
                continue
    return epochs


def _unlogged_epoch(checkpoint: dict | None, args) -> tuple[int, dict] | None:
    """The finished epoch of this run's checkpoint whose evaluation and log line never completed.

    A kill after the epoch's checkpoint and before its line reached log.txt would otherwise lose that
    record for good: the resume starts at the next epoch. Only a checkpoint of this output directory
    counts (a new run started from another run's checkpoint does not owe that run's record).
    """
    if checkpoint is None or "train_stats" not in checkpoint or not args.output_dir:
        return None
    saved_dir = getattr(checkpoint.get("args"), "output_dir", None)
    if not saved_dir or os.path.realpath(saved_dir) != os.path.realpath(args.output_dir):
        return None
    # Rank 0 reads the log: other nodes may not share the file system.
    mine = checkpoint["epoch"] in _logged_epochs(args.output_dir) if dist_utils.is_main_process() else None
    logged = dist_utils.broadcast_object(mine)
    return None if logged else (checkpoint["epoch"], checkpoint["train_stats"])


def _write_text(path: str, text: str) -> None:
    """Replace ``path`` whole, so that a kill leaves the old or the new file, never half of one."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def _write_json(path: str, obj) -> None:
    _write_text(path, json.dumps(obj))


def _append_log(output_dir: str, stats: dict) -> None:
    """One JSON line per epoch in log.txt."""
    path = os.path.join(output_dir, "log.txt")
    old = ""
    if os.path.isfile(path):
        with open(path) as f:
            old = f.read()
    _write_text(path, old + json.dumps(stats) + "\n")


def _training_state(model: torch.nn.Module, optimizer, scheduler, scaler, epoch: int, args) -> dict:
    """The checkpoint (the public layout, plus the grad scaler and every rank's generator states).

    A collective: every rank must call it.
    """
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "args": args,
             "rng": gather_rng_states()}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def _save(state: dict, paths: list[str]) -> None:
    if dist_utils.is_main_process():
        for path in paths:
            save_checkpoint(state, path)


def _write_eval_outputs(output_dir: str, stats: dict, coco_evaluator) -> None:
    """results_bbox.json (COCO results format) and eval_stats.json (the 12 COCOeval numbers)."""
    detections = coco_evaluator.coco_results("bbox") if coco_evaluator is not None else []
    if not dist_utils.is_main_process() or not output_dir:
        return
    _write_json(os.path.join(output_dir, "results_bbox.json"), detections)
    summary = {k: v for k, v in stats.items() if k.startswith("coco_eval_") or k.startswith("PQ")}
    _write_json(os.path.join(output_dir, "eval_stats.json"), summary)
    print(f"Wrote {os.path.join(output_dir, 'eval_stats.json')} and results_bbox.json", flush=True)


def _write_per_class(output_dir: str, coco_evaluator, epoch: int | None) -> None:
    """eval_per_class.json after every evaluation: each category's AP, AP50 and ground-truth count per
    IoU type ("bbox", "segm"), AP null for a category without ground truth; epoch null with --eval."""
    if coco_evaluator is None or not output_dir or not dist_utils.is_main_process():
        return
    path = os.path.join(output_dir, "eval_per_class.json")
    _write_json(path, {"epoch": epoch, **coco_evaluator.per_class()})


def _checkpoint_paths(output_dir: str, epoch: int, args) -> list[str]:
    paths = [os.path.join(output_dir, "checkpoint.pth")]
    # Keep an extra copy before each lr drop (every lr_drop epochs for StepLR) and every 5 epochs.
    if args.lr_drop_epochs:
        before_drop = (epoch + 1) in args.lr_drop_epochs
    else:
        before_drop = args.lr_drop > 0 and (epoch + 1) % args.lr_drop == 0
    if before_drop or (epoch + 1) % 5 == 0:
        paths.append(os.path.join(output_dir, f"checkpoint{epoch:04d}.pth"))
    return paths


def _save_progress_and_exit(stop: StopRequest, epoch: int, epoch_loader: EpochLoader, train_stats: dict,
                            output_dir: str, model, optimizer, scheduler, scaler, args) -> None:
    """Checkpoint the progress of an epoch a stop request cut short, then end the run.

    ``epoch`` of the checkpoint stays the last finished one (what the public code resumes after);
    ``progress`` holds the position, every rank's batch order and the stats so far.
    """
    where = f"epoch {epoch} after iteration {epoch_loader.done} of {epoch_loader.epoch_length}"
    if not output_dir:
        raise Preempted(stop.signum, f"stopped by {stop.signal_name} in {where}; nothing saved "
                                     "(no --output_dir)")
    state = _training_state(model, optimizer, scheduler, scaler, epoch - 1, args)
    state["progress"] = {"epoch": epoch, "iteration": epoch_loader.done, "train_stats": train_stats,
                         "batches": dist_utils.all_gather(torch.tensor(epoch_loader.batch_sampler.batches))}
    path = os.path.join(output_dir, "checkpoint.pth")
    _save(state, [path])
    raise Preempted(stop.signum, f"stopped by {stop.signal_name} in {where}; saved the progress to {path}: "
                                 f"continue with --resume {path}")


def _nothing_to_train(args) -> str:
    """--epochs counts every epoch of the run, the resumed ones too: a user error in one line."""
    if args.resume and args.start_epoch > 0:
        done = f"--resume {args.resume} finished epochs 0 to {args.start_epoch - 1}"
    else:
        done = f"the run starts at epoch {args.start_epoch}"
    return (f"nothing to train: {done} and --epochs {args.epochs} is the number of epochs in all; pass "
            f"--epochs {args.start_epoch + 1} or more to train on, or --eval to evaluate")


def main(args, detector: LoadedDetector | None = None) -> dict:
    """Run training or evaluation as the flags say; returns the last evaluation's stats.

    ``detector``: for --eval, a model already built from the --resume checkpoint with its weights
    (``util.from_checkpoint``, test.py), used instead of building one and resuming."""
    dist_utils.init_distributed_mode(args)
    print(args, flush=True)
    device = _check_device(args)
    if args.amp == "fp16" and device.type == "cpu":
        print("note: --amp fp16 on CPU is slow; --amp bf16 is the CPU choice", flush=True)

    seed = args.seed + dist_utils.get_rank()
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)

    from datasets import build_dataset, get_coco_api_from_dataset, resolve_classes
    from models import build_model
    from models.backbone import load_pretrained_backbone

    # args.num_classes and args.class_names from the data (or as given), so that checkpoints record them
    print(resolve_classes(args), flush=True)
    if detector is None:
        model, criterion, postprocessors = build_model(args)  # the data set's metadata from --dataset_file
        if args.finetune:  # the checkpoint's backbone replaces the ImageNet one
            for line in finetune_from(model, args):
                print(line, flush=True)
        else:
            load_pretrained_backbone(model, args)  # building loads no weights
    else:
        model, criterion, postprocessors = detector.model, detector.criterion, detector.postprocessors
    model.to(device)
    model_without_ddp = model
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("number of params:", n_parameters, flush=True)

    dataset_val = build_dataset(image_set="val", args=args)
    dataset_train = None if args.eval else build_dataset(image_set="train", args=args)
    loader_train, loader_val = build_loaders(dataset_train, dataset_val, args)
    base_ds = get_coco_api_from_dataset(dataset_val)

    optimizer, scheduler = build_optimizer(model_without_ddp, args)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None

    if args.distributed:
        # Every trainable parameter of every configuration gets a gradient (train_one_epoch checks it
        # after the first step), so DDP need not search the graph each step, as in the public code.
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_parameters)
        model_without_ddp = model.module

    if args.frozen_weights is not None and detector is None:
        _load_frozen_weights(model_without_ddp, args.frozen_weights, args)

    output_dir = args.output_dir
    if output_dir and dist_utils.is_main_process():
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    resumed = (_resume(args, model_without_ddp, optimizer, scheduler, scaler)
               if args.resume and detector is None else None)

    eval_kwargs = dict(print_freq=args.print_freq, max_iters=args.max_eval_iters, amp=args.amp,
                       eval_backend=args.coco_eval_backend, print_all_terms=args.print_all_terms)
    if args.eval:
        stats, coco_evaluator = evaluate(model, criterion, postprocessors, loader_val, base_ds, device,
                                         output_dir, **eval_kwargs)
        _write_eval_outputs(output_dir, stats, coco_evaluator)
        _write_per_class(output_dir, coco_evaluator, None)
        return stats

    unlogged = _unlogged_epoch(resumed, args)
    if unlogged is None and args.start_epoch >= args.epochs:
        raise FlagError(_nothing_to_train(args))
    print("Start training", flush=True)
    start_time = time.time()
    stop = StopRequest()
    epoch_loader = EpochLoader(loader_train, stop, args.max_iters_per_epoch)
    stopped_part = _continue_run(resumed, args, epoch_loader)
    tensorboard = open_tensorboard(args, epoch_loader.epoch_length, stopped_part[1])

    def evaluate_and_log(epoch: int, train_stats: dict) -> dict:
        last = epoch + 1 == args.epochs
        test_stats = {}
        if args.eval_every > 0 and ((epoch + 1) % args.eval_every == 0 or last):
            # Evaluation draws from the generators (each DataLoader iterator takes a seed); training
            # continues from the states the checkpoint holds, as a resumed run does.
            with preserved_rng():
                test_stats, coco_evaluator = evaluate(model, criterion, postprocessors, loader_val, base_ds,
                                                      device, output_dir, **eval_kwargs)
            _write_per_class(output_dir, coco_evaluator, epoch)
            if last:
                _write_eval_outputs(output_dir, test_stats, coco_evaluator)
        log_stats = {**{f"train_{k}": v for k, v in train_stats.items()},
                     **{f"test_{k}": v for k, v in test_stats.items()},
                     "epoch": epoch, "n_parameters": n_parameters}
        if output_dir and dist_utils.is_main_process():
            _append_log(output_dir, log_stats)
        if tensorboard is not None:
            tensorboard.epoch(epoch, log_stats)
        return test_stats

    test_stats: dict = {}
    # SIGTERM: training finishes its batch and saves the epoch's progress; elsewhere the run ends at once.
    with stop.handling(), tensorboard or contextlib.nullcontext():
        if unlogged is not None:
            print(f"Epoch {unlogged[0]} finished but its evaluation and log line did not: completing them",
                  flush=True)
            test_stats = evaluate_and_log(*unlogged)
        for epoch in range(args.start_epoch, args.epochs):
            epoch_loader.batch_sampler.set_epoch(epoch)
            with stop.deferred():
                try:
                    train_stats = train_one_epoch(model, criterion, epoch_loader, optimizer, device, epoch,
                                                  args.clip_max_norm, print_freq=args.print_freq,
                                                  max_iters=args.max_iters_per_epoch, amp=args.amp,
                                                  scaler=scaler,
                                                  find_unused_parameters=args.find_unused_parameters,
                                                  print_all_terms=args.print_all_terms,
                                                  start_iteration=stopped_part[1], tensorboard=tensorboard)
                except NonFiniteLossError as e:
                    raise SystemExit(f"Training stopped at epoch {epoch}: {e}") from e
                (first_stats, first_count), stopped_part = stopped_part, ({}, 0)
                train_stats = merge_stats(first_stats, first_count, train_stats,
                                          epoch_loader.done - first_count, counts=EPOCH_COUNTS)
                if epoch_loader.stopped:
                    _save_progress_and_exit(stop, epoch, epoch_loader, train_stats, output_dir,
                                            model_without_ddp, optimizer, scheduler, scaler, args)
                scheduler.step()
                if output_dir:
                    state = _training_state(model_without_ddp, optimizer, scheduler, scaler, epoch, args)
                    state["train_stats"] = train_stats  # for the log line, should the evaluation be cut short
                    _save(state, _checkpoint_paths(output_dir, epoch, args))
            if stop.agreed():
                raise Preempted(stop.signum, f"stopped by {stop.signal_name} after epoch {epoch}; its "
                                             "checkpoint is written, and a resume evaluates it first")
            test_stats = evaluate_and_log(epoch, train_stats)

    total_time = datetime.timedelta(seconds=int(time.time() - start_time))
    print(f"Training time {total_time}", flush=True)
    return test_stats


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """A user's error (a checkpoint, the data, a flag found wrong while running) ends the program with
    one line naming ``parser.prog`` and no traceback: exit code 1, or 2 for a flag (``parser.error``)."""
    try:
        yield
    except CheckpointError as e:
        raise SystemExit(f"{parser.prog}: error: {e}") from None
    except DatasetError as e:
        raise SystemExit(f"{parser.prog}: data error: {data_error_message(e)}") from None
    except FlagError as e:
        parser.error(str(e))


def run(parser: argparse.ArgumentParser, args: argparse.Namespace,
        prepare: Callable[[argparse.Namespace], LoadedDetector | None] | None = None) -> dict | None:
    """Validate the flags and run ``main``, returning its stats: a user's error (a flag, a checkpoint, the
    data, a signal) ends with one line naming ``parser.prog`` and no traceback. ``prepare`` runs first;
    what it returns is ``main``'s detector (test.py builds it from the checkpoint there, adopting its
    flags into ``args``)."""
    prog = parser.prog
    try:
        with user_errors(parser):
            detector = prepare(args) if prepare is not None else None
            validate_args(parser, args)
            return main(args, detector)
    except Preempted as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.code) from None
    except KeyboardInterrupt:
        if args.eval:
            said = f"during the evaluation of {args.resume}"
        else:
            last = os.path.join(args.output_dir, "checkpoint.pth") if args.output_dir else ""
            kept = last and os.path.isfile(last)
            said = f"the last checkpoint, {last}, is intact" if kept else "no checkpoint"
        print(f"{prog}: interrupted (SIGINT); {said}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGINT) from None
    finally:
        if dist_utils.is_dist_avail_and_initialized():
            torch.distributed.destroy_process_group()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="main.py",
                                     description="Deformable DETR training and evaluation script",
                                     parents=[get_args_parser()])
    run(parser, parse_args(parser, argv))  # with the defaults of the detector --meta_arch names


if __name__ == "__main__":
    cli(sys.argv[1:])
