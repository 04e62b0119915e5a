import random

import pytest
import torch
from PIL import Image

from datasets import transforms as T


def _reference_size(w, h, size, max_size):
    """Independent statement of the published size rule (docs/design/model.md): returns (h, w)."""
    short, long = min(w, h), max(w, h)
    if long / short * size > max_size:
        size = round(max_size * short / long)
    other = int(size * long / short)
    if short == size:
        return h, w
    return (size, other) if h <= w else (other, size)


@pytest.mark.parametrize("w,h,size,expected", [
    (640, 480, 800, (800, 1066)),
    (480, 640, 800, (1066, 800)),
    (2000, 500, 800, (333, 1332)),   # capped: size = round(1333 * 500 / 2000) = 333
    (800, 600, 600, (600, 800)),     # already the right size
    (500, 500, 512, (512, 512)),
])
def test_size_rule_examples(w, h, size, expected):
    assert T.get_size_with_aspect_ratio((w, h), size, 1333) == expected


def test_size_rule_matches_reference_and_bounds_long_side():
    rng = random.Random(0)
    for _ in range(500):
        w, h = rng.randint(20, 3000), rng.randint(20, 3000)
        size = rng.choice(list(T.COCO_SCALES))
        out_h, out_w = T.get_size_with_aspect_ratio((w, h), size, 1333)
        assert (out_h, out_w) == _reference_size(w, h, size, 1333)
        # size is rounded, so the long side may pass max_size by at most half the aspect ratio
        assert max(out_h, out_w) <= 1333 + 0.5 * max(w, h) / min(w, h)


def _target(boxes, h, w, masks=True):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    t = {"boxes": boxes, "labels": torch.arange(len(boxes)), "area": (boxes[:, 2:] - boxes[:, :2]).prod(1),
         "iscrowd": torch.zeros(len(boxes), dtype=torch.int64), "size": torch.tensor([h, w]),
         "orig_size": torch.tensor([h, w])}
    if masks:
        m = torch.zeros((len(boxes), h, w), dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            m[i, y0:y1, x0:x1] = True
        t["masks"] = m
    return t


def _mask_box(mask):
    ys, xs = torch.where(mask)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_hflip_boxes_and_masks():
    img = Image.new("RGB", (100, 60))
    target = _target([[10, 5, 30, 25], [60, 0, 100, 60]], 60, 100)
    out_img, out = T.hflip(img, target)
    assert out_img.size == (100, 60)
    assert out["boxes"].tolist() == [[70, 5, 90, 25], [0, 0, 40, 60]]
    for box, mask in zip(out["boxes"].tolist(), out["masks"]):
        assert _mask_box(mask) == box
    _, back = T.hflip(out_img, out)
    assert torch.equal(back["boxes"], target["boxes"])


def test_resize_scales_boxes_area_and_masks():
    img = Image.new("RGB", (100, 50))
    target = _target([[10, 10, 30, 40]], 50, 100)
    out_img, out = T.resize(img, target, 100)
    assert out_img.size == (200, 100)
    assert out["size"].tolist() == [100, 200]
    assert out["boxes"].tolist() == [[20, 20, 60, 80]]
    assert out["area"].item() == pytest.approx(600 * 4)
    assert out["masks"].shape == (1, 100, 200) and _mask_box(out["masks"][0]) == [20, 20, 60, 80]


def test_crop_clips_and_drops_consistently():
    img = Image.new("RGB", (100, 100))
    target = _target([[10, 10, 40, 40], [70, 70, 90, 90], [20, 50, 60, 95]], 100, 100)
    out_img, out = T.crop(img, target, (30, 0, 40, 50))  # top 30, left 0, h 40, w 50
    assert out_img.size == (50, 40) and out["size"].tolist() == [40, 50]
    # box 0 clipped to the crop, box 1 outside (dropped), box 2 clipped at the bottom and right
    assert out["labels"].tolist() == [0, 2]
    assert out["boxes"].tolist() == [[10, 0, 40, 10], [20, 20, 50, 40]]
    assert out["area"].tolist() == [300, 600]
    assert out["masks"].shape == (2, 40, 50)
    for box, mask in zip(out["boxes"].tolist(), out["masks"]):
        assert _mask_box(mask) == box


def test_crop_drops_an_instance_whose_box_survives_but_mask_does_not():
    # An L-shaped segment: its box covers the crop window, its pixels lie outside it.
    img = Image.new("RGB", (100, 100))
    target = _target([[0, 0, 100, 100], [60, 60, 90, 90]], 100, 100)
    target["masks"][0] = False
    target["masks"][0, :10, :] = True
    target["masks"][0, :, :10] = True
    _, out = T.crop(img, target, (40, 40, 60, 60))
    assert out["labels"].tolist() == [1]
    assert out["masks"].flatten(1).any(1).all()
    assert len(out["boxes"]) == len(out["area"]) == len(out["iscrowd"]) == 1


def test_random_size_crop_keeps_boxes_equal_to_mask_extents():
    random.seed(0)
    img = Image.new("RGB", (120, 90))
    target = _target([[5, 5, 50, 40], [60, 30, 115, 85], [30, 50, 70, 88]], 90, 120)
    crop = T.RandomSizeCrop(30, 100)
    for _ in range(50):
        out_img, out = crop(img, target)
        w, h = out_img.size
        assert out["size"].tolist() == [h, w] and 30 <= w <= 100 and 30 <= h <= 90
        assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"]) == len(out["area"])
        for box, mask in zip(out["boxes"].tolist(), out["masks"]):
            assert _mask_box(mask) == box


def test_random_size_crop_of_an_image_smaller_than_min_size():
    img, out = T.RandomSizeCrop(384, 600)(Image.new("RGB", (90, 70)), _target([[0, 0, 10, 10]], 70, 90))
    assert img.size == (90, 70)


def test_normalize_image_and_boxes_to_cxcywh():
    mean = torch.tensor(T.IMAGENET_MEAN)[:, None, None]
    image = mean.expand(3, 100, 200).clone()
    image[:, 0, 0] += torch.tensor(T.IMAGENET_STD)
    target = {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]])}
    out_img, out = T.Normalize()(image, target)
    assert torch.allclose(out_img[:, 1:, 1:], torch.zeros(1))
    assert torch.allclose(out_img[:, 0, 0], torch.ones(3))
    assert torch.allclose(out["boxes"], torch.tensor([[30 / 200, 40 / 100, 40 / 200, 40 / 100]]))


def test_coco_train_pipeline_outputs():
    random.seed(1)
    tf = T.make_coco_transforms("train", **{"scales": (96, 128), "max_size": 200, "crop_resize": (80, 100),
                                           "crop_range": (40, 90), "val_size": 128})
    img = Image.new("RGB", (150, 100), (120, 60, 30))
    for _ in range(20):
        out_img, out = tf(img, _target([[10, 10, 60, 50], [90, 40, 140, 95]], 100, 150, masks=False))
        assert out_img.shape[0] == 3 and list(out_img.shape[1:]) == out["size"].tolist()
        assert max(out_img.shape[1:]) <= 200
        assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()
        assert (out["boxes"][:, 2:] > 0).all()


def test_coco_val_pipeline_is_the_published_size():
    img = Image.new("RGB", (640, 480))
    out_img, out = T.make_coco_transforms("val")(img, _target([[0, 0, 320, 240]], 480, 640, masks=False))
    assert tuple(out_img.shape) == (3, 800, 1066)
    assert torch.allclose(out["boxes"], torch.tensor([[0.25, 0.25, 0.5, 0.5]]), atol=1e-3)


def test_unknown_image_set():
    with pytest.raises(ValueError, match="image_set"):
        T.make_coco_transforms("training")
