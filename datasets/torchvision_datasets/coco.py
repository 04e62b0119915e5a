"""A COCO-format image folder read through pycocotools, with optional in-memory caching.

``CocoDetection[i]`` returns ``(PIL RGB image, list of the image's annotation dicts)``. The
annotation file is checked before pycocotools sees it, so a malformed file fails with a message
that says what is wrong and where, instead of a KeyError deep inside pycocotools. Images whose file
is not in the folder are left out (one warning); the others are decoded by ``datasets.images`` (8-bit
RGB, EXIF orientation) and must have the size their entry gives.

With ``cache_mode`` the encoded image files are read into memory once; with ``local_size`` > 1
each process keeps only the images whose index is ``local_rank`` modulo ``local_size``, the ones
``NodeDistributedSampler`` gives it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from numbers import Real

import PIL.Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from datasets.coco_checks import present_image_ids
from datasets.errors import DatasetError, DatasetFormatError, DatasetNotFoundError
from datasets.images import pixel_limit, read_rgb

# 'height' and 'width' are optional, as for pycocotools: the image file has them.
_IMAGE_KEYS = ("id", "file_name")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")


class AnnotationFileError(DatasetError, ValueError):
    """The instances JSON is not a valid COCO detection file."""


def _fail(ann_file: str, message: str) -> AnnotationFileError:
    return AnnotationFileError(f"annotation file {ann_file}: {message}")


def validate_coco_dict(data, ann_file: str) -> None:
    """Raise ``AnnotationFileError`` naming the first problem in a COCO instances dict."""
    if not isinstance(data, dict):
        raise _fail(ann_file, f"expected a JSON object at the top level, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise _fail(ann_file, f"missing top-level key {key!r} (a COCO instances file has "
                                  "'images', 'annotations' and 'categories')")
        if not isinstance(data[key], list):
            raise _fail(ann_file, f"{key!r} must be a list, got {type(data[key]).__name__}")
    category_ids = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat:
            raise _fail(ann_file, f"categories[{i}] must be an object with an 'id'")
        cid = cat["id"]
        # Labels are the category ids themselves: they index the classifier's outputs.
        if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
            raise _fail(ann_file, f"categories[{i}] has id {cid!r}; category ids must be integers >= 0")
        if cid in category_ids:
            raise _fail(ann_file, f"categories[{i}] repeats category id {cid}")
        category_ids.add(cid)
    image_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise _fail(ann_file, f"images[{i}] must be an object")
        missing = [k for k in _IMAGE_KEYS if k not in img]
        if missing:
            raise _fail(ann_file, f"images[{i}] is missing key(s) {missing}")
        image_ids.add(img["id"])
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise _fail(ann_file, f"annotations[{i}] must be an object")
        missing = [k for k in _ANNOTATION_KEYS if k not in ann]
        if missing:
            raise _fail(ann_file, f"annotations[{i}] (id {ann.get('id')}) is missing key(s) {missing}")
        bbox = ann["bbox"]
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, Real) and not isinstance(v, bool) for v in bbox)):
            raise _fail(ann_file, f"annotations[{i}] (id {ann['id']}) has bbox {bbox!r}; "
                                  "expected [x, y, width, height], four numbers")
        if ann["category_id"] not in category_ids:
            raise _fail(ann_file, f"annotations[{i}] (id {ann['id']}) has unknown category_id "
                                  f"{ann['category_id']!r}; known ids: {sorted(category_ids)}")
        if ann["image_id"] not in image_ids:
            raise _fail(ann_file, f"annotations[{i}] (id {ann['id']}) refers to unknown image_id "
                                  f"{ann['image_id']!r}")


def read_coco_json(ann_file: str) -> dict:
    """The instances dict of ``ann_file``, checked by ``validate_coco_dict``."""
    if not os.path.isfile(ann_file):
        raise DatasetNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(ann_file, f"not valid JSON ({e})") from e
    validate_coco_dict(data, ann_file)
    return data


def load_coco_api(ann_file: str) -> COCO:
    """Read, check and index a COCO instances file (pycocotools' own prints are silenced)."""
    data = read_coco_json(ann_file)
    for ann in data["annotations"]:
        # COCOeval reads 'area' (area ranges) and 'iscrowd'; fill them the way COCO defines them.
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_image(path: str, data: bytes | None = None, annotated_size: tuple[int, int] | None = None,
               orient: bool = True) -> PIL.Image.Image:
    """Decode an image file (or its cached bytes) to 8-bit RGB as annotation tools show it (EXIF
    orientation applied unless ``orient`` is False; ``datasets.images.read_rgb``), naming the file if
    that fails."""
    return read_rgb(path, data, annotated_size, orient)


class CocoDetection(Dataset):
    """Images of ``img_folder`` listed in ``ann_file``; item = (RGB image, annotation dicts)."""

    def __init__(self, img_folder: str, ann_file: str, transforms=None, cache_mode: bool = False,
                 local_rank: int = 0, local_size: int = 1, max_image_pixels: int | None = None,
                 orient: bool = True):
        self.root = img_folder
        self.ann_file = ann_file
        self.max_image_pixels = max_image_pixels  # None: Pillow's limit; 0: none (datasets.images)
        self.orient = orient  # apply EXIF orientation (False: the stored pixels, as for COCO itself)
        self.coco = load_coco_api(ann_file)
        self.ids = present_image_ids(self.coco, img_folder, ann_file)  # missing files: left out, warned
        self.transforms = transforms
        self.cache_mode = cache_mode
        self.local_rank = local_rank
        self.local_size = local_size
        self.cache: dict[str, bytes] = {}
        if cache_mode:
            self.cache_images()

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.root, self.coco.imgs[image_id]["file_name"])

    def cache_images(self) -> None:
        """Read the encoded files of this process' shard (index % local_size == local_rank)."""
        for index, image_id in enumerate(self.ids):
            if index % self.local_size != self.local_rank:
                continue
            path = self.image_path(image_id)
            try:
                with open(path, "rb") as f:
                    self.cache[path] = f.read()
            except FileNotFoundError as e:
                raise DatasetNotFoundError(f"image file not found: {path}") from e

    def annotated_size(self, image_id: int) -> tuple[int, int] | None:
        """(w, h) as the image's entry in the annotation file gives it (None where it gives none)."""
        info = self.coco.imgs[image_id]
        return (info["width"], info["height"]) if "width" in info and "height" in info else None

    def get_image(self, image_id: int) -> PIL.Image.Image:
        """The decoded image; one whose size is not its annotation entry's stops with an error naming
        both (its boxes would not line up with its pixels)."""
        path = self.image_path(image_id)
        annotated = self.annotated_size(image_id)
        with pixel_limit(self.max_image_pixels):
            image = read_image(path, self.cache.get(path), annotated, self.orient)
        if annotated is not None and image.size != annotated:
            frame = "EXIF orientation applied" if self.orient else "as stored"
            raise DatasetFormatError(
                f"image {path} is {image.size[0]} x {image.size[1]} pixels (w x h, {frame}) but its entry "
                f"in {self.ann_file} (image id {image_id}) says {annotated[0]} x {annotated[1]}: its boxes "
                "would not line up with its pixels; correct the entry's width/height or the file")
        return image

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image = self.get_image(image_id)
        target = self.coco.imgToAnns.get(image_id, [])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __len__(self) -> int:
        return len(self.ids)
