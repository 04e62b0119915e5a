"""tools/demo_longtail.py: a one-seed miniature end to end (data, both models, both variants, report)."""

import json

import pytest
import torch

from tools import demo_longtail

CHANCE = 10.0  # per cent, 10 balanced test classes


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_miniature_learns_and_writes_its_report(tmp_path, capsys, one_thread):
    flags = ["--seeds", "1", "--ratios", "10", "--epochs_cnn", "12", "--epochs_vit", "20"]
    summary = demo_longtail.main([*flags, "--output_dir", str(tmp_path)])
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {(r["model"], r["variant"]) for r in rows} == {
        ("cnn", "base"), ("cnn", "+BF"), ("cnn", "+BF avg"), ("vit", "base"), ("vit", "+BF")}
    for r in rows:  # the ViT learns slowly: after 20 epochs it is above chance, not good
        assert r["All"] > CHANCE + 10, r
    for entry in summary:
        diff = entry["diff"]["+BF"]["All"]
        by = {r["variant"]: r["All"] for r in rows if r["model"] == entry["model"]}
        assert diff["mean"] == pytest.approx(by["+BF"] - by["base"]) and diff["std"] == 0.0
    assert (tmp_path / "longtail.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "+BF - base" in out and "CNN, imbalance ratio 10, 12 epochs" in out


def test_bad_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo_longtail.parse_args(["--seeds", "0"])
    assert exit_info.value.code == 2 and "--seeds must be at least 1" in capsys.readouterr().err
