"""COCO detection: images + instance annotations -> (normalised image, target dict).

Targets (after the transforms): ``labels`` int64 (n,) raw COCO category ids, ``boxes`` (n, 4)
normalised cxcywh, ``image_id`` (1,), ``orig_size`` and ``size`` (2,) as (h, w), ``area``,
``iscrowd``, and ``masks`` bool (n, H, W) with ``return_masks``. Crowd regions are left out of the
training targets; the ground truth used by COCOeval (``dataset.coco``) keeps them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import PIL.Image
import torch
from pycocotools import mask as coco_mask

from datasets import transforms as T
from datasets.errors import DatasetNotFoundError, DatasetReadError
from datasets.torchvision_datasets import CocoDetection as _CocoImages
from util.dist import get_local_rank, get_local_size, is_dist_avail_and_initialized

COCO_LAYOUT = ("train2017/, val2017/, annotations/instances_train2017.json and "
               "annotations/instances_val2017.json")


class CocoDetection(_CocoImages):
    """COCO-layout detection set; also reads the toy set, which has the same layout."""

    def __init__(self, img_folder, ann_file, transforms, return_masks: bool = False,
                 cache_mode: bool = False, local_rank: int = 0, local_size: int = 1):
        super().__init__(img_folder, ann_file, cache_mode=cache_mode,
                         local_rank=local_rank, local_size=local_size)
        self.fill_missing_sizes()
        self._transforms = transforms
        self.prepare = ConvertCocoPolysToMask(return_masks)

    def fill_missing_sizes(self) -> None:
        """Give image entries without 'height'/'width' the size of their file (pycocotools and the
        public code accept such files). The evaluation's ground truth needs them to rasterise polygons,
        so they are read here, once, rather than in the data loader's workers; only the image header is
        decoded."""
        for image_id in self.ids:
            info = self.coco.imgs[image_id]
            if "height" in info and "width" in info:
                continue
            path = self.image_path(image_id)
            try:
                with PIL.Image.open(path) as img:
                    info["width"], info["height"] = img.size
            except FileNotFoundError as e:
                raise DatasetNotFoundError(f"image file not found: {path}") from e
            except (OSError, SyntaxError, ValueError) as e:
                raise DatasetReadError(f"cannot read image {path}: {e}") from e

    def __getitem__(self, index: int):
        image, annotations = super().__getitem__(index)
        target = {"image_id": self.ids[index], "annotations": annotations}
        image, target = self.prepare(image, target)
        if self._transforms is not None:
            image, target = self._transforms(image, target)
        return image, target


def convert_coco_poly_to_mask(segmentations: list, height: int, width: int) -> torch.Tensor:
    """COCO polygons / RLE of n instances -> bool masks (n, height, width)."""
    masks = []
    for segm in segmentations:
        if isinstance(segm, list):  # polygons
            rles = coco_mask.frPyObjects(segm, height, width)
            rle = coco_mask.merge(rles)
        elif isinstance(segm.get("counts"), list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(segm, height, width)
        else:
            rle = segm
        with warnings.catch_warnings():
            # pycocotools' Cython array predates NumPy 2's copy keyword; the decoded mask is fine.
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            decoded = coco_mask.decode(rle)
        masks.append(torch.as_tensor(decoded, dtype=torch.bool))
    if not masks:
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.stack(masks, dim=0)


class ConvertCocoPolysToMask:
    """Annotation dicts of one image -> tensors: boxes xyxy clipped to the image, empty ones dropped."""

    def __init__(self, return_masks: bool = False):
        self.return_masks = return_masks

    def __call__(self, image, target: dict):
        w, h = image.size
        image_id = torch.tensor([target["image_id"]])
        anns = [a for a in target["annotations"] if a.get("iscrowd", 0) == 0]

        boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        area = torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32)
        iscrowd = torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])

        out = {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "image_id": image_id,
            "area": area[keep],
            "iscrowd": iscrowd[keep],
            "orig_size": torch.as_tensor([h, w]),
            "size": torch.as_tensor([h, w]),
        }
        if self.return_masks:
            missing = [a["id"] for a in anns if "segmentation" not in a]
            if missing:
                raise ValueError(f"image {target['image_id']}: annotations {missing[:5]} have no "
                                 "'segmentation', which --masks needs")
            masks = convert_coco_poly_to_mask([a["segmentation"] for a in anns], h, w)
            out["masks"] = masks[keep]
        return image, out


def check_coco_layout(root: Path, image_set: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of ``image_set``; a missing one names the expected layout."""
    split = {"train": "train2017", "val": "val2017"}
    if image_set not in split:
        raise ValueError(f"unknown image_set {image_set!r}: expected 'train' or 'val'")
    img_folder = root / split[image_set]
    ann_file = root / "annotations" / f"instances_{split[image_set]}.json"
    for path in (root, img_folder, ann_file):
        if not path.exists():
            raise DatasetNotFoundError(
                f"COCO data not found: {path} does not exist (--coco_path {root} must hold {COCO_LAYOUT})"
            )
    return img_folder, ann_file


def build_from_folder(root, image_set: str, args, transforms) -> CocoDetection:
    img_folder, ann_file = check_coco_layout(Path(root), image_set)
    cache_mode = bool(getattr(args, "cache_mode", False))
    # Node-local shards only when NodeDistributedSampler hands out the indices (distributed runs).
    sharded = cache_mode and is_dist_avail_and_initialized()
    return CocoDetection(
        os.fspath(img_folder), os.fspath(ann_file), transforms=transforms,
        return_masks=bool(getattr(args, "masks", False)), cache_mode=cache_mode,
        local_rank=get_local_rank() if sharded else 0,
        local_size=get_local_size() if sharded else 1,
    )


def build(image_set: str, args) -> CocoDetection:
    return build_from_folder(args.coco_path, image_set, args, T.make_coco_transforms(image_set))
