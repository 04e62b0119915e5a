import argparse
import json

import pytest
import torch

from datasets import build_dataset, get_coco_api_from_dataset
from datasets.coco import CocoDetection
from datasets.torchvision_datasets import AnnotationFileError


def _args(root, **kw):
    return argparse.Namespace(dataset_file="coco", coco_path=str(root), masks=False, cache_mode=False, **kw)


def _raw(root, split="train2017"):
    """The dataset without transforms: targets in pixels, xyxy."""
    return CocoDetection(str(root / split), str(root / "annotations" / f"instances_{split}.json"),
                         transforms=None, return_masks=True)


def test_targets_drop_crowd_and_empty_and_clip_to_image(coco_folder):
    ds = _raw(coco_folder)
    assert ds.ids == [1, 2, 7]
    img, t = ds[0]
    assert img.mode == "RGB" and img.size == (100, 80)
    # ann 2 (crowd) and ann 4 (zero width) are gone; ann 3 is clipped to the 100x80 image
    assert t["labels"].tolist() == [1, 3]
    assert t["boxes"].tolist() == [[10, 20, 40, 60], [80, 60, 100, 80]]
    assert t["iscrowd"].tolist() == [0, 0]
    assert t["image_id"].tolist() == [1]
    assert t["orig_size"].tolist() == [80, 100] and t["size"].tolist() == [80, 100]
    assert t["masks"].shape == (2, 80, 100) and t["masks"].dtype == torch.bool
    assert t["masks"][0].sum().item() == pytest.approx(1200, rel=0.1)


def test_image_without_annotations_and_box_wholly_outside(coco_folder):
    ds = _raw(coco_folder)
    _, t = ds[1]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 96, 64)
    _, t = ds[2]
    assert t["labels"].tolist() == [3]  # the box at x = 130 of a 120 px wide image is dropped


def test_ground_truth_for_evaluation_keeps_crowd(coco_folder):
    ds = build_dataset("val", _args(coco_folder))
    coco = get_coco_api_from_dataset(torch.utils.data.Subset(ds, [0]))
    assert [a["iscrowd"] for a in coco.imgToAnns[1]] == [0, 1, 0, 0]


def test_build_dataset_train_and_val(coco_folder):
    img, t = build_dataset("val", _args(coco_folder))[0]
    assert tuple(img.shape) == (3, 800, 1000)
    assert t["size"].tolist() == [800, 1000] and t["orig_size"].tolist() == [80, 100]
    assert torch.allclose(t["boxes"][0], torch.tensor([0.25, 0.5, 0.3, 0.5]))
    img, t = build_dataset("train", _args(coco_folder))[2]
    assert list(img.shape[1:]) == t["size"].tolist()
    assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()


def test_cache_mode_gives_the_same_items_and_shards(coco_folder):
    plain = _raw(coco_folder)
    cached = CocoDetection(str(coco_folder / "train2017"),
                           str(coco_folder / "annotations" / "instances_train2017.json"),
                           transforms=None, cache_mode=True, local_rank=1, local_size=2)
    assert len(cached.cache) == 1  # index 1 of 3 is this process' shard
    for i in range(3):
        a, b = plain[i][0], cached[i][0]
        assert a.tobytes() == b.tobytes()


def test_missing_folder_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_train2017.json") as e:
        build_dataset("train", _args(tmp_path / "nowhere"))
    assert "train2017/" in str(e.value) and "nowhere" in str(e.value)


def test_missing_annotation_file_names_the_layout(coco_folder):
    (coco_folder / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        build_dataset("val", _args(coco_folder))


def test_corrupt_image_names_the_file(coco_folder):
    (coco_folder / "train2017" / "c.jpg").write_bytes(b"not a jpeg at all")
    ds = build_dataset("train", _args(coco_folder))
    with pytest.raises(OSError, match="c.jpg"):
        ds[2]
    (coco_folder / "train2017" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="b.jpg"):
        ds[1]


def _write_ann(root, data):
    path = root / "annotations" / "instances_train2017.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))


@pytest.mark.parametrize("mutate,message", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: [1, 2], "JSON object"),
    (lambda d: {k: v for k, v in d.items() if k != "categories"}, "missing top-level key 'categories'"),
    (lambda d: d["images"][0].pop("file_name") and d, r"images\[0\] is missing key\(s\) \['file_name'\]"),
    (lambda d: d["annotations"][0].pop("bbox") and d, r"missing key\(s\) \['bbox'\]"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]) or d, "bbox .* four numbers"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, "3", 4]) or d, "four numbers"),
    (lambda d: d["annotations"][2].update(category_id=99) or d, "unknown category_id 99"),
    (lambda d: d["annotations"][2].update(image_id=42) or d, "unknown image_id 42"),
])
def test_malformed_annotation_file_says_what_is_wrong(coco_folder, write_coco_folder, mutate, message):
    path = coco_folder / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    _write_ann(coco_folder, mutate(data))
    with pytest.raises(AnnotationFileError, match=message) as e:
        build_dataset("train", _args(coco_folder))
    assert "instances_train2017.json" in str(e.value)


def test_unknown_dataset_file(coco_folder):
    args = _args(coco_folder)
    args.dataset_file = "voc"
    with pytest.raises(ValueError, match="dataset_file 'voc'"):
        build_dataset("train", args)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2
def test_images_without_height_and_width_take_them_from_the_files(tmp_path, write_coco_folder):
    """pycocotools and the public code accept image entries without 'height'/'width'."""
    root = tmp_path / "coco"
    data = write_coco_folder(root)
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    for img in data["images"]:
        del img["height"], img["width"]
    _write_ann(root, data)
    ds = _raw(root)
    assert {i: (ds.coco.imgs[i]["height"], ds.coco.imgs[i]["width"]) for i in ds.ids} == sizes
    img, t = ds[0]
    assert img.size == (100, 80) and t["masks"].shape == (2, 80, 100)
    assert t["boxes"].tolist() == [[10, 20, 40, 60], [80, 60, 100, 80]]
    # the evaluation's ground truth (segm needs the sizes to rasterise polygons) has them too
    coco = get_coco_api_from_dataset(ds)
    assert coco.annToMask(coco.anns[1]).shape == (80, 100)
    img, t = build_dataset("train", _args(root))[2]
    assert t["orig_size"].tolist() == [90, 120]
