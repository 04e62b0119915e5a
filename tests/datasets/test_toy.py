import argparse
import json

import numpy as np
import pytest
from PIL import Image

from datasets import build_dataset, toy


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_toy(tmp_path_factory):
    return toy.generate(tmp_path_factory.mktemp("toy") / "set", num_train=12, num_val=4, seed=3)


def test_generation_is_deterministic(small_toy, tmp_path):
    again = toy.generate(tmp_path / "again", num_train=12, num_val=4, seed=3)
    assert _files(small_toy) == _files(again)
    other = toy.generate(tmp_path / "other", num_train=12, num_val=4, seed=4)
    assert _files(other)["train2017/000001.jpg"] != _files(small_toy)["train2017/000001.jpg"]


def test_layout_and_annotations(small_toy):
    assert toy.is_complete(small_toy, 12, 4, 3)
    data = json.loads((small_toy / "annotations" / "instances_train2017.json").read_text())
    assert len(data["images"]) == 12
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5]
    assert max(c["id"] for c in data["categories"]) < toy.toy_num_classes()
    per_image = {img["id"]: 0 for img in data["images"]}
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]] += 1
        w, h = sizes[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
        assert 0.15 * min(w, h) <= max(bw, bh) <= 0.7 * min(w, h)
        assert 0 < ann["area"] <= bw * bh
    assert all(1 <= n <= 4 for n in per_image.values())
    for img in data["images"]:
        with Image.open(small_toy / "train2017" / img["file_name"]) as im:
            assert im.format == "JPEG" and im.size == (img["width"], img["height"])
            assert 96 <= im.width <= 192 and 96 <= im.height <= 192


def test_each_object_has_its_class_colour(small_toy):
    """The centre of every box not covered by a later shape shows the class colour (the task is learnable)."""
    data = json.loads((small_toy / "annotations" / "instances_train2017.json").read_text())
    colours = {c: np.array(rgb) for c, _, rgb in toy.CLASSES}
    checked = 0
    for img in data["images"]:
        with Image.open(small_toy / "train2017" / img["file_name"]) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=float)
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        for i, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            cx, cy = x + w / 2, y + h / 2
            if any(b["bbox"][0] <= cx <= b["bbox"][0] + b["bbox"][2]
                   and b["bbox"][1] <= cy <= b["bbox"][1] + b["bbox"][3] for b in anns[i + 1:]):
                continue
            patch = pixels[int(cy) - 1:int(cy) + 2, int(cx) - 1:int(cx) + 2].reshape(-1, 3).mean(0)
            distances = {c: np.abs(patch - rgb).max() for c, rgb in colours.items()}
            assert min(distances, key=distances.get) == ann["category_id"]
            assert distances[ann["category_id"]] < 45
            checked += 1
    assert checked >= 12


def test_incomplete_folder_is_regenerated(small_toy, tmp_path):
    root = toy.generate(tmp_path / "set", num_train=12, num_val=4, seed=3)
    (root / "val2017" / "000002.jpg").unlink()
    assert not toy.is_complete(root, 12, 4, 3)
    toy.ensure_toy_dataset(root, 12, 4, 3)
    assert _files(root) == _files(small_toy)
    assert not list(tmp_path.glob(".set-*"))  # temporary folders are cleaned up


def test_read_through_the_coco_path(tmp_path, monkeypatch):
    # build() uses the default counts; make them small so the test stays fast
    monkeypatch.setattr(toy, "ensure_toy_dataset",
                        lambda root: toy.generate(root, num_train=5, num_val=3, seed=0))
    args = argparse.Namespace(dataset_file="toy", toy_root=str(tmp_path / "t"), masks=True, cache_mode=False)
    val = build_dataset("val", args)
    assert len(val) == 3
    img, target = val[0]
    assert img.shape[0] == 3 and min(img.shape[1:]) == toy.TOY_TRANSFORMS["val_size"]
    assert len(target["labels"]) >= 1 and target["masks"].shape[1:] == img.shape[1:]
    assert (target["labels"] < toy.toy_num_classes()).all()
    assert len(build_dataset("train", args)) == 5
