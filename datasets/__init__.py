"""Data sets: ``build_dataset(image_set, args)`` picks one from ``args.dataset_file``."""
from __future__ import annotations

from torch.utils.data import Dataset, Subset

DATASET_FILES = ("coco", "coco_panoptic", "toy", "toy_panoptic")


class DatasetError(Exception):
    """Data on disk that cannot be used: a missing folder or file, a malformed annotation file, an
    unreadable image. The message names the file; ``main.py`` reports it in one line, no traceback.
    The subclasses below are also the built-in error of their kind, so ``except OSError`` still works."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A folder or file of the data set is missing."""


class DatasetFormatError(DatasetError, ValueError):
    """A file of the data set has the wrong content (annotation keys, image and PNG sizes)."""


class DatasetReadError(DatasetError, OSError):
    """A file of the data set exists but cannot be decoded."""


def data_error_message(error: DatasetError) -> str:
    """The error's message on one line, also when a DataLoader worker re-raised it: the worker's copy
    carries the worker's traceback, whose last line is ``<module>.<class>: <message>``."""
    text = str(error).strip()
    if "Traceback (most recent call last)" not in text:
        return " ".join(line.strip() for line in text.splitlines())
    last = text.splitlines()[-1]
    head, sep, message = last.partition(": ")
    return message if sep and head.rsplit(".", 1)[-1] == type(error).__name__ else last


def get_coco_api_from_dataset(dataset: Dataset):
    """The pycocotools ``COCO`` ground truth behind a data set (looking through ``Subset`` wrappers)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if not hasattr(dataset, "coco"):
        raise TypeError(f"{type(dataset).__name__} has no COCO ground truth (no .coco attribute)")
    return dataset.coco


def build_dataset(image_set: str, args) -> Dataset:
    """The ``image_set`` ('train' or 'val') split of ``args.dataset_file``."""
    if args.dataset_file == "coco":
        from datasets.coco import build
    elif args.dataset_file == "toy":
        from datasets.toy import build
    elif args.dataset_file == "coco_panoptic":
        from datasets.coco_panoptic import build
    elif args.dataset_file == "toy_panoptic":
        from datasets.toy_panoptic import build
    else:
        raise ValueError(f"--dataset_file {args.dataset_file!r} is not supported; "
                         f"choose one of {DATASET_FILES}")
    return build(image_set, args)
