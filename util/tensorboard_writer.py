"""TensorBoard scalars of a training run (``--tensorboard``), in ``OUTPUT_DIR/tensorboard``.

log.txt stays the record of a run; these events are a view of it for TensorBoard. Only the first
process writes. Importing this module imports nothing of TensorBoard: the writer does when it is
made, so a run without ``--tensorboard`` never loads it.

Steps count iterations from the start of training: iteration i of epoch e (both from 0) is step
``e * iterations_per_epoch + i``, the same on every run of the same data and batch size. Scalars
under ``train/`` are per iteration, written every ``--print_freq`` iterations (those the progress
lines show). The epoch's figures (its log.txt line: COCO stats, loss averages) are written at the
step of its last iteration, ``(e + 1) * iterations_per_epoch - 1``, so that every chart has the same
x axis. A resumed run continues the same steps (a mid-epoch resume at its iteration) and appends a
new event file to the folder; it first marks its starting step as a restart, so that TensorBoard
hides what the stopped run had written from that step on (events after its last checkpoint,
which the resumed run writes again). A new run in a folder that has events starts at step 0 and
so hides them. Changing ``--batch_size``, ``--max_iters_per_epoch`` or the data set on resume
changes the iterations per epoch, and with it where the later steps land.
"""
from __future__ import annotations

import argparse
import math
import os

from util.dist import is_main_process

# COCOeval's 12 stats, in its order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")

# log.txt keys that are not figures of the run's progress.
_NOT_SCALARS = ("epoch", "n_parameters")


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def epoch_scalars(log_stats: dict) -> dict[str, float]:
    """The tags and values of one log.txt line: ``coco_bbox/AP`` .. ``coco_masks/AR_large`` for the
    COCO stats, ``panoptic/PQ_all_pq``-style for dicts of figures, ``epoch/<key>`` for the rest.
    The raw (``_unscaled``) loss terms and values that are not finite numbers are left out."""
    scalars = {}
    for key, value in log_stats.items():
        if key in _NOT_SCALARS or key.endswith("_unscaled"):
            continue
        if key.startswith("test_coco_eval_") and isinstance(value, list):
            group = f"coco_{key[len('test_coco_eval_'):]}"
            scalars.update({f"{group}/{name}": v for name, v in zip(COCO_STAT_NAMES, value)})
        elif isinstance(value, dict):
            scalars.update({f"panoptic/{key[len('test_'):]}_{k}": v for k, v in value.items()})
        else:
            scalars[f"epoch/{key}"] = value
    return {tag: float(v) for tag, v in scalars.items() if _finite_number(v)}


class TensorBoardWriter:
    """Writes the scalars of training to ``log_dir`` (see the module's note for the steps).

    This run starts at iteration ``start_iteration`` of epoch ``start_epoch``; the events an earlier
    run left in the folder from that step on are hidden by TensorBoard (``SummaryWriter``'s
    ``purge_step``).
    """

    def __init__(self, log_dir: str, iterations_per_epoch: int, start_epoch: int = 0,
                 start_iteration: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.iterations_per_epoch = iterations_per_epoch
        self._writer = SummaryWriter(log_dir, purge_step=self.step(start_epoch, start_iteration))

    def step(self, epoch: int, iteration: int) -> int:
        """The step of iteration ``iteration`` of epoch ``epoch``: iterations since training started."""
        return epoch * self.iterations_per_epoch + iteration

    def iteration(self, epoch: int, iteration: int, scalars: dict[str, float]) -> None:
        """One training iteration's figures, as ``train/<name>``; non-finite ones are left out."""
        step = self.step(epoch, iteration)
        for name, value in scalars.items():
            if _finite_number(value):
                self._writer.add_scalar(f"train/{name}", value, step)

    def epoch(self, epoch: int, log_stats: dict) -> None:
        """One epoch's log.txt line (``epoch_scalars``) at its last iteration; then all reaches the disk."""
        step = self.step(epoch + 1, -1)
        for tag, value in epoch_scalars(log_stats).items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_tensorboard(args: argparse.Namespace, iterations_per_epoch: int,
                     start_iteration: int = 0) -> TensorBoardWriter | None:
    """With ``--tensorboard``, on the first process, the writer of a run that starts at iteration
    ``start_iteration`` of epoch ``args.start_epoch``, in ``--output_dir``/tensorboard; None otherwise
    (nothing of TensorBoard is imported then)."""
    if not getattr(args, "tensorboard", False) or not is_main_process():
        return None
    return TensorBoardWriter(os.path.join(args.output_dir, "tensorboard"), iterations_per_epoch,
                             args.start_epoch, start_iteration)
