"""--tensorboard: the scalars of a tiny training run read back with TensorBoard's own reader, the steps
across a resume, nothing of TensorBoard loaded without the flag, and the flag's checks."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main as main_module
from tests.tiny_model import tiny_flags
from util import tensorboard_writer
from util.args import args_notices, args_problem
from util.tensorboard_writer import COCO_STAT_NAMES, TensorBoardWriter, epoch_scalars, open_tensorboard

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Two iterations per epoch, each one written (--print_freq 1), one evaluated batch per epoch.
RUN = tiny_flags("--num_workers", "0", "--print_freq", "1", "--max_iters_per_epoch", "2",
                 "--max_eval_iters", "1")


def _args(*flags) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[main_module.get_args_parser()]).parse_args([*RUN, *flags])


def _events(output_dir) -> EventAccumulator:
    events = EventAccumulator(str(output_dir / "tensorboard"))
    events.Reload()
    return events


def _steps(events: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in events.Scalars(tag)]


def _log(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "log.txt").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """Epoch 0 in one run, epoch 1 in a run resumed from its checkpoint; checkpoint0.pth: after epoch 0."""
    out = tmp_path_factory.mktemp("tb")
    main_module.main(_args("--epochs", "1", "--output_dir", str(out), "--tensorboard"))
    shutil.copy(out / "checkpoint.pth", out / "checkpoint0.pth")
    main_module.main(_args("--epochs", "2", "--output_dir", str(out), "--tensorboard",
                           "--resume", str(out / "checkpoint.pth")))
    return out


def test_every_scalar_is_written_and_agrees_with_log_txt(two_epochs):
    events = _events(two_epochs)
    tags = set(events.Tags()["scalars"])
    names = ("loss", "loss_ce", "loss_bbox", "loss_giou", "lr", "grad_norm", "class_error", "iteration_time",
             "data_time")
    per_iteration = {f"train/{name}" for name in names}
    assert per_iteration <= tags
    assert {f"coco_bbox/{name}" for name in COCO_STAT_NAMES} <= tags
    assert {"epoch/train_loss", "epoch/train_loss_ce", "epoch/test_loss", "epoch/train_grad_norm"} <= tags
    assert not [t for t in tags if t.endswith("_unscaled")]
    assert "train/max_memory_allocated_MiB" not in tags  # CUDA only
    # Iterations since the start, continuing across the resume; an epoch's figures at its last iteration.
    for tag in per_iteration:
        assert _steps(events, tag) == [0, 1, 2, 3], tag
    assert _steps(events, "coco_bbox/AP50") == _steps(events, "epoch/train_loss") == [1, 3]
    log = _log(two_epochs)
    for epoch, line in enumerate(log):
        assert events.Scalars("coco_bbox/AP50")[epoch].value == pytest.approx(line["test_coco_eval_bbox"][1])
        assert events.Scalars("epoch/test_loss")[epoch].value == pytest.approx(line["test_loss"], rel=1e-6)
        # Every iteration was written: their mean is the epoch average of log.txt.
        losses = [e.value for e in events.Scalars("train/loss")[2 * epoch:2 * epoch + 2]]
        assert sum(losses) / 2 == pytest.approx(line["train_loss"], rel=1e-6)
        assert events.Scalars("train/lr")[2 * epoch].value == pytest.approx(line["train_lr"])


def test_a_resume_from_an_earlier_checkpoint_replaces_the_later_steps(two_epochs, tmp_path):
    """Resumed from the checkpoint after epoch 0 while events of epoch 1 exist: those are hidden (a
    restart marked at step 2), the new ones take their steps, and the older files stay as they were."""
    out = tmp_path / "run"
    shutil.copytree(two_epochs, out)
    files_before = {f: (out / "tensorboard" / f).read_bytes() for f in os.listdir(out / "tensorboard")}
    assert len(files_before) == 2  # one per run: a resume appends a file
    main_module.main(_args("--epochs", "3", "--output_dir", str(out), "--tensorboard",
                           "--resume", str(out / "checkpoint0.pth")))
    assert all((out / "tensorboard" / f).read_bytes() == data for f, data in files_before.items())
    events = _events(out)
    assert _steps(events, "train/loss") == [0, 1, 2, 3, 4, 5]
    assert _steps(events, "coco_bbox/AP") == [1, 3, 5]
    # The resumed run reproduces the stopped one (tests/test_resume.py): its epoch 1 is the same.
    first = _events(two_epochs)
    assert [e.value for e in events.Scalars("train/loss")[:4]] == [e.value for e in
                                                                    first.Scalars("train/loss")]


def test_without_the_flag_nothing_of_tensorboard_is_loaded_or_written(tmp_path):
    code = ("import sys, main; main.cli(sys.argv[1:]); "
            "loaded = [m for m in sys.modules if m.split('.')[0] == 'tensorboard' "
            "or m.startswith('torch.utils.tensorboard')]; assert not loaded, loaded")
    flags = [*RUN, "--epochs", "1", "--max_iters_per_epoch", "1", "--output_dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, *flags], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "log.txt").exists() and not (tmp_path / "tensorboard").exists()


def test_only_the_first_process_writes(tmp_path, monkeypatch):
    args = _args("--output_dir", str(tmp_path), "--tensorboard")
    monkeypatch.setattr(tensorboard_writer, "is_main_process", lambda: False)
    assert open_tensorboard(args, 2) is None
    assert open_tensorboard(_args("--output_dir", str(tmp_path)), 2) is None
    assert not (tmp_path / "tensorboard").exists()


def test_the_flag_needs_an_output_dir_and_is_noted_as_idle_with_eval(tmp_path):
    expected = "--tensorboard writes to OUTPUT_DIR/tensorboard: give --output_dir"
    assert args_problem(_args("--tensorboard")) == expected
    args = _args("--tensorboard", "--eval", "--output_dir", str(tmp_path))
    assert args_problem(args) is None
    assert any(note.startswith("--tensorboard with --eval records nothing") for note in args_notices(args))


def test_epoch_scalars_names_the_coco_stats_and_leaves_out_what_is_not_a_figure():
    line = {"train_loss": 3.5, "train_loss_ce_unscaled": 1.0, "test_coco_eval_bbox": list(range(12)),
            "test_coco_eval_masks": [0.5] * 12, "test_PQ_all": {"pq": 40.0, "n": 3},
            "test_loss": float("nan"), "epoch": 4, "n_parameters": 123}
    scalars = epoch_scalars(line)
    assert scalars["coco_bbox/AP"] == 0 and scalars["coco_bbox/AR_large"] == 11
    assert scalars["coco_bbox/AP50"] == 1 and scalars["coco_masks/AR100"] == 0.5
    assert scalars["panoptic/PQ_all_pq"] == 40.0 and scalars["epoch/train_loss"] == 3.5
    assert len(scalars) == 2 * 12 + 2 + 1


def test_a_mid_epoch_resume_replaces_the_steps_from_its_iteration_on(tmp_path):
    with TensorBoardWriter(str(tmp_path / "tensorboard"), iterations_per_epoch=4) as stopped:
        for i in range(4):
            stopped.iteration(1, i, {"loss": 10.0 + i})  # steps 4 .. 7
    # The checkpoint holds epoch 1 up to iteration 2: the resumed run starts there.
    with TensorBoardWriter(str(tmp_path / "tensorboard"), 4, start_epoch=1, start_iteration=2) as resumed:
        for i in (2, 3):
            resumed.iteration(1, i, {"loss": 20.0 + i})
        resumed.epoch(1, {"train_loss": 1.5})
    events = _events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(4, 10), (5, 11), (6, 22), (7, 23)]
    assert [(e.step, e.value) for e in events.Scalars("epoch/train_loss")] == [(7, 1.5)]
