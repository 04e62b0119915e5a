"""Atomic checkpoint writes, weights-only reads, and state-dict loading that reports its gaps."""
import argparse
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from util import checkpoint as ckpt
from util.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint


def _original_format(epoch: int = 3) -> dict:
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 40)
    args = argparse.Namespace(lr=2e-4, lr_drop_epochs=None, backbone="resnet50", masks=False)
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "epoch": epoch, "args": args}


def test_round_trip_keeps_namespace_and_tensors(tmp_path):
    obj = _original_format()
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint(obj, path)
    back = load_checkpoint(path)
    assert back["epoch"] == 3
    assert isinstance(back["args"], argparse.Namespace) and back["args"].lr == 2e-4
    for k, v in obj["model"].items():
        assert torch.equal(back["model"][k], v)
    assert back["optimizer"]["state"][0]["exp_avg"].equal(obj["optimizer"]["state"][0]["exp_avg"])
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def crash_mid_write(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt("killed during the write")

    monkeypatch.setattr(ckpt.torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    back = load_checkpoint(path)
    assert back["epoch"] == 1 and torch.equal(back["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pth"], "the temporary file must be cleaned up"


def test_process_killed_during_write_leaves_loadable_checkpoint(tmp_path):
    """A real SIGKILL in the middle of torch.save: the previous checkpoint still loads."""
    path = tmp_path / "checkpoint.pth"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        import torch
        from util import checkpoint as ckpt
        ckpt.save_checkpoint({{"epoch": 1, "w": torch.arange(1000.)}}, {str(path)!r})
        real_save = torch.save
        def save_then_die(obj, f):
            real_save(obj, f)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.torch.save = save_then_die
        ckpt.save_checkpoint({{"epoch": 2, "w": torch.zeros(1000)}}, {str(path)!r})
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    back = load_checkpoint(str(path))
    assert back["epoch"] == 1 and torch.equal(back["w"], torch.arange(1000.0))


class _Payload:
    """Unpickling this object would create the marker file (it is what a malicious checkpoint does)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_checkpoint_carrying_code_is_refused_and_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"w": torch.ones(1)}, "epoch": 0, "extra": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()
    # The payload is real: the unsafe loader does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_and_truncated_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nope.pth"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    path = tmp_path / "cut.pth"
    save_checkpoint({"w": torch.ones(100)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_checkpoint(str(path))


def test_file_url_is_downloaded_then_loaded_safely(tmp_path, monkeypatch):
    src = tmp_path / "remote.pth"
    save_checkpoint(_original_format(epoch=7), str(src))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    back = load_checkpoint(src.as_uri())
    assert back["epoch"] == 7
    assert (tmp_path / "hub" / "checkpoints" / "remote.pth").exists()


class _Net(nn.Module):
    def __init__(self, classes: int = 2, extra: bool = False):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, classes)
        if extra:
            self.mask_head = nn.Linear(4, 1)


def test_load_model_state_reports_missing_and_unexpected(capsys):
    src = _Net(extra=True)
    dst = _Net()
    report = load_model_state(dst, src.state_dict(), name="ckpt")
    assert report.unexpected == ["mask_head.weight", "mask_head.bias"]
    assert report.missing == []
    assert torch.equal(dst.body.weight, src.body.weight)
    report = load_model_state(_Net(extra=True), _Net().state_dict())
    assert sorted(report.missing) == ["mask_head.bias", "mask_head.weight"]
    assert "missing keys (2" in capsys.readouterr().out


def test_shape_mismatch_names_the_keys():
    with pytest.raises(CheckpointError, match=r"head.weight checkpoint \[3, 4\] vs model \[2, 4\]"):
        load_model_state(_Net(classes=2), _Net(classes=3).state_dict())
    dst = _Net(classes=2)
    report = load_model_state(dst, _Net(classes=3).state_dict(), allow_shape_mismatch=True)
    assert [k for k, _, _ in report.mismatched] == ["head.weight", "head.bias"]
    assert sorted(report.missing) == ["head.bias", "head.weight"]
