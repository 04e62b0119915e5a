"""COCO-format detection: images + instance annotations -> (normalised image, target dict).

Targets (after the transforms): ``labels`` int64 (n,) raw category ids, ``boxes`` (n, 4) normalised
cxcywh, ``image_id`` (1,), ``orig_size`` and ``size`` (2,) as (h, w), ``area``, ``iscrowd``, and
``masks`` bool (n, H, W) with ``return_masks``. Crowd regions are left out of the training targets; the
ground truth used by COCOeval (``dataset.coco``) keeps them.

Where the splits are: ``datasets.coco_source``; the classes: ``datasets.coco_categories``; what is
checked when a split is built: ``datasets.coco_checks``.
"""
from __future__ import annotations

import argparse
import os
import warnings

import torch
from pycocotools import mask as coco_mask

from datasets import transforms as T
from datasets.coco_categories import category_names, check_ids_fit, check_same_categories, coco_metadata
from datasets.coco_checks import check_annotated, check_masks, warn_about_boxes
from datasets.coco_source import COCO_LAYOUT, SplitFiles, split_files
from datasets.images import pixel_limit, read_size
from datasets.torchvision_datasets import CocoDetection as _CocoImages
from util.dist import get_local_rank, get_local_size, is_dist_avail_and_initialized
from util.metadata import DatasetMetadata

__all__ = ["COCO_LAYOUT", "CocoDetection", "ConvertCocoPolysToMask", "build", "build_from_folder",
           "build_split", "convert_coco_poly_to_mask"]


class CocoDetection(_CocoImages):
    """COCO-layout detection set; also reads the toy set, which has the same layout."""

    def __init__(self, img_folder, ann_file, transforms, return_masks: bool = False,
                 cache_mode: bool = False, local_rank: int = 0, local_size: int = 1,
                 max_image_pixels: int | None = None, orient: bool = True):
        super().__init__(img_folder, ann_file, cache_mode=cache_mode, local_rank=local_rank,
                         local_size=local_size, max_image_pixels=max_image_pixels, orient=orient)
        self.fill_missing_sizes()
        self._transforms = transforms
        self.prepare = ConvertCocoPolysToMask(return_masks)

    def fill_missing_sizes(self) -> None:
        """Give image entries without 'height'/'width' the size of their file (pycocotools and the
        public code accept such files). The evaluation's ground truth needs them to rasterise polygons,
        so they are read here, once, rather than in the data loader's workers; only the image header is
        decoded. The size is the one annotation tools show: EXIF orientation applied (if ``orient``)."""
        with pixel_limit(self.max_image_pixels):  # PIL checks the pixel count when it opens the file
            for image_id in self.ids:
                info = self.coco.imgs[image_id]
                if "height" not in info or "width" not in info:
                    info["width"], info["height"] = read_size(self.image_path(image_id), self.orient)

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
        if self.return_masks:  # every annotation has a segmentation (coco_checks.check_masks)
            masks = convert_coco_poly_to_mask([a["segmentation"] for a in anns], h, w)
            out["masks"] = masks[keep]
        return image, out


def _check_split(dataset: CocoDetection, ann_file: str, image_set: str, args: argparse.Namespace,
                 metadata: DatasetMetadata | None) -> None:
    """The checks of ``datasets.coco_checks`` and ``datasets.coco_categories``, against the classifier
    ``metadata`` describes (None: no class checks)."""
    names = category_names(dataset.coco.dataset["categories"], ann_file)
    if metadata is not None and metadata.class_names is not None:
        expected_from = ("the validation split's" if image_set == "train" else
                         "the class names the model was built with (recorded in its checkpoint)")
        check_same_categories(names, ann_file, metadata.class_names, expected_from)
    if metadata is not None:
        check_ids_fit(names, ann_file, metadata.num_classes, f"--num_classes {metadata.num_classes}")
    if dataset.prepare.return_masks:
        check_masks(dataset.coco, ann_file)
    trained = image_set == "train"
    check_annotated(dataset.coco, ann_file, trained, evaluated_only=bool(getattr(args, "eval", False)))
    warn_about_boxes(dataset.coco, dataset.ids, ann_file, evaluated=not trained)


def build_split(files: SplitFiles, image_set: str, args: argparse.Namespace, transforms,
                metadata: DatasetMetadata | None) -> CocoDetection:
    """The ``image_set`` split whose files are ``files``, checked (``_check_split``) against the classifier
    ``metadata`` describes."""
    cache_mode = bool(getattr(args, "cache_mode", False))
    # Node-local shards only when NodeDistributedSampler hands out the indices (distributed runs).
    sharded = cache_mode and is_dist_avail_and_initialized()
    dataset = CocoDetection(
        os.fspath(files.images), os.fspath(files.annotations), transforms=transforms,
        return_masks=bool(getattr(args, "masks", False)), cache_mode=cache_mode,
        local_rank=get_local_rank() if sharded else 0,
        local_size=get_local_size() if sharded else 1,
        max_image_pixels=getattr(args, "max_image_pixels", None),
        # COCO's annotations were drawn on the stored pixels, and the public code reads them so
        orient=files.layout != "coco",
    )
    _check_split(dataset, os.fspath(files.annotations), image_set, args, metadata)
    return dataset


def build_from_folder(root, image_set: str, args, transforms) -> CocoDetection:
    """The ``image_set`` split of the COCO-layout folder ``root`` (the toy set's cache is one), checked
    against the classifier's width and names where ``args`` gives them (main.py always does)."""
    files = split_files(image_set, argparse.Namespace(coco_path=root))
    num_classes = getattr(args, "num_classes", None)
    metadata = None if num_classes is None else DatasetMetadata(num_classes).with_given(
        None, getattr(args, "class_names", None))
    return build_split(files, image_set, args, transforms, metadata)


def build(image_set: str, args) -> CocoDetection:
    # datasets.dataset_metadata(args), without importing the registry that imports this module
    metadata = coco_metadata(args).with_given(None, getattr(args, "class_names", None))
    transforms = T.make_coco_transforms(image_set, scale=T.image_scale(args))
    return build_split(split_files(image_set, args), image_set, args, transforms, metadata)
