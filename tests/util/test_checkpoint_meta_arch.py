"""Which detector a checkpoint holds: its recorded --meta_arch, else its keys (the public repositories'
files record none, or no args at all), and the flags that follow from it."""
import argparse
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from util.args import get_args_parser, parse_args
from util.checkpoint import (
    CheckpointError,
    adopt_recorded_flags,
    architecture_differences,
    load_weights,
    recorded_meta_arch,
)

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "state_dict"


def _published(layout: str) -> dict:
    """A state dict with the keys of a published layout (the values do not matter here)."""
    return {name: torch.zeros(1) for name, _ in json.loads((REFERENCE / f"{layout}.json").read_text())}


def _parsed(*argv: str) -> argparse.Namespace:
    return parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), list(argv))


# What the public DETR main.py records: its own flags, none of ours (no --meta_arch, no levels).
DETR_ARGS = argparse.Namespace(
    lr=1e-4, lr_backbone=1e-5, batch_size=2, epochs=300, lr_drop=200, backbone="resnet50", dilation=False,
    position_embedding="sine", enc_layers=6, dec_layers=6, dim_feedforward=2048, hidden_dim=256, dropout=0.1,
    nheads=8, num_queries=100, pre_norm=False, masks=False, eos_coef=0.1, dataset_file="coco")


def test_a_detector_this_version_lacks_is_named():
    saved = argparse.Namespace(meta_arch="dino")
    expected = r"^new.pth records --meta_arch dino, which is no detector of this version \(deformable_detr, "
    with pytest.raises(CheckpointError, match=expected):
        adopt_recorded_flags(_parsed(), saved, set(), "new.pth")


def test_this_code_records_its_detector():
    args = _parsed()
    assert args.meta_arch == "deformable_detr"
    assert recorded_meta_arch(args, _published("detr")) == ("deformable_detr", None)  # recorded wins


@pytest.mark.parametrize("layout, meta_arch", [
    ("detr", "detr"), ("detr_panoptic", "detr"), ("conditional_detr", "conditional_detr"),
    ("base", "deformable_detr"),
])
def test_a_file_without_args_is_recognised_from_its_keys_with_a_notice(layout, meta_arch):
    found, notice = recorded_meta_arch(None, _published(layout))
    assert found == meta_arch
    assert notice == f"records no --meta_arch; its keys are those of --meta_arch {meta_arch}"
    assert recorded_meta_arch(None, {"foo.weight": torch.zeros(1)}) == ("deformable_detr", None)


def test_test_py_builds_a_bare_detr_file_with_detrs_defaults_and_the_typed_flags():
    args = _parsed("--num_queries", "50")
    notices = adopt_recorded_flags(args, None, {"num_queries"}, "detr-r50.pth", state_dict=_published("detr"))
    assert (args.meta_arch, args.num_queries, args.dim_feedforward) == ("detr", 50, 2048)
    assert args.num_feature_levels == 1
    assert (args.lr, args.set_cost_class, args.panoptic_threshold) == (1e-4, 1, 0.85)
    assert notices[0] == "detr-r50.pth records no --meta_arch; its keys are those of --meta_arch detr"
    assert "built from --meta_arch detr and command line's flags" in notices[1]


def test_detr_args_without_our_flags_take_detrs_defaults_for_them():
    args = _parsed()
    adopt_recorded_flags(args, DETR_ARGS, set(), "detr.pth", state_dict=_published("detr"))
    assert (args.meta_arch, args.num_feature_levels, args.num_queries, args.bf) == ("detr", 1, 100, 0)
    assert architecture_differences(DETR_ARGS, args, meta_arch="detr") == []


def test_resuming_a_detr_file_into_deformable_flags_names_meta_arch(capsys):
    checkpoint = {"model": _published("detr")}
    with pytest.raises(CheckpointError, match=r"--meta_arch \(checkpoint detr, this run deformable_detr\).*"
                                              r"pass --meta_arch detr"):
        load_weights(nn.Linear(1, 1), checkpoint, _parsed(), "--resume detr.pth", complete=True)
    said = capsys.readouterr().out
    assert "--resume detr.pth records no --meta_arch; its keys are those of --meta_arch detr" in said
    checkpoint["args"] = DETR_ARGS
    with pytest.raises(CheckpointError, match=r"--meta_arch \(checkpoint detr, this run deformable_detr\)"):
        load_weights(nn.Linear(1, 1), checkpoint, _parsed(), "--resume detr.pth", complete=True)


def test_batchformer_layouts_compare_where_they_run():
    """DETR's --bf 3 without --insert_idx runs after every layer from --start_idx: not --insert_idx 0."""
    detr_bf3 = ("--meta_arch", "detr", "--bf", "3")
    saved = _parsed(*detr_bf3)
    assert architecture_differences(saved, _parsed(*detr_bf3, "--start_idx", "0")) == []
    differences = architecture_differences(saved, _parsed(*detr_bf3, "--insert_idx", "0"))
    assert differences == [("insert_idx", [0, 1, 2, 3, 4, 5], [0])]
    # Deformable DETR's --bf 1 without --insert_idx is layer 0.
    assert architecture_differences(_parsed("--bf", "1"), _parsed("--bf", "1", "--insert_idx", "0")) == []
