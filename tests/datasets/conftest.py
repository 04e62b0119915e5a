"""A tiny COCO-layout folder written by the tests: a few JPEGs and instances files with edge cases."""
import json

import numpy as np
import pytest
from PIL import Image

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]


def _square(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def make_coco_folder(root, images=None, annotations=None):
    """Write ``root`` in COCO layout; returns the instances dict of the train split."""
    rng = np.random.default_rng(0)
    if images is None:
        images = [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "b.jpg", "width": 64, "height": 96},  # no annotations
            {"id": 7, "file_name": "c.jpg", "width": 120, "height": 90},
        ]
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0,
             "area": 1200.0, "segmentation": _square(10, 20, 30, 40)},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 20], "iscrowd": 1,
             "area": 400.0, "segmentation": _square(5, 5, 20, 20)},  # crowd
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [80, 60, 40, 30], "iscrowd": 0,
             "area": 1200.0, "segmentation": _square(80, 60, 40, 30)},  # past the border
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [50, 50, 0, 10], "iscrowd": 0,
             "area": 0.0, "segmentation": _square(50, 50, 0, 10)},  # empty
            {"id": 5, "image_id": 7, "category_id": 3, "bbox": [0, 0, 60, 45], "iscrowd": 0,
             "area": 2700.0, "segmentation": _square(0, 0, 60, 45)},
            {"id": 6, "image_id": 7, "category_id": 1, "bbox": [130, 10, 10, 10], "iscrowd": 0,
             "area": 100.0, "segmentation": _square(130, 10, 10, 10)},  # wholly outside
        ]
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train2017", "val2017"):
        (root / split).mkdir(exist_ok=True)
        for img in images:
            pixels = rng.integers(0, 255, size=(img["height"], img["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / img["file_name"], quality=90)
        with open(root / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump(data, f)
    return data


@pytest.fixture
def coco_folder(tmp_path):
    root = tmp_path / "coco"
    make_coco_folder(root)
    return root


@pytest.fixture
def write_coco_folder():
    """The folder writer itself, for tests that need their own images or annotations."""
    return make_coco_folder
