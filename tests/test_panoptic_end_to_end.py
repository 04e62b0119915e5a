"""--masks end to end on the toy panoptic set: train a few iterations, evaluate, write predictions and PQ."""
import argparse
import json

import pytest
import torch

import main as main_module
from datasets import build_dataset, toy_panoptic
from datasets.panoptic_eval import pq_compute
from engine import evaluate
from models import build_model
from tests.tiny_model import tiny_flags
from util.checkpoint import load_checkpoint
from util.misc import collate_fn

TINY = tiny_flags(
    "--dataset_file", "toy_panoptic", "--dim_feedforward", "32", "--num_queries", "8",
    "--num_feature_levels", "3", "--num_workers", "0", "--print_freq", "1", "--masks"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two training iterations (two-stream BatchFormerV2) and an evaluation of one batch."""
    patch = pytest.MonkeyPatch()
    patch.setitem(toy_panoptic.DEFAULT_SIZES, "num_train", 4)
    patch.setitem(toy_panoptic.DEFAULT_SIZES, "num_val", 3)
    root = tmp_path_factory.mktemp("data") / "toy_panoptic"
    out = tmp_path_factory.mktemp("run")
    parser = argparse.ArgumentParser(parents=[main_module.get_args_parser()])
    args = parser.parse_args(TINY + [
        "--toy_panoptic_root", str(root), "--output_dir", str(out), "--batch_size", "2", "--epochs", "1",
        "--max_iters_per_epoch", "2", "--max_eval_iters", "1", "--bf", "1", "--insert_idx", "0"])
    stats = main_module.main(args)
    yield args, out, stats
    patch.undo()


def test_training_and_evaluation_write_pq_and_predictions(run):
    args, out, stats = run
    eval_stats = json.loads((out / "eval_stats.json").read_text())
    for key in ("PQ_all", "PQ_th", "PQ_st"):
        assert set(eval_stats[key]) == {"pq", "sq", "rq", "n"}
        assert eval_stats[key] == pytest.approx(stats[key])
    assert eval_stats["PQ_all"]["n"] == eval_stats["PQ_th"]["n"] + eval_stats["PQ_st"]["n"] > 0
    assert len(eval_stats["coco_eval_masks"]) == 12 and len(eval_stats["coco_eval_bbox"]) == 12
    predictions = json.loads((out / "panoptic_eval" / "predictions.json").read_text())
    assert sorted(a["image_id"] for a in predictions["annotations"]) == [1, 2]  # the one evaluated batch
    for ann in predictions["annotations"]:
        assert (out / "panoptic_eval" / ann["file_name"]).is_file()
    log = json.loads((out / "log.txt").read_text().splitlines()[0])
    assert log["train_loss_mask_unscaled"] > 0 and log["train_loss_dice_unscaled"] > 0


def test_evaluation_of_every_image_matches_the_file_based_pq(run, tmp_path):
    """With every query kept the predictions have segments; the PQ that evaluate() reports is the
    one computed from the written results files."""
    args, out, _ = run
    model, criterion, postprocessors = build_model(args)
    model.load_state_dict(load_checkpoint(str(out / "checkpoint.pth"))["model"])
    postprocessors["panoptic"].threshold = 0.0
    postprocessors["panoptic"].min_area = 0
    dataset = build_dataset("val", args)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_fn)
    stats, _ = evaluate(model, criterion, postprocessors, loader, dataset.coco, torch.device("cpu"),
                        str(tmp_path), print_freq=100)
    pred_dir = tmp_path / "panoptic_eval"
    predictions = json.loads((pred_dir / "predictions.json").read_text())
    assert len(predictions["annotations"]) == 3
    assert all(ann["segments_info"] for ann in predictions["annotations"])
    from_files = pq_compute(dataset.ann_file, str(pred_dir / "predictions.json"), dataset.ann_folder,
                            str(pred_dir))
    assert stats["PQ_all"] == pytest.approx(from_files["All"])
    assert stats["PQ_th"] == pytest.approx(from_files["Things"])
    assert stats["PQ_st"] == pytest.approx(from_files["Stuff"])
