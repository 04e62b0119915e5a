"""A small synthetic detection set in COCO layout, for the demo and the tests (``--dataset_file toy``).

Each image (sides 96..192 px) has a textured background (a colour gradient, pixel noise and a few
thin grey lines) and 1-4 flat shapes of five classes, each class in its own colour: square, circle,
triangle, cross and diamond, 20-60 % of the shorter image side, overlapping little. Shapes are
drawn from the same polygons that are written as their segmentation, so boxes and masks are exact.

The set is generated once, deterministically from a seed, into a cache folder (``data/toy`` under
the repository, or ``--toy_root``), as JPEG files plus ``annotations/instances_{train,val}2017.json``;
the COCO code path then reads it like any COCO folder. It is written into a temporary folder that
is renamed into place, so an interrupted run never leaves a half-written set behind; a folder that
is incomplete or was made with other parameters is regenerated.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datasets import transforms as T
from datasets.coco import build_from_folder

# (category id, name, RGB colour)
CLASSES = (
    (1, "square", (225, 35, 35)),
    (2, "circle", (35, 190, 60)),
    (3, "triangle", (40, 80, 235)),
    (4, "cross", (245, 205, 25)),
    (5, "diamond", (200, 50, 215)),
)
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "toy"
FORMAT_VERSION = 1  # bump whenever the generated files change, so that old caches are regenerated
MARKER = "toy.json"
SPLITS = {"train": "train2017", "val": "val2017"}

# Resize recipe for images of ~100-200 px: the COCO recipe scaled down about 4x.
TOY_TRANSFORMS = {
    "scales": (128, 144, 160, 176, 192),
    "max_size": 320,
    "crop_resize": (128, 160, 192),
    "crop_range": (96, 160),
    "val_size": 160,
}

_MIN_SIDE, _MAX_SIDE = 96, 192
_OBJ_MIN, _OBJ_MAX = 0.2, 0.6  # object side as a fraction of the shorter image side
_MAX_OVERLAP = 0.15  # intersection over the smaller box's area


def toy_num_classes() -> int:
    """num_classes for the detector: category ids are 1..K, so K + 1 logits cover them."""
    return max(c[0] for c in CLASSES) + 1


def _shape_polygon(name: str, x: float, y: float, w: float, h: float) -> list[tuple[float, float]]:
    """Vertices of a shape filling the box (x, y, w, h), continuous pixel coordinates."""
    cx, cy = x + w / 2, y + h / 2
    if name == "square":
        return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    if name == "circle":
        n = 40
        return [(cx + w / 2 * math.cos(2 * math.pi * k / n), cy + h / 2 * math.sin(2 * math.pi * k / n))
                for k in range(n)]
    if name == "triangle":
        return [(cx, y), (x + w, y + h), (x, y + h)]
    if name == "diamond":
        return [(cx, y), (x + w, cy), (cx, y + h), (x, cy)]
    if name == "cross":
        tx, ty = w / 3, h / 3  # arm thickness
        x1, x2, y1, y2 = x + tx, x + 2 * tx, y + ty, y + 2 * ty
        return [(x1, y), (x2, y), (x2, y1), (x + w, y1), (x + w, y2), (x2, y2), (x2, y + h),
                (x1, y + h), (x1, y2), (x, y2), (x, y1), (x1, y1)]
    raise ValueError(f"unknown toy shape {name!r}")


def _polygon_area(points: list[tuple[float, float]]) -> float:
    twice = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))
    return 0.5 * abs(twice)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Muted two-colour gradient in a random direction plus pixel noise and a few thin lines."""
    grey = rng.uniform(70, 185)
    c0 = grey + rng.uniform(-30, 30, size=3)
    c1 = grey + rng.uniform(-30, 30, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.arange(w, dtype=np.float32) * (math.cos(angle) / w)
    ys = np.arange(h, dtype=np.float32) * (math.sin(angle) / h)
    t = ys[:, None] + xs[None, :]  # (h, w) position along the gradient
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    noise = rng.standard_normal(size=(h, w, 3), dtype=np.float32) * 12
    pixels = c0.astype(np.float32) + t[..., None] * (c1 - c0).astype(np.float32) + noise
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):
        grey = int(rng.uniform(40, 220))
        pts = rng.uniform(0, 1, size=4) * [w, h, w, h]
        draw.line([float(v) for v in pts], fill=(grey, grey, grey), width=1)
    return image


def _overlap(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


def _make_image(rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """One image and its objects: dicts with category_id, bbox (xywh), segmentation, area."""
    w, h = (int(v) for v in rng.integers(_MIN_SIDE, _MAX_SIDE + 1, size=2))
    image = _background(rng, w, h)
    draw = ImageDraw.Draw(image)
    objects: list[dict] = []
    short = min(w, h)
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(30):
            side = rng.uniform(_OBJ_MIN, _OBJ_MAX) * short
            aspect = rng.uniform(0.8, 1.25)
            bw, bh = round(side * math.sqrt(aspect)), round(side / math.sqrt(aspect))
            bw, bh = min(bw, w - 2), min(bh, h - 2)
            x = int(rng.integers(0, w - bw + 1))
            y = int(rng.integers(0, h - bh + 1))
            box = (x, y, bw, bh)
            if all(_overlap(box, o["bbox"]) <= _MAX_OVERLAP for o in objects):
                break
        else:
            continue  # no free spot for this object; the image keeps the ones it has
        cat_id, name, colour = CLASSES[int(rng.integers(len(CLASSES)))]
        jitter = rng.integers(-20, 21, size=3)
        fill = tuple(int(v) for v in np.clip(np.array(colour) + jitter, 0, 255))
        polygon = _shape_polygon(name, *box)
        # PIL fills the pixel whose centre lies in the polygon; pixel i is centred at i + 0.5.
        draw.polygon([(px - 0.5, py - 0.5) for px, py in polygon], fill=fill)
        objects.append({
            "category_id": cat_id,
            "bbox": [float(v) for v in box],
            "segmentation": [[round(float(v), 2) for p in polygon for v in p]],
            "area": round(_polygon_area(polygon), 2),
        })
    return image, objects


def _write_split(root: Path, split: str, num_images: int, seed: int) -> None:
    folder = SPLITS[split]
    (root / folder).mkdir(parents=True)
    images, annotations = [], []
    split_key = list(SPLITS).index(split)
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_key, index])
        image, objects = _make_image(rng)
        image_id = index + 1
        file_name = f"{image_id:06d}.jpg"
        image.save(root / folder / file_name, format="JPEG", quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj})
    categories = [{"id": c, "name": n, "supercategory": "shape"} for c, n, _ in CLASSES]
    data = {"info": {"description": "toy shapes", "version": FORMAT_VERSION},
            "images": images, "annotations": annotations, "categories": categories}
    (root / "annotations").mkdir(exist_ok=True)
    with open(root / "annotations" / f"instances_{folder}.json", "w", encoding="utf-8") as f:
        json.dump(data, f)


def _parameters(num_train: int, num_val: int, seed: int) -> dict:
    return {"version": FORMAT_VERSION, "seed": seed, "num_train": num_train, "num_val": num_val}


def is_complete(root: Path, num_train: int = 400, num_val: int = 100, seed: int = 0) -> bool:
    """True if ``root`` holds a finished set made with these parameters."""
    try:
        with open(root / MARKER, encoding="utf-8") as f:
            if json.load(f) != _parameters(num_train, num_val, seed):
                return False
    except (OSError, ValueError):
        return False
    counts = {"train": num_train, "val": num_val}
    for split, folder in SPLITS.items():
        if not (root / "annotations" / f"instances_{folder}.json").is_file():
            return False
        if not (root / folder).is_dir() or len(os.listdir(root / folder)) != counts[split]:
            return False
    return True


def publish_folder(root, fill: Callable[[Path], None], is_whole: Callable[[Path], bool]) -> Path:
    """Fill a temporary sibling of ``root``, then rename it into place (replacing ``root``).

    An interrupted run never leaves a half-written set behind. If another process (a second rank)
    renamed a set into place first, that one is kept when ``is_whole`` accepts it.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-tmp-", dir=root.parent))
    try:
        fill(tmp)
        if root.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{root.name}-stale-", dir=root.parent))
            os.replace(root, stale / root.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_whole(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def generate(root, num_train: int = 400, num_val: int = 100, seed: int = 0) -> Path:
    """Write the set to ``root`` (replacing whatever is there) through a temporary folder."""

    def fill(folder: Path) -> None:
        _write_split(folder, "train", num_train, seed)
        _write_split(folder, "val", num_val, seed)
        with open(folder / MARKER, "w", encoding="utf-8") as f:
            json.dump(_parameters(num_train, num_val, seed), f)

    return publish_folder(root, fill, lambda r: is_complete(r, num_train, num_val, seed))


def ensure_toy_dataset(root=None, num_train: int = 400, num_val: int = 100, seed: int = 0) -> Path:
    """The toy set's folder, generated first if it is missing or incomplete."""
    root = Path(root) if root else DEFAULT_ROOT
    if not is_complete(root, num_train, num_val, seed):
        generate(root, num_train, num_val, seed)
    return root


def make_transforms(image_set: str, scale: float = 1.0) -> T.Compose:
    """The COCO recipe at the toy images' scale (``TOY_TRANSFORMS``), for both toy sets; ``scale``:
    ``--image_scale``."""
    return T.make_coco_transforms(image_set, **TOY_TRANSFORMS, scale=scale)


def build(image_set: str, args):
    root = ensure_toy_dataset(getattr(args, "toy_root", None))
    return build_from_folder(root, image_set, args, make_transforms(image_set, T.image_scale(args)))
