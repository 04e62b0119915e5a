"""Stopping and resuming training: a resumed run is the run that was never stopped.

Tiny model on the toy set, two or three iterations per epoch. The in-process runs compare a run
stopped after an epoch (or killed during the evaluation that follows it) with an uninterrupted one;
the subprocess runs send real signals.
"""
import argparse
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import main as main_module
from tests.tiny_model import tiny_flags
from util.checkpoint import CheckpointError, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_flags("--max_iters_per_epoch", "2", "--max_eval_iters", "1", "--print_freq", "100")


def _args(output_dir, *extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[main_module.get_args_parser()])
    return parser.parse_args(TINY + ["--output_dir", str(output_dir), *extra])


def _weights(output_dir) -> dict:
    return load_checkpoint(os.path.join(output_dir, "checkpoint.pth"))["model"]


def _log(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "log.txt")) as f:
        return [json.loads(line) for line in f.read().splitlines()]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Two epochs, each followed by an evaluation, with --num_workers 0."""
    out = tmp_path_factory.mktemp("uninterrupted")
    main_module.main(_args(out, "--epochs", "2", "--num_workers", "0"))
    return out


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_after_an_epoch_reproduces_the_uninterrupted_run(uninterrupted, tmp_path, workers):
    if workers == "0":
        full = uninterrupted
    else:
        full = tmp_path / "full"
        main_module.main(_args(full, "--epochs", "2", "--num_workers", workers))
    part = tmp_path / "part"
    main_module.main(_args(part, "--epochs", "1", "--num_workers", workers))
    main_module.main(_args(part, "--epochs", "2", "--num_workers", workers,
                           "--resume", str(part / "checkpoint.pth")))
    _assert_same_weights(_weights(full), _weights(part))
    assert _log(part) == _log(full)


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing in the program handles it."""


@pytest.mark.parametrize("killed_call", [1, 2])
def test_kill_during_evaluation_keeps_the_epoch_record(uninterrupted, tmp_path, monkeypatch, killed_call):
    """Killed in the evaluation after epoch 0 (1) or after the last epoch (2), after its checkpoint."""
    out = tmp_path / "run"
    real_evaluate = main_module.evaluate
    calls = []

    def evaluate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == killed_call:
            raise _Killed()
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(main_module, "evaluate", evaluate_then_die)
    with pytest.raises(_Killed):
        main_module.main(_args(out, "--epochs", "2", "--num_workers", "0"))
    assert load_checkpoint(str(out / "checkpoint.pth"))["epoch"] == killed_call - 1
    assert len(_log(out) if (out / "log.txt").exists() else []) == killed_call - 1

    monkeypatch.setattr(main_module, "evaluate", real_evaluate)
    main_module.main(_args(out, "--epochs", "2", "--num_workers", "0",
                           "--resume", str(out / "checkpoint.pth")))
    # One line per epoch, each with its evaluation, as the run that was never killed wrote them.
    assert _log(out) == _log(uninterrupted)
    assert [x["epoch"] for x in _log(out)] == [0, 1]
    assert all(len(x["test_coco_eval_bbox"]) == 12 for x in _log(out))
    assert (out / "eval_stats.json").exists()
    _assert_same_weights(_weights(out), _weights(uninterrupted))


def test_resuming_a_finished_run_says_there_is_nothing_to_train(uninterrupted, tmp_path, capsys):
    """Not 'Training time 0:00:00' and exit 0: the user meant to train more, or to evaluate."""
    out = tmp_path / "more"
    argv = [*TINY, "--num_workers", "0", "--output_dir", str(out), "--resume",
            str(uninterrupted / "checkpoint.pth")]
    for epochs in ("2", "1"):
        with pytest.raises(SystemExit) as info:
            main_module.cli([*argv, "--epochs", epochs])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("main.py: error: nothing to train: ") and "epochs 0 to 1" in err, err
        assert "--epochs 3" in err and "--eval" in err, err
    assert not (out / "log.txt").exists()
    main_module.cli([*argv, "--epochs", "2", "--eval"])  # evaluating it is fine
    main_module.cli([*argv, "--epochs", "3"])  # and so is training more
    assert [x["epoch"] for x in _log(out)] == [2]


BATCHFORMER = ("--bf", "1", "--insert_idx", "0", "--share_bf", "0")


def test_a_checkpoint_without_batchformer_evaluates_with_a_bf_configs_flags(uninterrupted, tmp_path, capsys):
    """A config script's BatchFormer flags on a plain (e.g. published) checkpoint: the layer is skipped at
    inference, so the evaluation is the checkpoint's own; with --eval_bf it would run untrained."""
    checkpoint = str(uninterrupted / "checkpoint.pth")
    evaluate = ("--resume", checkpoint, "--eval", "--num_workers", "0")
    plain = main_module.main(_args(tmp_path / "plain", *evaluate))
    with_bf = main_module.main(_args(tmp_path / "bf", *evaluate, *BATCHFORMER))
    assert with_bf == plain
    out = capsys.readouterr().out
    assert "skipped at inference" in out and "--bf (checkpoint 0, this run 1)" in out
    with pytest.raises(CheckpointError, match=r"another architecture .*--bf \(checkpoint 0, this run 1\)"):
        main_module.main(_args(tmp_path / "eval_bf", *evaluate, *BATCHFORMER, "--eval_bf"))


def test_batchformer_training_resumes_from_a_checkpoint_without_one(uninterrupted, tmp_path, capsys):
    """The BatchFormer starts at its initial values with fresh moments; every other weight, its optimizer
    moments and the epoch continue from the checkpoint; all of it said."""
    from models import build_model
    from models.batchformer import is_batchformer_parameter

    path = str(uninterrupted / "checkpoint.pth")
    saved = load_checkpoint(path)
    for bf_lr in ("1", "0.5"):  # the BatchFormer in the rest's group, or in a group of its own
        args = _args(tmp_path, "--resume", path, "--epochs", "3", *BATCHFORMER, "--bf_lr", bf_lr)
        model, _, _ = build_model(args)
        initial = {k: v.clone() for k, v in model.state_dict().items() if is_batchformer_parameter(k)}
        optimizer, scheduler = main_module.build_optimizer(model, args)
        main_module._resume(args, model, optimizer, scheduler, None)
        assert args.start_epoch == 2
        names = {id(p): n for n, p in model.named_parameters()}
        restored = [names[id(p)] for p in optimizer.state]
        assert restored and not any(is_batchformer_parameter(n) for n in restored)
        assert len(restored) == len(saved["optimizer"]["state"])
        exp_avg = {names[id(p)]: state["exp_avg"] for p, state in optimizer.state.items()}
        first = saved["optimizer"]["state"][0]["exp_avg"]
        assert torch.equal(exp_avg[next(n for n, p in model.named_parameters() if p.requires_grad)], first)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in initial.items())
        message = capsys.readouterr().out
        assert "has no BatchFormer" in message and "continues at epoch 2" in message, message
    main_module.main(_args(tmp_path / "run", "--resume", path, "--epochs", "3", "--num_workers", "0",
                           *BATCHFORMER))
    assert [x["epoch"] for x in _log(tmp_path / "run")] == [2]


# A driver for main.cli in a subprocess: with MARK_AT_CALL=n, the n-th call of the criterion prints
# MARK and waits (at most a minute) until the test's signal has reached the process, so that the
# signal arrives in the middle of that training iteration however slow the machine.
DRIVER = """
import os, sys, time
sys.path.insert(0, {root!r})
import models
import main
import util.run_state as run_state

mark_at = int(os.environ.get("MARK_AT_CALL", "0"))
real_build = models.build_model
received = []
real_handle = run_state.StopRequest._handle


def handle(self, signum, frame):
    received.append(signum)
    real_handle(self, signum, frame)


def build(args):
    model, criterion, postprocessors = real_build(args)
    forward, calls = criterion.forward, [0]

    def marked(outputs, targets):
        calls[0] += 1
        if calls[0] == mark_at:
            print("MARK", flush=True)
            deadline = time.monotonic() + 60
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
        return forward(outputs, targets)

    criterion.forward = marked
    return model, criterion, postprocessors


run_state.StopRequest._handle = handle
models.build_model = build
main.cli(sys.argv[1:])
"""


def _start(tmp_path, output_dir, *extra, mark_at: int = 0) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=ROOT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MARK_AT_CALL": str(mark_at)}
    cmd = [sys.executable, str(driver), *TINY, "--output_dir", str(output_dir), "--num_workers", "0",
           "--max_iters_per_epoch", "3", "--eval_every", "0", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _signal_at_mark(proc: subprocess.Popen, signum: int) -> tuple[int, str, str]:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.strip() == "MARK":
            proc.send_signal(signum)
            break
    code, out, err = _finish(proc)
    return code, "".join(seen) + out, err


def test_sigterm_mid_epoch_saves_progress_and_the_resumed_run_matches(tmp_path):
    full = tmp_path / "full"
    code, out, err = _finish(_start(tmp_path, full, "--epochs", "2"))
    assert code == 0, out[-2000:] + err[-2000:]

    run = tmp_path / "run"
    # Call 5 of the criterion is the second iteration of epoch 1 (three per epoch).
    code, out, err = _signal_at_mark(_start(tmp_path, run, "--epochs", "2", mark_at=5), signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, out[-2000:] + err[-2000:]
    assert "Traceback" not in err
    assert "SIGTERM" in err and "--resume" in err
    ckpt = load_checkpoint(str(run / "checkpoint.pth"))
    assert ckpt["epoch"] == 0  # the last finished epoch, as the public code reads it
    assert ckpt["progress"]["epoch"] == 1 and ckpt["progress"]["iteration"] == 2
    assert set(ckpt) >= {"model", "optimizer", "lr_scheduler", "args", "rng"}
    assert [x["epoch"] for x in _log(run)] == [0]

    code, out, err = _finish(_start(tmp_path, run, "--epochs", "2", "--resume", str(run / "checkpoint.pth")))
    assert code == 0, out[-2000:] + err[-2000:]
    assert "epoch 1, iteration 2" in out
    _assert_same_weights(_weights(full), _weights(run))
    assert load_checkpoint(str(run / "checkpoint.pth"))["epoch"] == 1
    resumed, reference = _log(run), _log(full)
    assert [x["epoch"] for x in resumed] == [0, 1]
    assert resumed[0] == reference[0]
    # Epoch 1's averages are put together from its two parts.
    assert resumed[1].keys() == reference[1].keys()
    for k, v in reference[1].items():
        assert resumed[1][k] == pytest.approx(v, rel=1e-6), k


def test_sigint_ends_the_run_with_one_line_and_the_last_checkpoint_intact(tmp_path):
    run = tmp_path / "run"
    # Two iterations per epoch: call 3 is the first of epoch 1.
    code, out, err = _signal_at_mark(_start(tmp_path, run, "--epochs", "2", "--max_iters_per_epoch", "2",
                                            mark_at=3), signal.SIGINT)
    assert code == 128 + signal.SIGINT, out[-2000:] + err[-2000:]
    assert "Traceback" not in err
    assert "interrupted" in err.strip().splitlines()[-1]
    ckpt = load_checkpoint(str(run / "checkpoint.pth"))
    assert ckpt["epoch"] == 0 and "progress" not in ckpt
    assert [x["epoch"] for x in _log(run)] == [0]


def test_sigterm_to_a_two_process_run_stops_both_ranks_at_one_batch(tmp_path):
    """tools/launch.py forwards SIGTERM (as SLURM signals every task): both gloo ranks agree where to
    stop, the checkpoint holds each rank's generators and batch order, and the resumed run finishes."""
    import socket

    def launch(*extra, mark_at: int = 0) -> subprocess.Popen:
        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER.format(root=ROOT))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, os.path.join(ROOT, "tools", "launch.py"), "--nproc_per_node", "2",
               "--master_port", str(port), str(driver), *TINY, "--output_dir", str(run), "--num_workers", "0",
               "--max_iters_per_epoch", "3", "--eval_every", "0", "--epochs", "2", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MARK_AT_CALL": str(mark_at)}
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=ROOT)

    run = tmp_path / "run"
    code, out, err = _signal_at_mark(launch(mark_at=5), signal.SIGTERM)
    assert code != 0 and "Traceback" not in err, out[-2000:] + err[-2000:]
    ckpt = load_checkpoint(str(run / "checkpoint.pth"))
    assert ckpt["epoch"] == 0 and ckpt["progress"]["epoch"] == 1 and ckpt["progress"]["iteration"] == 2
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    rank0, rank1 = ckpt["progress"]["batches"]
    assert rank0.shape == rank1.shape == (100, 2)  # 400 images, 2 ranks, batches of 2
    assert not set(rank0.flatten().tolist()) & set(rank1.flatten().tolist())

    code, out, err = _finish(launch("--resume", str(run / "checkpoint.pth")))
    assert code == 0, out[-2000:] + err[-2000:]
    assert "Continuing epoch 1, iteration 2 of 3" in out
    assert load_checkpoint(str(run / "checkpoint.pth"))["epoch"] == 1
    assert [x["epoch"] for x in _log(run)] == [0, 1]
