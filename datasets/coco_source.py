"""Where a split of a COCO-format data set is: its image folder and its annotation file.

``--dataset_file coco`` finds them in one of three ways:

- explicit: ``--train_json PATH --train_images DIR --val_json PATH --val_images DIR``;
- ``--coco_path`` in the COCO layout: ``train2017/``, ``val2017/`` and
  ``annotations/instances_{train,val}2017.json``;
- ``--coco_path`` in the layout annotation tools (Roboflow and others) export: ``train/``, ``valid/`` (and
  ``test/``), each holding its images beside ``_annotations.coco.json``.

The explicit flags win when given (``util/args.py`` checks that they come in pairs); otherwise the
folder's contents say which layout it is in.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from datasets.errors import DatasetNotFoundError

SPLIT_FLAGS = ("train_json", "train_images", "val_json", "val_images")
COCO_SPLITS = {"train": "train2017", "val": "val2017"}
EXPORT_FILE = "_annotations.coco.json"
# split -> the folder names annotation tools give it, in the order they are looked for
EXPORT_SPLITS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}

COCO_LAYOUT = ("train2017/, val2017/, annotations/instances_train2017.json and "
               "annotations/instances_val2017.json")
EXPORT_LAYOUT = f"train/ and valid/, each with its images beside {EXPORT_FILE} (as annotation tools export)"
LAYOUTS = f"{COCO_LAYOUT}; or {EXPORT_LAYOUT}"


@dataclass(frozen=True)
class SplitFiles:
    """A split's image folder, annotation file and how they were found: 'explicit' (the flags),
    'coco' or 'export' (the layout of --coco_path)."""

    images: Path
    annotations: Path
    layout: str


def uses_split_flags(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) for name in SPLIT_FLAGS)


def coco_path_layout(root: Path) -> str:
    """'coco' or 'export': what --coco_path ``root`` holds ('coco' when it holds neither, so that the
    error names the usual layout first)."""
    if (root / "annotations").is_dir() or any((root / d).is_dir() for d in COCO_SPLITS.values()):
        return "coco"
    exported = any((root / d / EXPORT_FILE).is_file() for names in EXPORT_SPLITS.values() for d in names)
    return "export" if exported else "coco"


def layout_of(args: argparse.Namespace) -> str:
    """How ``split_files`` finds the splits of ``args``, without reading them."""
    return "explicit" if uses_split_flags(args) else coco_path_layout(Path(args.coco_path))


def _explicit(image_set: str, args: argparse.Namespace) -> SplitFiles:
    if image_set not in COCO_SPLITS:
        raise ValueError(f"unknown image_set {image_set!r}: --{image_set}_json is not a flag (train or val)")
    ann_file, images = getattr(args, f"{image_set}_json", None), getattr(args, f"{image_set}_images", None)
    if not ann_file or not images:
        raise DatasetNotFoundError(f"the {image_set} split needs --{image_set}_json and --{image_set}_images "
                                   "(given the other splits' files explicitly)")
    if not Path(ann_file).is_file():
        raise DatasetNotFoundError(f"--{image_set}_json {ann_file}: no such file")
    if not Path(images).is_dir():
        raise DatasetNotFoundError(f"--{image_set}_images {images}: no such folder")
    return SplitFiles(Path(images), Path(ann_file), "explicit")


def _coco_layout(root: Path, image_set: str) -> SplitFiles:
    if image_set not in COCO_SPLITS:
        raise ValueError(f"unknown image_set {image_set!r}: expected 'train' or 'val'")
    img_folder = root / COCO_SPLITS[image_set]
    ann_file = root / "annotations" / f"instances_{COCO_SPLITS[image_set]}.json"
    for path in (root, img_folder, ann_file):
        if not path.exists():
            raise DatasetNotFoundError(f"COCO data not found: {path} does not exist (--coco_path {root} must "
                                       f"hold {LAYOUTS})")
    return SplitFiles(img_folder, ann_file, "coco")


def _export_layout(root: Path, image_set: str) -> SplitFiles:
    if image_set not in EXPORT_SPLITS:
        raise ValueError(f"unknown image_set {image_set!r}: expected one of {', '.join(EXPORT_SPLITS)}")
    for name in EXPORT_SPLITS[image_set]:
        if (root / name / EXPORT_FILE).is_file():
            return SplitFiles(root / name, root / name / EXPORT_FILE, "export")
    wanted = " or ".join(f"{name}/{EXPORT_FILE}" for name in EXPORT_SPLITS[image_set])
    hint = ""
    if image_set == "val" and (root / "test" / EXPORT_FILE).is_file():
        train, test = root / "train", root / "test"
        hint = (f"; to validate on test/, pass --val_json {test / EXPORT_FILE} --val_images {test} with "
                f"--train_json {train / EXPORT_FILE} --train_images {train}")
    raise DatasetNotFoundError(f"--coco_path {root} (annotation-tool layout) has no {wanted} for the "
                               f"{image_set} split{hint}")


def split_files(image_set: str, args: argparse.Namespace) -> SplitFiles:
    """The image folder and annotation file of ``image_set`` ('train', 'val'; 'test' in the export
    layout); DatasetNotFoundError naming what is missing."""
    if uses_split_flags(args):
        return _explicit(image_set, args)
    root = Path(args.coco_path)
    if coco_path_layout(root) == "export":
        return _export_layout(root, image_set)
    return _coco_layout(root, image_set)
