"""Data sets: ``build_dataset(image_set, args)`` picks one from ``args.dataset_file``, and
``dataset_metadata(args)`` says what the model needs to know about it (``util.metadata``).

Adding a data set: a module with ``build(image_set, args)`` and one entry in ``_DATASETS`` below.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset, Subset

from datasets import transforms as T
from datasets.errors import (  # noqa: F401 (the package's public names)
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetReadError,
    data_error_message,
    listing,
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


def _toy_metadata(args: argparse.Namespace) -> DatasetMetadata:
    from datasets.toy import CLASSES

    return DatasetMetadata(_OTHER_NUM_CLASSES, class_names={cid: name for cid, name, _ in CLASSES})


def _toy_panoptic_metadata(args: argparse.Namespace) -> DatasetMetadata:
    from datasets.toy_panoptic import categories

    return DatasetMetadata(_OTHER_NUM_CLASSES, {c["id"]: bool(c["isthing"]) for c in categories()},
                           {c["id"]: c["name"] for c in categories()})


def _coco_metadata(args: argparse.Namespace) -> DatasetMetadata:
    from datasets.coco_categories import coco_metadata

    return coco_metadata(args)


def _toy_transforms(image_set: str, scale: float = 1.0) -> T.Compose:
    from datasets.toy import make_transforms

    return make_transforms(image_set, scale)


def _coco_classes_origin(args: argparse.Namespace, metadata: DatasetMetadata) -> tuple[str, str]:
    from datasets.coco_categories import coco_classes_origin

    return coco_classes_origin(args, metadata)


@dataclass(frozen=True)
class _DatasetEntry:
    module: str  # holds build(image_set, args)
    metadata: Callable[[argparse.Namespace], DatasetMetadata]
    # (why the classifier has its width, where the names come from) for the run's first lines; None: the
    # data set's fixed width and names
    classes_origin: Callable[[argparse.Namespace, DatasetMetadata], tuple[str, str]] | None = None
    # (image_set, --image_scale) -> the transforms build() gives that split: (image, target) pairs
    transforms: Callable[[str, float], T.Compose] = T.make_coco_transforms


_DATASETS = {
    "coco": _DatasetEntry("datasets.coco", _coco_metadata, _coco_classes_origin),
    "coco_panoptic": _DatasetEntry("datasets.coco_panoptic", _coco_panoptic_metadata),
    "toy": _DatasetEntry("datasets.toy", _toy_metadata, transforms=_toy_transforms),
    "toy_panoptic": _DatasetEntry("datasets.toy_panoptic", _toy_panoptic_metadata,
                                  transforms=_toy_transforms),
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
    return _entry(args).metadata(args).with_given(getattr(args, "num_classes", None),
                                                  getattr(args, "class_names", None))


def resolve_classes(args: argparse.Namespace) -> str:
    """Set ``args.num_classes`` and ``args.class_names`` to what the model is built with, so that every
    checkpoint records them (test.py and the tools read them back), and return the line that says where
    they come from. Values already there (--num_classes, or a checkpoint's via test.py) are kept."""
    width_given = args.num_classes is not None
    names_given = getattr(args, "class_names", None) is not None
    metadata = dataset_metadata(args)
    args.num_classes = metadata.num_classes
    args.class_names = dict(metadata.class_names) if metadata.class_names is not None else None
    entry = _entry(args)
    why, source = (entry.classes_origin(args, metadata) if entry.classes_origin is not None
                   else (f"--dataset_file {args.dataset_file}'s", f"--dataset_file {args.dataset_file}"))
    if width_given:
        why = f"--num_classes {metadata.num_classes}"
    if names_given:
        source = "the checkpoint's args"
    names = metadata.class_names
    named = ("no category names" if not names else
             f"{len(names)} categories named in {source}: "
             + listing([f"{cid} {name}" for cid, name in sorted(names.items())]))
    return f"classes: {metadata.num_classes} classifier outputs ({why}); {named}"


def make_transforms(image_set: str, args: argparse.Namespace) -> T.Compose:
    """The transforms of ``args.dataset_file``'s ``image_set`` split; called with a None target, the 'val'
    ones turn an image file's pixels into what the evaluation feeds the model (resized as the data set's
    evaluation resizes, times --image_scale, normalised): what prediction on image files applies."""
    return _entry(args).transforms(image_set, scale=T.image_scale(args))


def build_dataset(image_set: str, args: argparse.Namespace) -> Dataset:
    """The ``image_set`` ('train' or 'val') split of ``args.dataset_file``."""
    return importlib.import_module(_entry(args).module).build(image_set, args)
