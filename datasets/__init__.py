"""Data sets: ``build_dataset(image_set, args)`` picks one from ``args.dataset_file``."""
from __future__ import annotations

from torch.utils.data import Dataset, Subset

DATASET_FILES = ("coco", "coco_panoptic", "toy", "toy_panoptic")


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
