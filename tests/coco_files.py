"""Tiny COCO-format data sets the tests write: small PIL images and annotation files, in the layouts
users have (explicit files, or ``train/`` and ``valid/`` with ``_annotations.coco.json`` as annotation
tools export them)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

EXPORT_FILE = "_annotations.coco.json"


def images(n: int, size: tuple[int, int] = (64, 48), first_id: int = 1) -> list[dict]:
    """``n`` image entries of (w, h) ``size``."""
    return [{"id": first_id + i, "file_name": f"img{first_id + i}.jpg", "width": size[0], "height": size[1]}
            for i in range(n)]


def boxes(image_entries: list[dict], category_ids: list[int], first_id: int = 1) -> list[dict]:
    """One box per image, in the middle half of it, of the categories in turn."""
    anns = []
    for i, img in enumerate(image_entries):
        w, h = img["width"] / 2, img["height"] / 2
        anns.append({"id": first_id + i, "image_id": img["id"], "bbox": [w / 2, h / 2, w, h], "area": w * h,
                     "category_id": category_ids[i % len(category_ids)], "iscrowd": 0})
    return anns


def categories(names: dict[int, str]) -> list[dict]:
    return [{"id": cid, "name": name, "supercategory": "none"} for cid, name in names.items()]


def write_split(folder: Path, ann_file: Path, data: dict, seed: int = 0) -> dict:
    """Random-pixel images for every entry of ``data['images']`` into ``folder`` (their format from the
    file name's extension) and ``data`` as ``ann_file``; returns ``data``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for img in data["images"]:
        pixels = rng.integers(0, 255, size=(img["height"], img["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / img["file_name"])
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))
    return data


def coco_dict(names: dict[int, str], n_images: int = 2, size: tuple[int, int] = (64, 48)) -> dict:
    """A set of ``n_images`` images with one box each, of the categories ``names`` (id -> name)."""
    entries = images(n_images, size)
    return {"images": entries, "annotations": boxes(entries, list(names)), "categories": categories(names)}


def write_export(root: Path, names: dict[int, str], splits: tuple[str, ...] = ("train", "valid"),
                 n_images: int = 2) -> Path:
    """``root`` in the layout annotation tools export: each split a folder with its images beside
    ``_annotations.coco.json``."""
    for split in splits:
        write_split(root / split, root / split / EXPORT_FILE, coco_dict(names, n_images))
    return root
