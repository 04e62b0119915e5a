"""COCO panoptic: images + panoptic PNGs -> (normalised image, target dict with one mask per segment).

Layout: images under ``--coco_path`` (``train2017/``, ``val2017/``), panoptic annotations under
``--coco_panoptic_path`` (``annotations/panoptic_{train,val}2017.json`` and the PNG folders
``panoptic_{train,val}2017/``, either next to ``annotations/`` as DETR's instructions put them, or
inside it, as the official ``panoptic_annotations_trainval2017.zip`` unpacks). A PNG pixel's segment
id is R + 256 G + 256^2 B; id 0 is VOID.

Targets (after the transforms): ``masks`` bool (n, H, W), ``labels`` int64 (n,) raw category ids
(things and stuff, < 250), ``boxes`` (n, 4) normalised cxcywh, ``iscrowd``, ``area``, ``image_id``,
``orig_size`` and ``size`` (h, w). Crowd segments are left out of the targets, as for COCO
detection; the panoptic evaluation reads the PNGs and keeps them. Instance annotations
(``<coco_path>/annotations/instances_*.json``), when present, become ``dataset.coco`` for
COCOeval ``bbox`` / ``segm``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets import transforms as T
from datasets.errors import DatasetFormatError, DatasetNotFoundError, DatasetReadError
from datasets.images import to_rgb8
from datasets.panoptic_eval import read_panoptic_png
from datasets.torchvision_datasets.coco import load_coco_api
from util.box_ops import masks_to_boxes

PANOPTIC_LAYOUT = (
    "--coco_path {img_root} holds train2017/ and val2017/; --coco_panoptic_path {pan_root} holds "
    "annotations/panoptic_train2017.json, annotations/panoptic_val2017.json and the PNG folders "
    "panoptic_train2017/ and panoptic_val2017/, next to annotations/ or inside it"
)
SPLITS = {"train": "train2017", "val": "val2017"}


class CocoPanoptic(Dataset):
    """A COCO-panoptic-layout split. ``ann_file`` / ``ann_folder`` are the GT of the PQ evaluation."""

    def __init__(self, img_folder: str, ann_folder: str, ann_file: str, transforms=None,
                 return_masks: bool = True, instances_file: str | None = None):
        try:
            with open(ann_file, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetFormatError(f"panoptic annotation file {ann_file}: not valid JSON ({e})") from e
        for key in ("images", "annotations", "categories"):
            if not isinstance(data, dict) or key not in data:
                raise DatasetFormatError(
                    f"panoptic annotation file {ann_file}: missing top-level key {key!r}")
        self.img_folder = img_folder
        self.ann_folder = ann_folder
        self.ann_file = ann_file
        self.images = {img["id"]: img for img in data["images"]}
        by_image = {a["image_id"]: a for a in data["annotations"]}
        # Images in the order of the file; every one must have its panoptic annotation.
        missing = [i for i in self.images if i not in by_image]
        if missing:
            raise DatasetFormatError(
                f"panoptic annotation file {ann_file}: images {missing[:5]} have no annotation")
        self.annotations = [by_image[i] for i in self.images]
        self.ids = list(self.images)
        self.categories = {c["id"]: c for c in data["categories"]}
        self._transforms = transforms
        self.return_masks = return_masks
        self.coco = load_coco_api(instances_file) if instances_file else None

    def __len__(self) -> int:
        return len(self.annotations)

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """(h, w) from the annotation file, or from the image file where the entry has no size."""
        info = self.images[self.ids[index]]
        if "height" not in info or "width" not in info:
            with Image.open(self.image_path(self.ids[index])) as im:
                info["width"], info["height"] = im.size
        return info["height"], info["width"]

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.img_folder, self.images[image_id]["file_name"])

    def __getitem__(self, index: int):
        ann = self.annotations[index]
        img_path = self.image_path(ann["image_id"])
        image = _read(img_path, f"image {ann['image_id']}", lambda p: _rgb(p))
        png_path = os.path.join(self.ann_folder, ann["file_name"])
        ids = _read(png_path, f"image {ann['image_id']}: panoptic PNG", read_panoptic_png)
        if ids.shape != (image.height, image.width):
            raise DatasetFormatError(
                f"image {ann['image_id']}: panoptic PNG {png_path} is {ids.shape} (h, w), the image is "
                f"{(image.height, image.width)}")
        target = panoptic_target(ids, ann["segments_info"], ann["image_id"], self.return_masks)
        if self._transforms is not None:
            image, target = self._transforms(image, target)
        return image, target


def _rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return to_rgb8(im, path)


def _read(path: str, what: str, reader):
    """reader(path), with a missing or undecodable file reported as a data error naming it."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{what}: {path} does not exist")
    try:
        return reader(path)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetReadError(f"{what}: cannot read {path}: {e}") from e


def panoptic_target(ids: np.ndarray, segments_info: list[dict], image_id: int,
                    return_masks: bool = True) -> dict:
    """(H, W) segment ids + segments_info -> target dict with xyxy pixel boxes (before the transforms).

    Crowd segments and segments absent from the PNG are dropped; boxes are the tight boxes of
    the PNG's pixels (continuous coordinates: a segment on columns x0..x1 spans [x0, x1 + 1]).
    """
    h, w = ids.shape
    segments = [s for s in segments_info if s.get("iscrowd", 0) == 0]
    seg_ids = torch.as_tensor([s["id"] for s in segments], dtype=torch.int64)
    masks = torch.from_numpy(ids)[None] == seg_ids[:, None, None]  # (n, H, W)
    keep = masks.flatten(1).any(1)
    masks = masks[keep]
    segments = [s for s, k in zip(segments, keep.tolist()) if k]
    boxes = masks_to_boxes(masks)  # inclusive pixel indices
    boxes[:, 2:] += 1
    target = {
        "boxes": boxes,
        "labels": torch.as_tensor([s["category_id"] for s in segments], dtype=torch.int64),
        "iscrowd": torch.zeros(len(segments), dtype=torch.int64),
        "area": masks.flatten(1).sum(1).float(),
        "image_id": torch.tensor([image_id]),
        "orig_size": torch.as_tensor([h, w]),
        "size": torch.as_tensor([h, w]),
    }
    if return_masks:
        target["masks"] = masks
    return target


def check_panoptic_layout(img_root: Path, pan_root: Path, image_set: str) -> dict[str, Path | None]:
    """The paths of one split; a missing one raises an error naming the expected layout."""
    if image_set not in SPLITS:
        raise ValueError(f"unknown image_set {image_set!r}: expected 'train' or 'val'")
    split = SPLITS[image_set]
    layout = PANOPTIC_LAYOUT.format(img_root=img_root, pan_root=pan_root)
    # DETR's instructions put the PNG folders next to annotations/; the official zip unpacks them inside.
    png_folders = [pan_root / f"panoptic_{split}", pan_root / "annotations" / f"panoptic_{split}"]
    paths = {
        "img_folder": img_root / split,
        "ann_folder": next((p for p in png_folders if p.is_dir()), png_folders[0]),
        "ann_file": pan_root / "annotations" / f"panoptic_{split}.json",
    }
    for path in (img_root, pan_root, paths["img_folder"], paths["ann_file"]):
        if not path.exists():
            raise DatasetNotFoundError(f"COCO panoptic data not found: {path} does not exist ({layout})")
    if not paths["ann_folder"].is_dir():
        zipped = pan_root / "annotations" / f"panoptic_{split}.zip"
        if zipped.is_file():
            raise DatasetNotFoundError(
                f"COCO panoptic PNGs not found: {zipped} is not unpacked yet (unzip it inside "
                f"{zipped.parent}, which makes {png_folders[1]})")
        raise DatasetNotFoundError(
            f"COCO panoptic PNGs not found: neither {png_folders[0]} nor {png_folders[1]} exists ({layout})")
    instances = img_root / "annotations" / f"instances_{split}.json"
    paths["instances_file"] = instances if instances.is_file() else None
    return paths


def build_from_folders(img_root, pan_root, image_set: str, args, transforms) -> CocoPanoptic:
    paths = check_panoptic_layout(Path(img_root), Path(pan_root), image_set)
    return CocoPanoptic(
        os.fspath(paths["img_folder"]), os.fspath(paths["ann_folder"]), os.fspath(paths["ann_file"]),
        transforms=transforms, return_masks=bool(getattr(args, "masks", False)),
        instances_file=os.fspath(paths["instances_file"]) if paths["instances_file"] else None,
    )


def build(image_set: str, args) -> CocoPanoptic:
    if not getattr(args, "coco_panoptic_path", None):
        raise ValueError("--dataset_file coco_panoptic needs --coco_panoptic_path (the folder with "
                         "annotations/panoptic_*2017.json and panoptic_*2017/ PNG folders)")
    return build_from_folders(args.coco_path, args.coco_panoptic_path, image_set, args,
                              T.make_coco_transforms(image_set, scale=T.image_scale(args)))
