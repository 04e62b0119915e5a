"""What building a COCO-format split checks: missing image files, boxes without area or past the border,
images without annotations, --masks without segmentations, empty annotation lists."""
import argparse

import pytest
import torch
from pycocotools.cocoeval import COCOeval

from datasets import build_dataset, get_coco_api_from_dataset
from datasets.coco_eval import CocoEvaluator
from datasets.errors import DatasetFormatError, DatasetNotFoundError
from tests.coco_files import boxes, categories, images, write_split
from util.args import get_args_parser

NAMES = {1: "cat", 2: "dog"}


TRAIN, VAL = "instances_train2017.json", "instances_val2017.json"


def _write(root, split_data: dict[str, dict]) -> None:
    """The COCO layout with the given data per split ('train', 'val')."""
    for split, data in split_data.items():
        write_split(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json", data)


def _set(n_images=3, **changes) -> dict:
    entries = images(n_images, size=(64, 48))
    data = {"images": entries, "annotations": boxes(entries, list(NAMES)), "categories": categories(NAMES)}
    data.update(changes)
    return data


def _args(root, *flags) -> argparse.Namespace:
    return get_args_parser().parse_args(["--device", "cpu", "--coco_path", str(root), *flags])


def test_images_missing_from_the_folder_are_left_out_with_one_warning(tmp_path, capsys):
    _write(tmp_path, {"train": _set(4), "val": _set()})
    (tmp_path / "train2017" / "img2.jpg").unlink()
    (tmp_path / "train2017" / "img4.jpg").unlink()
    dataset = build_dataset("train", _args(tmp_path))
    assert dataset.ids == [1, 3] and len(dataset) == 2
    out = capsys.readouterr().out
    assert out.count("warning:") == 1
    assert f"{TRAIN}: 2 of 4 listed images are not in " in out and "(img2.jpg, img4.jpg)" in out


def test_no_listed_image_in_the_folder_is_an_error_naming_it(tmp_path):
    _write(tmp_path, {"train": _set(), "val": _set()})
    for i in (1, 2, 3):
        (tmp_path / "train2017" / f"img{i}.jpg").rename(tmp_path / f"img{i}.jpg")
    with pytest.raises(DatasetNotFoundError, match=r"none of the 3 images listed in .*instances_train2017"
                                                   r"\.json is in .*train2017 \(the first, img1\.jpg"):
        build_dataset("train", _args(tmp_path))


def _degenerate_set() -> dict:
    """Image 1: a good box, a zero-width one (id 11), one wholly outside (id 12), one past the border (13);
    image 2: a good box; image 3: nothing."""
    data = _set(3)
    good = data["annotations"][:2]
    extra = [{"id": 11, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 8], "area": 0, "iscrowd": 0},
             {"id": 12, "image_id": 1, "category_id": 2, "bbox": [70, 10, 5, 5], "area": 25, "iscrowd": 0},
             {"id": 13, "image_id": 1, "category_id": 2, "bbox": [50, 30, 30, 30], "area": 900, "iscrowd": 0}]
    data["annotations"] = good + extra
    return data


def test_boxes_without_area_are_one_counted_warning_per_split(tmp_path, capsys):
    _write(tmp_path, {"train": _degenerate_set(), "val": _degenerate_set()})
    args = _args(tmp_path)
    train = build_dataset("train", args)
    out = capsys.readouterr().out
    assert (f"{TRAIN}: 2 of 5 boxes have no area inside their image (1 of zero or negative width "
            "or height, 1 wholly outside; annotation ids 11, 12): training drops them\n") in out
    assert f"{TRAIN}: 1 of 5 boxes reach more than 1 px past their image (annotation ids 13)" \
        in out
    assert f"{TRAIN}: 1 of 3 images have no (non-crowd) annotations: they train as background" \
        in out
    train._transforms = None  # the random crop of training could drop a box: look at the targets as read
    assert train[0][1]["labels"].tolist() == [1, 2]  # the good box and the clipped one

    build_dataset("val", args)
    out = capsys.readouterr().out
    assert (f"{VAL}: 2 of 5 boxes have no area inside their image (1 of zero or negative width "
            "or height, 1 wholly outside; annotation ids 11, 12): training drops them; the evaluation keeps "
            "them, as pycocotools does, so each counts as a missed object") in out
    assert out.count("warning:") == 2


def test_evaluation_keeps_pycocotools_figures_for_those_boxes(tmp_path, capsys):
    """Perfect detections of every box with area score what pycocotools gives the file itself."""
    _write(tmp_path, {"train": _degenerate_set(), "val": _degenerate_set()})
    dataset = build_dataset("val", _args(tmp_path))
    coco = get_coco_api_from_dataset(dataset)
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                   "score": 0.9} for a in coco.dataset["annotations"] if a["id"] not in (11, 12)]
    evaluator = CocoEvaluator(coco, ["bbox"])
    for image_id in dataset.ids:
        mine = [d for d in detections if d["image_id"] == image_id]
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]).reshape(-1, 4)
        evaluator.update({image_id: {"boxes": xyxy, "labels": torch.tensor([d["category_id"] for d in mine]),
                                     "scores": torch.full((len(mine),), 0.9)}})
    evaluator.accumulate()
    evaluator.summarize()
    reference = COCOeval(coco, coco.loadRes(detections), "bbox")  # pycocotools on the same file
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
    assert evaluator.coco_eval["bbox"].stats.tolist() == pytest.approx(reference.stats.tolist())
    assert reference.stats[1] < 1.0  # the misses: AP@0.5 of perfect detections is below 1


@pytest.mark.parametrize("segmentation", [None, []])
def test_masks_without_segmentations_stop_at_building_naming_the_file(tmp_path, segmentation):
    data = _set()
    for ann in data["annotations"]:
        ann.pop("segmentation", None)
        if segmentation is not None:
            ann["segmentation"] = segmentation  # an empty list, as detection-only exports write it
    _write(tmp_path, {"train": data, "val": data})
    with pytest.raises(DatasetFormatError, match=rf"annotation file .*{TRAIN}: --masks needs a "
                                                  r"segmentation for every annotation, and 3 have none or an "
                                                  r"empty one \(annotation ids 1, 2, 3\)"):
        build_dataset("train", _args(tmp_path, "--masks"))


def test_an_empty_training_annotation_list_stops(tmp_path):
    _write(tmp_path, {"train": _set(annotations=[]), "val": _set()})
    with pytest.raises(DatasetFormatError, match=rf"{TRAIN}: 'annotations' is empty: nothing to "
                                                  "train on"):
        build_dataset("train", _args(tmp_path))


def test_an_empty_validation_annotation_list_warns_in_training_and_stops_an_evaluation(tmp_path, capsys):
    _write(tmp_path, {"train": _set(), "val": _set(annotations=[])})
    build_dataset("val", _args(tmp_path))
    assert "every evaluation figure will be -1 (training goes on)" in capsys.readouterr().out
    with pytest.raises(DatasetFormatError, match="the evaluation would report -1 for every figure"):
        build_dataset("val", _args(tmp_path, "--eval"))


def test_a_clean_split_builds_silently(tmp_path, capsys):
    _write(tmp_path, {"train": _set(), "val": _set()})
    build_dataset("train", _args(tmp_path))
    build_dataset("val", _args(tmp_path))
    assert capsys.readouterr().out == ""

