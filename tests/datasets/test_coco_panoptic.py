"""COCO panoptic reading (targets from PNGs, transforms, errors) and the toy panoptic set."""
import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import DatasetError, build_dataset
from datasets.coco_panoptic import CocoPanoptic, build_from_folders, panoptic_target
from datasets.panoptic_eval import PanopticEvaluator, png_bytes, read_panoptic_png
from datasets.toy_panoptic import categories, ensure_toy_panoptic, is_complete
from util.args import get_args_parser


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return ensure_toy_panoptic(tmp_path_factory.mktemp("toy") / "toy_panoptic", num_train=6, num_val=3)


def test_panoptic_target_from_ids():
    ids = np.zeros((6, 8), np.int64)
    ids[:3] = 300  # stuff
    ids[4:6, 1:4] = 70000  # thing
    ids[3, 6:8] = 9  # crowd
    info = [{"id": 300, "category_id": 6, "iscrowd": 0}, {"id": 70000, "category_id": 2, "iscrowd": 0},
            {"id": 9, "category_id": 2, "iscrowd": 1}, {"id": 5, "category_id": 1, "iscrowd": 0}]
    t = panoptic_target(ids, info, image_id=4)
    assert t["labels"].tolist() == [6, 2]  # crowd and the segment missing from the PNG dropped
    assert t["boxes"].tolist() == [[0, 0, 8, 3], [1, 4, 4, 6]]  # xyxy, pixel edges
    assert t["masks"].shape == (2, 6, 8) and t["masks"].dtype == torch.bool
    assert t["masks"][1].sum() == 6 and t["area"].tolist() == [24.0, 6.0]
    assert t["size"].tolist() == [6, 8] and t["image_id"].tolist() == [4]
    assert "masks" not in panoptic_target(ids, info, image_id=4, return_masks=False)


def test_toy_set_is_deterministic_and_consistent(toy_root, tmp_path):
    assert is_complete(toy_root, 6, 3)
    again = ensure_toy_panoptic(tmp_path / "again", num_train=6, num_val=3)
    for sub in ("panoptic_val2017/000002.png", "annotations/panoptic_val2017.json", "val2017/000003.jpg"):
        assert (toy_root / sub).read_bytes() == (again / sub).read_bytes()
    data = json.loads((toy_root / "annotations" / "panoptic_train2017.json").read_text())
    cats = {c["id"]: c for c in data["categories"]}
    assert {c["isthing"] for c in cats.values()} == {0, 1}
    for ann, img in zip(data["annotations"], data["images"]):
        ids = read_panoptic_png(str(toy_root / "panoptic_train2017" / ann["file_name"]))
        assert ids.shape == (img["height"], img["width"])
        present, counts = np.unique(ids, return_counts=True)
        area = dict(zip(present.tolist(), counts.tolist()))
        assert {s["id"] for s in ann["segments_info"]} == set(area) - {0}
        assert all(area[s["id"]] == s["area"] for s in ann["segments_info"])
        assert 0 in area  # the VOID horizon line
        assert any(not cats[s["category_id"]]["isthing"] for s in ann["segments_info"])
    instances = json.loads((toy_root / "annotations" / "instances_train2017.json").read_text())
    assert all(cats[a["category_id"]]["isthing"] for a in instances["annotations"])


def test_dataset_items_follow_the_transforms(toy_root):
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(
        ["--dataset_file", "toy_panoptic", "--toy_panoptic_root", str(toy_root), "--masks"])
    for image_set in ("train", "val"):
        ds = build_dataset(image_set, args)
        assert isinstance(ds, CocoPanoptic) and ds.coco is not None
        for i in range(min(len(ds), 3)):
            image, t = ds[i]
            h, w = t["size"].tolist()
            assert image.shape == (3, h, w) and t["masks"].shape[1:] == (h, w)
            assert len(t["masks"]) == len(t["labels"]) == len(t["boxes"])
            assert set(t["labels"].tolist()) <= {c["id"] for c in categories()}
            # The boxes (normalised cxcywh) follow the transformed masks: tight at validation (nearest
            # resizing moves mask edges by a pixel or two); in training they still contain the masks
            # (a crop clips the box, which can leave it larger than the cropped mask's extent).
            ys, xs = t["masks"].any(2), t["masks"].any(1)
            assert ys.any(1).all(), "an instance kept by the transforms has an empty mask"
            for box, rows, cols in zip(t["boxes"], ys, xs):
                x0, x1 = cols.nonzero()[[0, -1], 0].tolist()
                y0, y1 = rows.nonzero()[[0, -1], 0].tolist()
                cx, cy, bw, bh = (box * torch.tensor([w, h, w, h])).tolist()
                box_xyxy = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
                if image_set == "val":
                    assert box_xyxy == pytest.approx([x0, y0, x1 + 1, y1 + 1], abs=2)
                else:
                    assert box_xyxy[0] <= x0 + 3 and box_xyxy[1] <= y0 + 3
                    assert box_xyxy[2] >= x1 - 2 and box_xyxy[3] >= y1 - 2


def test_ground_truth_of_the_toy_set_scores_pq_one(toy_root, tmp_path):
    ds = build_from_folders(toy_root, toy_root, "val", argparse.Namespace(masks=False), transforms=None)
    evaluator = PanopticEvaluator(ds.ann_file, ds.ann_folder, str(tmp_path / "panoptic_eval"))
    data = json.loads((toy_root / "annotations" / "panoptic_val2017.json").read_text())
    for ann in data["annotations"]:
        ids = read_panoptic_png(str(toy_root / "panoptic_val2017" / ann["file_name"]))
        evaluator.update([{"image_id": ann["image_id"], "png_string": png_bytes(ids),
                           "segments_info": ann["segments_info"]}])
    evaluator.synchronize_between_processes()
    res = evaluator.summarize()
    assert res["All"]["pq"] == pytest.approx(1.0) and res["All"]["n"] > 3


def test_missing_folders_and_flags_give_clear_errors(tmp_path, toy_root):
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(
        ["--dataset_file", "coco_panoptic", "--coco_path", str(tmp_path)])
    with pytest.raises(ValueError, match="--coco_panoptic_path"):
        build_dataset("val", args)
    args.coco_panoptic_path = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="panoptic_val2017.json"):
        build_dataset("val", args)
    # a PNG whose size differs from its image
    png = toy_root / "panoptic_val2017" / "000001.png"
    saved = png.read_bytes()
    try:
        Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(png)
        ds = build_from_folders(toy_root, toy_root, "val", argparse.Namespace(masks=True), transforms=None)
        with pytest.raises(ValueError, match="000001.png"):
            ds[0]
    finally:
        png.write_bytes(saved)


def _official_layout(toy_root, dst):
    """The toy set laid out as the official COCO panoptic zip unpacks: the PNG folders inside annotations/."""
    import shutil

    shutil.copytree(toy_root, dst)
    for split in ("train2017", "val2017"):
        (dst / f"panoptic_{split}").rename(dst / "annotations" / f"panoptic_{split}")
    return dst


def test_official_layout_with_png_folders_inside_annotations(toy_root, tmp_path):
    root = _official_layout(toy_root, tmp_path / "coco")
    detr = build_from_folders(toy_root, toy_root, "val", argparse.Namespace(masks=True), transforms=None)
    official = build_from_folders(root, root, "val", argparse.Namespace(masks=True), transforms=None)
    assert official.ann_folder == str(root / "annotations" / "panoptic_val2017")
    assert len(official) == len(detr)
    for i in range(len(detr)):
        assert torch.equal(official[i][1]["masks"], detr[i][1]["masks"])
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(
        ["--dataset_file", "coco_panoptic", "--coco_path", str(root), "--coco_panoptic_path", str(root)])
    detr_train = build_from_folders(toy_root, toy_root, "train", argparse.Namespace(masks=False), None)
    assert len(build_dataset("train", args)) == len(detr_train)


def test_png_folder_still_zipped_is_named(toy_root, tmp_path):
    root = _official_layout(toy_root, tmp_path / "coco")
    png_folder = root / "annotations" / "panoptic_val2017"
    for png in png_folder.iterdir():
        png.unlink()
    png_folder.rmdir()
    (root / "annotations" / "panoptic_val2017.zip").write_bytes(b"PK")
    with pytest.raises(FileNotFoundError, match=r"panoptic_val2017\.zip") as e:
        build_from_folders(root, root, "val", argparse.Namespace(masks=True), transforms=None)
    assert isinstance(e.value, DatasetError) and "\n" not in str(e.value)
