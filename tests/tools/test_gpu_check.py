"""tools/gpu_check.sh: a dry run without a GPU, and the driver's handling of passed, failed, slow checks."""

import json
import os
import subprocess

import pytest

from tools import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_dry_run_without_a_gpu_skips_every_check_and_exits_0(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OUT=str(tmp_path))
    proc = subprocess.run(
        ["sh", os.path.join(ROOT, "tools", "gpu_check.sh")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DRY RUN: no GPU, so every check below is skipped" in proc.stdout
    names = [name for name, _, _ in gpu_check.CHECKS]
    for name in names:
        assert any(line.split()[:2] == [name, "SKIP"] for line in proc.stdout.splitlines()), name
    assert f"0 passed, 0 failed, {len(names)} skipped" in proc.stdout
    with open(tmp_path / "gpu_check.json") as f:
        report = json.load(f)
    assert report["gpu"] is False and list(report["checks"]) == names
    assert {r["status"] for r in report["checks"].values()} == {"skip"}


def test_failures_budget_and_broken_checks(monkeypatch, tmp_path, capsys):
    def slow_pass(limit):
        clock[0] += 100
        return gpu_check._result("pass", "fine", answer=42)

    def broken(limit):
        raise OSError("tool vanished")

    clock = [0.0]
    monkeypatch.setattr(gpu_check.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(gpu_check, "gpu_present", lambda: (True, "a test GPU"))
    checks = [("first", slow_pass, 10), ("second", broken, 10)]
    checks += [("third", slow_pass, 10), ("fourth", slow_pass, 10)]
    monkeypatch.setattr(gpu_check, "CHECKS", checks)
    path = tmp_path / "figures.json"
    assert gpu_check.main(["--json", str(path), "--budget", "150"]) == 1
    out = capsys.readouterr().out
    assert "second          FAIL" in out and "OSError: tool vanished" in out
    assert "fourth          SKIP" in out and "skipped: past the 150 s budget" in out
    assert "2 passed, 1 failed, 1 skipped" in out
    report = json.loads(path.read_text())
    assert report["checks"]["first"]["figures"] == {"answer": 42}
    assert report["checks"]["first"]["seconds"] == 100


def test_the_smoke_run_and_model_flags_parse(tmp_path):
    """The flags a GPU run will pass to main.py are accepted (a typo would cost a GPU run)."""
    from util.args import get_args_parser

    steps = gpu_check.torchrun_steps(str(tmp_path))
    assert [(name, step) for name, step, _ in steps] == [
        ("base", "train"), ("base", "eval"), ("bf", "train"), ("bf", "eval")
    ]
    for name, step, argv in steps:
        args = get_args_parser().parse_args(argv)
        assert args.device == "cuda" and args.dataset_file == "toy"
        assert args.eval == (step == "eval") and (args.bf == 1) == (name == "bf")
    train_dir = get_args_parser().parse_args(steps[0][2]).output_dir
    assert get_args_parser().parse_args(steps[1][2]).resume == os.path.join(train_dir, "checkpoint.pth")


@pytest.fixture
def on_cpu(monkeypatch):
    """The op checks' code run on CPU (the compiled CPU kernels or the PyTorch path) in this process."""
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setenv("MSDA_BACKEND", "auto")  # the checks set it; restored afterwards
    monkeypatch.setenv("MSDA_JIT", "0")


def test_op_checks_run_and_pass_on_cpu(on_cpu, monkeypatch):
    monkeypatch.setattr(gpu_check, "FULL_SIZE_LEVELS", [(10, 17), (5, 8), (3, 4)])
    half = gpu_check.check_half_precision()
    assert half["status"] == "pass", half
    outputs = ("output", "grad_value", "grad_loc", "grad_attn")
    assert set(half["figures"]) == {f"{d}_{w}_rel_err" for d in ("float16", "bfloat16") for w in outputs}
    full = gpu_check.check_full_size()
    assert full["status"] == "pass", full
    assert full["figures"]["output_rel_err"] < 1e-5
    assert gpu_check.memcheck_case()["status"] == "pass"


def test_a_wrong_op_fails_the_half_precision_check(on_cpu, monkeypatch):
    from models.ops import functions

    real = functions.ms_deform_attn
    monkeypatch.setattr(functions, "ms_deform_attn", lambda *a: real(*a) * 1.01)
    result = gpu_check.check_half_precision()
    assert result["status"] == "fail" and "float16 output" in result["detail"]
