"""Data sets: ``build_dataset(image_set, args)`` picks one from ``args.dataset_file``, and
``dataset_metadata(args)`` says what the model needs to know about it (``util.metadata``).

Adding a data set: a module with ``build(image_set, args)`` and one entry in ``_DATASETS`` below.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset, Subset

from datasets.errors import (  # noqa: F401 (the package's public names)
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetReadError,
    data_error_message,
)
from util.metadata import DatasetMetadata

# The public code's classifier width for data sets other than COCO.
_OTHER_NUM_CLASSES = 20


def get_coco_api_from_dataset(dataset: Dataset):
    """The pycocotools ``COCO`` ground truth behind a data set (looking through ``Subset`` wrappers)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if not hasattr(dataset, "coco"):
        raise TypeError(f"{type(dataset).__name__} has no COCO ground truth (no .coco attribute)")
    return dataset.coco


def _coco_panoptic_metadata(args: argparse.Namespace) -> DatasetMetadata:
    # Category ids reach 200 (things 1..90, stuff 92..200); 250 is the public code's width.
    ann_file = os.path.join(args.coco_panoptic_path or "", "annotations", "panoptic_val2017.json")
    if os.path.isfile(ann_file):
        with open(ann_file, encoding="utf-8") as f:
            is_thing = {c["id"]: bool(c["isthing"]) for c in json.load(f)["categories"]}
    else:  # the published category list, for a model built without the data at hand
        is_thing = {i: i <= 90 for i in range(1, 201)}
    return DatasetMetadata(250, is_thing)


def _toy_panoptic_metadata(args: argparse.Namespace) -> DatasetMetadata:
    from datasets.toy_panoptic import categories

    return DatasetMetadata(_OTHER_NUM_CLASSES, {c["id"]: bool(c["isthing"]) for c in categories()})


@dataclass(frozen=True)
class _DatasetEntry:
    module: str  # holds build(image_set, args)
    metadata: Callable[[argparse.Namespace], DatasetMetadata]


_DATASETS = {
    "coco": _DatasetEntry("datasets.coco", lambda args: DatasetMetadata(91)),  # max COCO category id + 1
    "coco_panoptic": _DatasetEntry("datasets.coco_panoptic", _coco_panoptic_metadata),
    "toy": _DatasetEntry("datasets.toy", lambda args: DatasetMetadata(_OTHER_NUM_CLASSES)),
    "toy_panoptic": _DatasetEntry("datasets.toy_panoptic", _toy_panoptic_metadata),
}
DATASET_FILES = tuple(_DATASETS)


def _entry(args: argparse.Namespace) -> _DatasetEntry:
    if args.dataset_file not in _DATASETS:
        choices = ", ".join(DATASET_FILES)
        raise ValueError(f"--dataset_file {args.dataset_file!r} is not supported; choose one of {choices}")
    return _DATASETS[args.dataset_file]


def dataset_metadata(args: argparse.Namespace) -> DatasetMetadata:
    """What the model builder needs to know about ``args.dataset_file``: its classes (and, for panoptic
    data, which are things). May read the data set's annotation file.

    ``--num_classes`` replaces the data set's classifier width, and ``args.class_names`` (id -> name,
    recorded in checkpoints) its names."""
    metadata = _entry(args).metadata(args)
    if getattr(args, "num_classes", None) is not None:
        metadata = dataclasses.replace(metadata, num_classes=args.num_classes)
    names = getattr(args, "class_names", None)
    if names is not None:
        metadata = dataclasses.replace(metadata, class_names={int(k): str(v) for k, v in names.items()})
    return metadata


def build_dataset(image_set: str, args: argparse.Namespace) -> Dataset:
    """The ``image_set`` ('train' or 'val') split of ``args.dataset_file``."""
    return importlib.import_module(_entry(args).module).build(image_set, args)
