"""main.py end to end on the toy set with a tiny model: train, evaluate, resume, safe loading, amp, DDP.

Each run trains at most two iterations and evaluates a few validation images, so the whole file
stays fast on two CPU cores.
"""
import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import main as main_module
from datasets.toy import ensure_toy_dataset
from tests.tiny_model import tiny_flags
from util.checkpoint import CheckpointError, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_flags("--num_workers", "0", "--print_freq", "1")


def _args(output_dir, *extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[main_module.get_args_parser()])
    return parser.parse_args(TINY + ["--output_dir", str(output_dir), *extra])


def _train_args(output_dir, *extra):
    return _args(output_dir, "--batch_size", "2", "--max_iters_per_epoch", "2", "--max_eval_iters", "1",
                 *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of two iterations, then an evaluation: the run every other test starts from."""
    out = tmp_path_factory.mktemp("run")
    stats = main_module.main(_train_args(out, "--epochs", "1"))
    return out, stats


def test_train_then_evaluate_writes_log_checkpoint_and_stats(trained):
    out, stats = trained
    assert len(stats["coco_eval_bbox"]) == 12
    lines = (out / "log.txt").read_text().splitlines()
    assert len(lines) == 1
    log = json.loads(lines[0])
    assert log["epoch"] == 0 and log["n_parameters"] > 0
    assert "train_loss" in log and "train_lr" in log and len(log["test_coco_eval_bbox"]) == 12
    assert torch.isfinite(torch.tensor(log["train_loss"]))
    eval_stats = json.loads((out / "eval_stats.json").read_text())
    assert eval_stats["coco_eval_bbox"] == pytest.approx(stats["coco_eval_bbox"])
    results = json.loads((out / "results_bbox.json").read_text())
    assert results and set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    assert {r["image_id"] for r in results} == {1, 2}  # the two images of the one evaluated batch
    ckpt = load_checkpoint(str(out / "checkpoint.pth"))
    assert set(ckpt) >= {"model", "optimizer", "lr_scheduler", "epoch", "args"}
    assert ckpt["epoch"] == 0 and isinstance(ckpt["args"], argparse.Namespace)


def test_every_evaluation_writes_per_class_ap_named_from_the_ground_truth(trained):
    from datasets.toy import CLASSES

    out, stats = trained
    per_class = json.loads((out / "eval_per_class.json").read_text())
    assert set(per_class) == {"epoch", "bbox"} and per_class["epoch"] == 0
    rows = per_class["bbox"]
    assert [(r["category_id"], r["name"]) for r in rows] == [(c, name) for c, name, _ in CLASSES]
    scored = [r for r in rows if r["AP"] is not None]
    assert scored and all(r["instances"] > 0 for r in scored)
    assert all(r["instances"] == 0 and r["AP50"] is None for r in rows if r["AP"] is None)
    assert sum(r["AP"] for r in scored) / len(scored) == pytest.approx(stats["coco_eval_bbox"][0])


def test_resume_restores_optimizer_scheduler_and_epoch(trained, tmp_path):
    out, _ = trained
    saved = load_checkpoint(str(out / "checkpoint.pth"))
    args = _train_args(tmp_path, "--epochs", "2", "--resume", str(out / "checkpoint.pth"),
                       "--eval_every", "0")
    from models import build_model

    model, _, _ = build_model(args)
    optimizer, scheduler = main_module.build_optimizer(model, args)
    main_module._resume(args, model, optimizer, scheduler, None)
    assert args.start_epoch == 1
    state = optimizer.state_dict()
    assert len(state["state"]) == len(saved["optimizer"]["state"]) > 0
    for i, s in saved["optimizer"]["state"].items():
        assert torch.equal(state["state"][i]["exp_avg"], s["exp_avg"])
        assert torch.equal(state["state"][i]["step"], s["step"])
    assert scheduler.state_dict()["last_epoch"] == saved["lr_scheduler"]["last_epoch"] == 1
    for k, v in saved["model"].items():
        assert torch.equal(model.state_dict()[k], v)

    # The whole run: continues at epoch 1, trains it, and appends its line to the log.
    main_module.main(args)
    log = [json.loads(x) for x in (tmp_path / "log.txt").read_text().splitlines()]
    assert [x["epoch"] for x in log] == [1]
    assert load_checkpoint(str(tmp_path / "checkpoint.pth"))["epoch"] == 1


def test_original_format_checkpoint_evaluates(trained, tmp_path):
    """A checkpoint written with plain torch.save, args as a Namespace, as the public code does."""
    out, _ = trained
    ckpt = load_checkpoint(str(out / "checkpoint.pth"))
    original = {"model": ckpt["model"], "optimizer": ckpt["optimizer"], "lr_scheduler": ckpt["lr_scheduler"],
                "epoch": 0, "args": argparse.Namespace(**vars(ckpt["args"]))}
    path = tmp_path / "original.pth"
    torch.save(original, path)
    stats = main_module.main(_args(tmp_path, "--resume", str(path), "--eval", "--batch_size", "2",
                                   "--max_eval_iters", "1"))
    assert len(stats["coco_eval_bbox"]) == 12
    written = json.loads((tmp_path / "eval_stats.json").read_text())["coco_eval_bbox"]
    assert written == pytest.approx(stats["coco_eval_bbox"])
    # The same weights give the same evaluation as at the end of training.
    assert written == pytest.approx(json.loads((out / "eval_stats.json").read_text())["coco_eval_bbox"])
    per_class = json.loads((tmp_path / "eval_per_class.json").read_text())
    assert per_class["epoch"] is None
    assert per_class["bbox"] == json.loads((out / "eval_per_class.json").read_text())["bbox"]


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_checkpoint_carrying_code_is_refused(trained, tmp_path):
    out, _ = trained
    ckpt = load_checkpoint(str(out / "checkpoint.pth"))
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": ckpt["model"], "epoch": 0, "args": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        main_module.main(_args(tmp_path, "--resume", str(path), "--eval"))
    assert not marker.exists()
    assert not (tmp_path / "eval_stats.json").exists()


def test_checkpoint_of_other_configuration_names_the_keys(trained, tmp_path):
    out, _ = trained
    expected = r"--hidden_dim \(checkpoint 32, this run 64\); pass --hidden_dim 32"
    with pytest.raises(CheckpointError, match=expected):
        main_module.main(_args(tmp_path, "--resume", str(out / "checkpoint.pth"), "--eval",
                               "--hidden_dim", "64"))


def test_amp_bf16_trains_on_cpu(tmp_path):
    args = _train_args(tmp_path, "--epochs", "1", "--amp", "--eval_every", "0", "--max_iters_per_epoch", "1")
    assert args.amp == "bf16"
    main_module.main(args)
    log = json.loads((tmp_path / "log.txt").read_text())
    assert torch.isfinite(torch.tensor(log["train_loss"]))
    assert "test_loss" not in log  # --eval_every 0: no evaluation during training


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(trained, tmp_path, monkeypatch):
    out, _ = trained
    (tmp_path / "checkpoint.pth").write_bytes((out / "checkpoint.pth").read_bytes())
    import models

    real_build = models.build_model

    def build_with_nan_loss(args):
        model, criterion, post = real_build(args)
        forward = criterion.forward
        criterion.forward = lambda o, t: {**forward(o, t), "loss_giou": torch.tensor(float("nan"))}
        return model, criterion, post

    monkeypatch.setattr(models, "build_model", build_with_nan_loss)
    args = _train_args(tmp_path, "--epochs", "2", "--resume", str(tmp_path / "checkpoint.pth"),
                       "--eval_every", "0")
    with pytest.raises(SystemExit, match="Training stopped at epoch 1.*loss_giou=nan"):
        main_module.main(args)
    assert load_checkpoint(str(tmp_path / "checkpoint.pth"))["epoch"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_evaluate_like_one(trained, tmp_path):
    """Evaluation on 2 gloo ranks (via tools/launch.py) gives the detections and stats of 1 process."""
    out, _ = trained
    ckpt = str(out / "checkpoint.pth")
    one = tmp_path / "one"
    # Each of the 2 ranks takes a contiguous half of the 100 validation images (as the public
    # sampler does) and evaluates its first 2: images 1, 2 and 51, 52. One process sees them all.
    main_module.main(_args(one, "--resume", ckpt, "--eval", "--batch_size", "1", "--max_eval_iters", "52"))
    two = tmp_path / "two"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "launch.py"), "--nproc_per_node", "2",
           "--master_port", str(_free_port()), os.path.join(ROOT, "main.py"), *TINY, "--output_dir", str(two),
           "--resume", ckpt, "--eval", "--batch_size", "1", "--max_eval_iters", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "distributed init (rank 0/2, gloo)" in proc.stdout
    r2 = json.loads((two / "results_bbox.json").read_text())
    assert {r["image_id"] for r in r2} == {1, 2, 51, 52}
    r1 = [r for r in json.loads((one / "results_bbox.json").read_text()) if r["image_id"] in {1, 2, 51, 52}]
    key = lambda r: (r["image_id"], -r["score"], r["category_id"])
    r1, r2 = sorted(r1, key=key), sorted(r2, key=key)
    assert len(r1) == len(r2)
    for a, b in zip(r1, r2):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)
    # The stats of one process's detections on the same 4 images, through pycocotools directly.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ensure_toy_dataset() / "annotations" / "instances_val2017.json"))
        ev = COCOeval(gt, gt.loadRes(r1), "bbox")
        ev.params.imgIds = [1, 2, 51, 52]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s2 = json.loads((two / "eval_stats.json").read_text())["coco_eval_bbox"]
    assert list(ev.stats) == pytest.approx(s2, abs=1e-6)
