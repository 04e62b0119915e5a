"""The detector registry: one list of names, per-detector flag defaults under the typed flags, the flags a
detector refuses, and the published state dicts recognised from their keys."""
import argparse
import json
from pathlib import Path

import pytest

from models import build_model
from models.detectors import DETECTORS, recognise
from tests.tiny_model import tiny_flags
from util.args import args_notices, args_problem, get_args_parser, parse_args, with_defaults

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "state_dict"


def _main_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="main.py", parents=[get_args_parser()])


def test_the_public_parser_keeps_deformable_detr_defaults():
    args = get_args_parser().parse_args(["--meta_arch", "detr"])
    assert (args.meta_arch, args.lr, args.num_queries, args.dim_feedforward) == ("detr", 2e-4, 300, 1024)


def test_detr_takes_its_public_defaults_and_a_typed_flag_wins():
    args = parse_args(_main_parser(), ["--meta_arch", "detr", "--num_queries", "50", "--lr=3e-4"])
    assert (args.lr, args.num_queries, args.lr_backbone, args.epochs) == (3e-4, 50, 1e-5, 300)
    assert (args.lr_drop, args.dim_feedforward, args.num_feature_levels) == (200, 2048, 1)
    assert (args.set_cost_class, args.cls_loss_coef) == (1, 1)
    assert (args.eos_coef, args.lr_backbone_names, args.lr_linear_proj_names) == (0.1, ["backbone"], [])
    assert args.panoptic_threshold == 0.85
    conditional = parse_args(_main_parser(), ["--meta_arch", "conditional_detr"])
    assert (conditional.num_queries, conditional.epochs, conditional.lr) == (300, 50, 1e-4)
    assert parse_args(_main_parser(), []).lr == 2e-4  # deformable_detr: the parser's own defaults


def test_a_namespace_missing_flags_gets_its_detectors_defaults():
    args = with_defaults(argparse.Namespace(meta_arch="detr", num_queries=42))
    assert (args.num_queries, args.dim_feedforward, args.lr) == (42, 2048, 1e-4)
    assert with_defaults(argparse.Namespace()).dim_feedforward == 1024


@pytest.mark.parametrize("meta_arch, flags, flag", [
    ("detr", ["--two_stage"], "--two_stage"),
    ("detr", ["--with_box_refine"], "--with_box_refine"),
    ("detr", ["--num_feature_levels", "4"], "--num_feature_levels"),
    ("detr", ["--focal_alpha", "0.5"], "--focal_alpha"),
    ("conditional_detr", ["--eos_coef", "0.2"], "--eos_coef"),
    ("deformable_detr", ["--pre_norm"], "--pre_norm"),
    ("deformable_detr", ["--eos_coef", "0.2"], "--eos_coef"),
    ("deformable_detr", ["--start_idx", "2"], "--start_idx"),
])
def test_flags_that_make_no_sense_for_a_detector_are_refused_in_one_line(meta_arch, flags, flag):
    args = parse_args(_main_parser(), tiny_flags("--meta_arch", meta_arch, *flags))
    problem = args_problem(args)
    assert problem.startswith(f"{flag} does not apply to --meta_arch {meta_arch}: ") and "\n" not in problem


def test_flags_that_do_nothing_for_a_detector_get_a_notice():
    args = parse_args(_main_parser(), tiny_flags("--meta_arch", "conditional_detr", "--enc_n_points", "8"))
    assert not (args_problem(args) or "").startswith("--enc_n_points")
    notes = [n for n in args_notices(args) if n.startswith("--enc_n_points")]
    assert notes == ["--enc_n_points 8 has no effect with --meta_arch conditional_detr: its encoder has no "
                     "deformable attention"]
    assert args_notices(parse_args(_main_parser(), tiny_flags("--enc_n_points", "8"))) == []


def test_detector_rules_are_the_detectors():
    """GroupNorm(32) in Deformable DETR's projections: DETR's plain projection takes any width."""
    deformable = parse_args(_main_parser(), tiny_flags("--hidden_dim", "48", "--nheads", "2"))
    assert args_problem(deformable).startswith("--hidden_dim must be a multiple of 32")
    detr = parse_args(_main_parser(), tiny_flags("--meta_arch", "detr", "--hidden_dim", "48", "--nheads", "2",
                                                 "--num_feature_levels", "1"))
    assert not (args_problem(detr) or "").startswith("--hidden_dim")


def test_bt_decay_is_the_public_spelling_of_bf_weight_decay():
    assert get_args_parser().parse_args(["--bt_decay", "0.05"]).bf_weight_decay == 0.05
    assert get_args_parser().parse_args(["--bt-decay", "0.05"]).bf_weight_decay == 0.05


def test_a_registered_detector_without_its_model_says_so_in_one_line():
    unbuilt = [name for name, entry in DETECTORS.items() if entry.module is None]
    for name in unbuilt:
        args = parse_args(_main_parser(), tiny_flags("--meta_arch", name))
        assert args_problem(args).startswith(f"--meta_arch {name}: the detector is registered")
        with pytest.raises(ValueError, match=f"--meta_arch {name}: .* not part of this version"):
            build_model(args)


@pytest.mark.parametrize("layout, meta_arch", [
    ("base", "deformable_detr"), ("two_stage", "deformable_detr"), ("bf_noshare", "deformable_detr"),
    ("detr", "detr"), ("detr_dc5", "detr"), ("detr_panoptic", "detr"), ("detr_bf_noshare", "detr"),
    ("conditional_detr", "conditional_detr"),
])
def test_published_state_dicts_are_recognised_from_their_keys(layout, meta_arch):
    keys = [name for name, _ in json.loads((REFERENCE / f"{layout}.json").read_text())]
    assert recognise(keys) == meta_arch
    assert recognise(f"module.{k}" for k in keys) == meta_arch  # a DDP-wrapped save
    assert recognise(k for k in keys if "level_embed" not in k and "ref_point" not in k
                     and "multihead_attn" not in k) is None
