"""A small synthetic panoptic set in COCO panoptic layout (``--dataset_file toy_panoptic``).

Each image (sides 96..160 px) is a landscape: ``sky`` above a slanted horizon, below it ``grass``,
``sand`` or both side by side, split by a wavy line; a 2-px dark horizon line is VOID. On top lie
1-4 flat shapes of the toy detection set's five thing classes (same shapes and colours, drawn by
``datasets.toy``), and sometimes a crowd: a cluster of tiny shapes of one class annotated as one
``iscrowd`` segment. Stuff is told apart by colour and texture, things by shape and colour.

The label map is drawn first and the image painted from it, so segments are pixel-exact. The set
is written once, deterministically from a seed, into a cache folder (``data/toy_panoptic``, or
``--toy_panoptic_root``) through a temporary folder renamed into place:

    train2017/ val2017/                     JPEG images
    panoptic_train2017/ panoptic_val2017/   PNGs, segment id = R + 256 G + 256^2 B
    annotations/panoptic_{train,val}2017.json
    annotations/instances_{train,val}2017.json   things as RLE, for COCOeval bbox / segm
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

from datasets.coco_panoptic import SPLITS, CocoPanoptic, build_from_folders
from datasets.toy import CLASSES as THING_CLASSES
from datasets.toy import _overlap, _shape_polygon, make_transforms, publish_folder
from datasets.transforms import image_scale
from util.panoptic import id2rgb

# (category id, name, base RGB colour); ids follow the thing classes 1..5.
STUFF_CLASSES = (
    (6, "sky", (120, 170, 235)),
    (7, "grass", (60, 140, 50)),
    (8, "sand", (205, 180, 120)),
)
SKY, GRASS, SAND = (c[0] for c in STUFF_CLASSES)
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "toy_panoptic"
FORMAT_VERSION = 1
MARKER = "toy_panoptic.json"
DEFAULT_SIZES = {"num_train": 120, "num_val": 40}

_MIN_SIDE, _MAX_SIDE = 96, 160
_OBJ_MIN, _OBJ_MAX = 0.2, 0.5  # object side as a fraction of the shorter image side
_MAX_OVERLAP = 0.15
_CROWD_PROB = 0.2


def categories() -> list[dict]:
    """The panoptic categories: the five shapes (things) and three stuff classes."""
    things = [{"id": c, "name": n, "isthing": 1, "color": list(col), "supercategory": "shape"}
              for c, n, col in THING_CLASSES]
    stuff = [{"id": c, "name": n, "isthing": 0, "color": list(col), "supercategory": "landscape"}
             for c, n, col in STUFF_CLASSES]
    return things + stuff


def _polygon_mask(polygon: list[tuple[float, float]], w: int, h: int) -> np.ndarray:
    """(h, w) bool: pixels whose centre lies in the polygon (pixel i is centred at i + 0.5)."""
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([(x - 0.5, y - 0.5) for x, y in polygon], fill=1)
    return np.asarray(canvas, dtype=bool)


def _random_box(rng: np.random.Generator, w: int, h: int, lo: float, hi: float) -> tuple[int, int, int, int]:
    short = min(w, h)
    side = rng.uniform(lo, hi) * short
    aspect = rng.uniform(0.8, 1.25)
    bw = max(3, min(round(side * math.sqrt(aspect)), w - 2))
    bh = max(3, min(round(side / math.sqrt(aspect)), h - 2))
    return int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1)), bw, bh


def _layout(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, list[tuple[int, int, bool]]]:
    """(h, w) int64 segment index map (-1 = VOID) and, per index, (category id, instance no, iscrowd)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    horizon = rng.uniform(0.3, 0.6) * h + rng.uniform(-0.25, 0.25) * (xs - w / 2)
    segments: list[tuple[int, int, bool]] = [(SKY, 0, False)]
    index = np.zeros((h, w), np.int64)  # sky
    ground = ys > horizon
    kind = rng.integers(3)
    if kind < 2:
        segments.append((GRASS if kind == 0 else SAND, 0, False))
        index[ground] = 1
    else:  # both, split by a wavy vertical line
        split = rng.uniform(0.3, 0.7) * w + 6 * np.sin(ys / rng.uniform(6, 14) + rng.uniform(0, 6))
        left, right = (GRASS, SAND) if rng.random() < 0.5 else (SAND, GRASS)
        segments += [(left, 0, False), (right, 0, False)]
        index[ground & (xs < split)] = 1
        index[ground & (xs >= split)] = 2
    index[np.abs(ys - horizon) < 1.0] = -1  # the horizon line is VOID

    boxes: list[tuple] = []
    for k in range(int(rng.integers(1, 5))):
        for _attempt in range(30):
            box = _random_box(rng, w, h, _OBJ_MIN, _OBJ_MAX)
            if all(_overlap(box, b) <= _MAX_OVERLAP for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        cat, name, _ = THING_CLASSES[int(rng.integers(len(THING_CLASSES)))]
        index[_polygon_mask(_shape_polygon(name, *box), w, h)] = len(segments)
        segments.append((cat, k + 1, False))
    if rng.random() < _CROWD_PROB:
        cat, name, _ = THING_CLASSES[int(rng.integers(len(THING_CLASSES)))]
        cx, cy, cw, ch = _random_box(rng, w, h, 0.3, 0.4)
        crowd = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(4, 7))):
            # tiny shapes of 5-8 px inside the crowd's region
            s = int(rng.integers(5, 9))
            x, y = cx + int(rng.integers(0, max(1, cw - s))), cy + int(rng.integers(0, max(1, ch - s)))
            crowd |= _polygon_mask(_shape_polygon(name, x, y, s, s), w, h)
        index[crowd] = len(segments)
        segments.append((cat, 99, True))
    return index, segments


def _paint(rng: np.random.Generator, index: np.ndarray, segments: list[tuple[int, int, bool]]) -> Image.Image:
    """The RGB image of a label map: textured stuff, flat jittered things, a dark VOID line."""
    h, w = index.shape
    colours = {c: np.array(col, np.float32) for c, _, col in (*THING_CLASSES, *STUFF_CLASSES)}
    noise = rng.standard_normal((h, w, 3)).astype(np.float32)
    pixels = np.zeros((h, w, 3), np.float32)
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    for i, (cat, _, _) in enumerate(segments):
        where = index == i
        if cat == SKY:  # lighter towards the horizon
            layer = colours[SKY] + rows * 60 + noise * 4
        elif cat == GRASS:  # noisy with vertical streaks
            streaks = rng.standard_normal((1, w, 1)).astype(np.float32) * 15
            layer = colours[GRASS] + noise * 18 + streaks
        elif cat == SAND:  # fine speckles
            layer = colours[SAND] + noise * 10 + (rng.random((h, w, 1)) < 0.08) * -60
        else:
            layer = colours[cat] + rng.integers(-20, 21, size=3).astype(np.float32) + noise * 5
        pixels[where] = np.broadcast_to(layer, (h, w, 3))[where]
    pixels[index == -1] = 40
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _segment_id(cat: int, instance: int) -> int:
    """Unique within an image and spread over the three PNG channels."""
    return cat * 256 + 1 + instance * 65536


def _write_split(root: Path, split: str, num_images: int, seed: int) -> None:
    folder = SPLITS[split]
    (root / folder).mkdir(parents=True)
    (root / f"panoptic_{folder}").mkdir()
    images, pan_anns, inst_anns = [], [], []
    things = {c for c, _, _ in THING_CLASSES}
    for n in range(num_images):
        rng = np.random.default_rng([seed, list(SPLITS).index(split), n])
        w, h = (int(v) for v in rng.integers(_MIN_SIDE, _MAX_SIDE + 1, size=2))
        index, segments = _layout(rng, w, h)
        image = _paint(rng, index, segments)
        image_id = n + 1
        stem = f"{image_id:06d}"
        image.save(root / folder / f"{stem}.jpg", format="JPEG", quality=92)
        ids = np.zeros((h, w), np.int64)
        segments_info = []
        for i, (cat, instance, crowd) in enumerate(segments):
            mask = index == i
            if not mask.any():
                continue  # fully covered by later shapes
            seg_id = _segment_id(cat, instance)
            ids[mask] = seg_id
            ys, xs = np.nonzero(mask)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            area = int(mask.sum())
            segments_info.append({"id": seg_id, "category_id": cat, "iscrowd": int(crowd),
                                  "bbox": bbox, "area": area})
            if cat in things:
                rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                inst_anns.append({"id": len(inst_anns) + 1, "image_id": image_id, "category_id": cat,
                                  "iscrowd": int(crowd), "bbox": bbox, "area": area, "segmentation": rle})
        Image.fromarray(id2rgb(ids)).save(root / f"panoptic_{folder}" / f"{stem}.png")
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": w, "height": h})
        pan_anns.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments_info})
    info = {"description": "toy panoptic landscapes", "version": FORMAT_VERSION}
    cats = categories()
    (root / "annotations").mkdir(exist_ok=True)
    with open(root / "annotations" / f"panoptic_{folder}.json", "w", encoding="utf-8") as f:
        json.dump({"info": info, "images": images, "annotations": pan_anns, "categories": cats}, f)
    with open(root / "annotations" / f"instances_{folder}.json", "w", encoding="utf-8") as f:
        json.dump({"info": info, "images": images, "annotations": inst_anns,
                   "categories": [c for c in cats if c["isthing"]]}, f)


def _parameters(num_train: int, num_val: int, seed: int) -> dict:
    return {"version": FORMAT_VERSION, "seed": seed, "num_train": num_train, "num_val": num_val}


def is_complete(root: Path, num_train: int, num_val: int, seed: int = 0) -> bool:
    """True if ``root`` holds a finished set made with these parameters."""
    try:
        with open(root / MARKER, encoding="utf-8") as f:
            if json.load(f) != _parameters(num_train, num_val, seed):
                return False
    except (OSError, ValueError):
        return False
    for split, count in (("train", num_train), ("val", num_val)):
        folder = SPLITS[split]
        for sub in (folder, f"panoptic_{folder}"):
            if not (root / sub).is_dir() or len(os.listdir(root / sub)) != count:
                return False
        for kind in ("panoptic", "instances"):
            if not (root / "annotations" / f"{kind}_{folder}.json").is_file():
                return False
    return True


def ensure_toy_panoptic(root=None, num_train: int = DEFAULT_SIZES["num_train"],
                        num_val: int = DEFAULT_SIZES["num_val"], seed: int = 0) -> Path:
    """The set's folder, (re)generated first when missing, incomplete or made with other parameters."""
    root = Path(root) if root else DEFAULT_ROOT
    if is_complete(root, num_train, num_val, seed):
        return root

    def fill(folder: Path) -> None:
        _write_split(folder, "train", num_train, seed)
        _write_split(folder, "val", num_val, seed)
        with open(folder / MARKER, "w", encoding="utf-8") as f:
            json.dump(_parameters(num_train, num_val, seed), f)

    return publish_folder(root, fill, lambda r: is_complete(r, num_train, num_val, seed))


def build(image_set: str, args) -> CocoPanoptic:
    root = ensure_toy_panoptic(getattr(args, "toy_panoptic_root", None), **DEFAULT_SIZES)
    return build_from_folders(root, root, image_set, args, make_transforms(image_set, image_scale(args)))
