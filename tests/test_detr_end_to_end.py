"""DETR (--meta_arch detr) end to end on the toy sets with a tiny model: a few iterations lower the loss with
and without BatchFormerV2; main.py trains, evaluates and resumes; test.py evaluates what it wrote; --amp with
--use_checkpoint; DETR's two-step panoptic recipe (--masks --frozen_weights) with BatchFormerV2."""
import argparse
import json

import pytest
import torch

import main as main_module
import test as test_module
from datasets import build_dataset, toy_panoptic
from models import build_model
from tests.tiny_model import tiny_flags
from util.args import get_args_parser, parse_args
from util.checkpoint import load_checkpoint
from util.misc import collate_fn

DETR = tiny_flags("--meta_arch", "detr", "--num_workers", "0", "--print_freq", "1")


def _run(out, *extra):
    return [*DETR, "--output_dir", str(out), "--batch_size", "2", "--max_iters_per_epoch", "2",
            "--max_eval_iters", "1", *extra]


@pytest.mark.parametrize("bf", [[], ["--bf", "3"]])
def test_a_few_iterations_lower_the_loss(bf):
    """Ten steps of DETR's recipe (AdamW, its lrs, clipping) on one toy batch: the weighted loss falls."""
    args = parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), [*DETR, "--dropout", "0", *bf])
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    optimizer, _ = main_module.build_optimizer(model, args)
    samples, targets = collate_fn([build_dataset("train", args)[i] for i in range(2)])
    model.train()
    losses = []
    for _ in range(10):
        out = model(samples)
        assert out["num_streams"] == (2 if bf else 1)
        terms = criterion(out, targets)
        loss = sum(terms[k] * w for k, w in criterion.weight_dict.items() if k in terms)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses


def test_main_trains_evaluates_resumes_and_test_py_evaluates_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    main_module.cli(_run(out, "--bf", "3", "--epochs", "1"))
    checkpoint = load_checkpoint(str(out / "checkpoint.pth"))
    assert checkpoint["args"].meta_arch == "detr" and checkpoint["args"].bf == 3
    assert any(k.startswith("transformer.bf.") for k in checkpoint["model"])
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0] and len(log[0]["test_coco_eval_bbox"]) == 12
    trained = json.loads((out / "eval_stats.json").read_text())["coco_eval_bbox"]

    main_module.cli(_run(out, "--bf", "3", "--epochs", "2", "--resume", str(out / "checkpoint.pth")))
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1]
    assert load_checkpoint(str(out / "checkpoint.pth"))["epoch"] == 1
    resumed = json.loads((out / "eval_stats.json").read_text())["coco_eval_bbox"]

    # test.py takes the detector and every model flag from the checkpoint (the BatchFormer is skipped).
    test_module.cli(["--resume", str(out / "checkpoint.pth"), "--device", "cpu", "--num_workers", "0",
                     "--batch_size", "2", "--max_eval_iters", "1", "--output_dir", str(tmp_path / "eval")])
    evaluated = json.loads((tmp_path / "eval" / "eval_stats.json").read_text())["coco_eval_bbox"]
    assert evaluated == pytest.approx(resumed) and len(trained) == 12


def test_amp_with_use_checkpoint_and_batchformer_trains(tmp_path):
    main_module.cli(_run(tmp_path, "--bf", "3", "--use_checkpoint", "--amp", "--epochs", "1", "--eval_every",
                         "0", "--max_iters_per_epoch", "1"))
    log = json.loads((tmp_path / "log.txt").read_text())
    assert torch.isfinite(torch.tensor(log["train_loss"]))


def test_two_step_panoptic_recipe_with_batchformer(tmp_path, monkeypatch):
    """Step 1 trains the detector (--bf 3) on the panoptic set's boxes; step 2 trains the mask head alone on
    its frozen weights, --bf 3 --use_checkpoint (the published BatchFormerV2 panoptic setting), and evaluates
    PQ; the detector's weights come out unchanged."""
    monkeypatch.setitem(toy_panoptic.DEFAULT_SIZES, "num_train", 4)
    monkeypatch.setitem(toy_panoptic.DEFAULT_SIZES, "num_val", 2)
    panoptic = ["--dataset_file", "toy_panoptic", "--toy_panoptic_root", str(tmp_path / "data"), "--nheads",
                "8", "--bf", "3", "--epochs", "1"]
    main_module.cli(_run(tmp_path / "detector", *panoptic, "--eval_every", "0"))
    detector = tmp_path / "detector" / "checkpoint.pth"
    main_module.cli(_run(tmp_path / "masks", *panoptic, "--masks", "--frozen_weights", str(detector),
                         "--use_checkpoint"))
    stats = json.loads((tmp_path / "masks" / "eval_stats.json").read_text())
    assert "PQ_all" in stats and len(stats["coco_eval_masks"]) == 12
    before = load_checkpoint(str(detector))["model"]
    after = load_checkpoint(str(tmp_path / "masks" / "checkpoint.pth"))["model"]
    assert all(torch.equal(after[f"detr.{k}"], v) for k, v in before.items())
    assert any(k.startswith("mask_head.") for k in after)
