"""What is checked in a COCO-format split when it is built, and what happens to what fails.

Errors, one line naming the annotation file and the entry (nothing starts):
- a category list unlike the one the classifier was named from, or a category id it has no output for
  (``datasets.coco_categories``);
- ``--masks`` with annotations that have no segmentation;
- no annotations at all in a split that is trained on, or evaluated with ``--eval``;
- none of the listed image files in the image folder.

Counted warnings, one per kind and split, printed once (the split stays usable):
- image files missing from the folder: those images are left out;
- boxes with no area inside their image (zero or negative width or height, or wholly outside it):
  training drops them; the evaluation keeps them, exactly as pycocotools does, so each is a miss;
- boxes reaching more than a pixel past their image: clipped to it;
- images without annotations: kept, as the public code keeps them (they teach "no object");
- a validation split without annotations while training: every evaluation figure will be -1.

Image files whose size is not their entry's are found when they are read (``CocoDetection.get_image``).
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from datasets.errors import DatasetFormatError, DatasetNotFoundError, listing

_CLIP_TOLERANCE = 1.0  # px past the border that rounding in annotation tools leaves; not worth a warning


def warn(ann_file: str | Path, message: str) -> None:
    print(f"warning: {ann_file}: {message}", flush=True)


def present_image_ids(coco: COCO, img_folder: str, ann_file: str) -> list[int]:
    """The sorted ids of the images whose file is in ``img_folder``; the others are left out with one
    warning, and none at all is an error (most likely the wrong folder). Lists each folder once instead
    of asking for every file."""
    listed: dict[str, set[str] | None] = {}
    missing = []
    for image_id in sorted(coco.imgs):
        path = os.path.join(img_folder, coco.imgs[image_id]["file_name"])
        folder, name = os.path.split(path)
        if folder not in listed:
            listed[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else None
        if listed[folder] is None or name not in listed[folder]:
            missing.append(image_id)
    gone = set(missing)
    present = [i for i in sorted(coco.imgs) if i not in gone]
    if missing and not present:
        first = coco.imgs[missing[0]]["file_name"]
        raise DatasetNotFoundError(f"none of the {len(missing)} images listed in {ann_file} is in "
                                   f"{img_folder} (the first, {first}, is not there): is it the folder of "
                                   "these images?")
    if missing:
        names = [coco.imgs[i]["file_name"] for i in missing]
        warn(ann_file, f"{len(missing)} of {len(coco.imgs)} listed images are not in {img_folder} "
                       f"({listing(names, 5)}): left out, with their annotations")
    return present


def check_masks(coco: COCO, ann_file: str | Path) -> None:
    """--masks trains on the segmentations (and evaluates them): every annotation needs one."""
    lacking = [a["id"] for a in coco.dataset["annotations"] if not a.get("segmentation")]
    if lacking:
        raise DatasetFormatError(
            f"annotation file {ann_file}: --masks needs a segmentation for every annotation, and "
            f"{len(lacking)} have none or an empty one (annotation ids {listing(lacking)}); train without "
            "--masks, or export the data set with its polygons or masks")


def check_annotated(coco: COCO, ann_file: str | Path, trained: bool, evaluated_only: bool) -> None:
    """A split without a single annotation: nothing to learn from, or every figure -1."""
    if coco.dataset["annotations"]:
        return
    if trained or evaluated_only:
        use = "nothing to train on" if trained else "the evaluation would report -1 for every figure"
        raise DatasetFormatError(f"annotation file {ann_file}: 'annotations' is empty: {use}")
    warn(ann_file, "'annotations' is empty: the validation split has no objects, so every evaluation figure "
                   "will be -1 (training goes on)")


def _box_extents(coco: COCO, image_ids: list[int]):
    """(annotation ids, boxes xyxy (n, 4), image sizes w, h (n, 2), raw w, h (n, 2)) of the non-crowd
    annotations of ``image_ids``."""
    anns = [a for i in image_ids for a in coco.imgToAnns.get(i, []) if not a.get("iscrowd", 0)]
    ids = [a["id"] for a in anns]
    xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    images = [coco.imgs[a["image_id"]] for a in anns]
    sizes = np.asarray([(img["width"], img["height"]) for img in images], dtype=np.float64).reshape(-1, 2)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return ids, xyxy, sizes, xywh[:, 2:]


def warn_about_boxes(coco: COCO, image_ids: list[int], ann_file: str | Path, evaluated: bool) -> None:
    """One warning for the boxes that training drops (no area inside the image, the rule of
    ``ConvertCocoPolysToMask``), one for those it clips, one note for the images without any."""
    ids, xyxy, sizes, wh = _box_extents(coco, image_ids)
    clipped = np.minimum(np.maximum(xyxy, 0), np.concatenate([sizes, sizes], axis=1))
    has_area = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    degenerate = (wh <= 0).any(axis=1)
    outside = ~has_area & ~degenerate
    dropped = [ids[i] for i in np.flatnonzero(~has_area)]
    if dropped:
        kinds = []
        if degenerate.any():
            kinds.append(f"{int(degenerate.sum())} of zero or negative width or height")
        if outside.any():
            kinds.append(f"{int(outside.sum())} wholly outside")
        use = ("; the evaluation keeps them, as pycocotools does, so each counts as a missed object (even "
               "perfect detections score below AP 1.0)") if evaluated else ""
        warn(ann_file, f"{len(dropped)} of {len(ids)} boxes have no area inside their image "
                       f"({', '.join(kinds)}; annotation ids {listing(dropped)}): training drops them{use}")
    past = has_area & ((xyxy[:, :2] < -_CLIP_TOLERANCE).any(axis=1)
                       | (xyxy[:, 2:] > sizes + _CLIP_TOLERANCE).any(axis=1))
    if past.any():
        warn(ann_file, f"{int(past.sum())} of {len(ids)} boxes reach more than {_CLIP_TOLERANCE:g} px past "
                       f"their image (annotation ids {listing([ids[i] for i in np.flatnonzero(past)])}): "
                       "they are clipped to it")
    objects = defaultdict(int)
    for a in coco.dataset["annotations"]:
        if not a.get("iscrowd", 0):
            objects[a["image_id"]] += 1
    empty = [i for i in image_ids if not objects[i]]
    if empty and coco.dataset["annotations"]:
        use = "they are evaluated as images without objects" if evaluated else "they train as background"
        print(f"note: {ann_file}: {len(empty)} of {len(image_ids)} images have no (non-crowd) annotations: "
              f"{use}, as in the public code", flush=True)
