"""The classes of a COCO-format data set: the classifier's width and the names of its outputs.

Labels are the category ids as the annotation file has them (0-based, 1-based or with gaps), so the
classifier has the largest id + 1 outputs, as the public code sizes COCO (ids 1..90: 91 outputs); an
output whose id no category has is never a target. ``--coco_path`` in the COCO layout keeps COCO's 91
whatever the file says (the published models and commands), and ``--num_classes`` sets any width that
holds the ids. The names are those of the validation split's file, read in training and in evaluation
alike; every split's category list must be that same list (``check_same_categories``).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from datasets.coco_names import COCO_CATEGORY_NAMES
from datasets.coco_source import layout_of, split_files
from datasets.errors import DatasetFormatError, DatasetNotFoundError
from datasets.torchvision_datasets.coco import AnnotationFileError, read_coco_json
from util.metadata import DatasetMetadata

COCO_NUM_CLASSES = 91  # COCO's largest category id (90) + 1


def category_names(categories: list[dict], ann_file: str | Path) -> dict[int, str]:
    """id -> name of a checked ``categories`` list (``validate_coco_dict``: unique integer ids)."""
    for i, cat in enumerate(categories):
        if not isinstance(cat.get("name"), str):
            raise AnnotationFileError(f"annotation file {ann_file}: categories[{i}] (id {cat['id']}) has no "
                                      "'name' string; every category needs one")
    return {cat["id"]: cat["name"] for cat in categories}


def read_category_names(ann_file: Path) -> dict[int, str]:
    return category_names(read_coco_json(os.fspath(ann_file))["categories"], ann_file)


def check_ids_fit(names: Mapping[int, str], ann_file: str | Path, num_classes: int, why: str) -> None:
    """A category id with no classifier output would index past the logits (deep in the matcher): stop
    here, naming the file, the id and --num_classes. ``why``: where ``num_classes`` came from."""
    largest = max(names, default=-1)
    if largest >= num_classes:
        raise DatasetFormatError(
            f"annotation file {ann_file}: category id {largest} ({names[largest]!r}) has no output in a "
            f"classifier of {num_classes} ({why}); pass --num_classes {largest + 1} (the largest category "
            "id + 1) or more")


def check_same_categories(names: Mapping[int, str], ann_file: str | Path, expected: Mapping[int, str],
                          expected_from: str) -> None:
    """Every split names the classifier's outputs alike: a list unlike ``expected`` (the validation
    file's or the checkpoint's) would train or score one class under another's id."""
    if dict(names) == dict(expected):
        return
    for cid in sorted(set(names) | set(expected)):
        ours, theirs = names.get(cid), expected.get(cid)
        if ours != theirs:
            here = f"{ours!r}" if ours is not None else "absent"
            there = f"{theirs!r}" if theirs is not None else "absent"
            raise DatasetFormatError(
                f"annotation file {ann_file}: its categories differ from {expected_from}: category id {cid} "
                f"is {here} here and {there} there; every split must list the same categories (ids and "
                "names)")


def coco_metadata(args: argparse.Namespace) -> DatasetMetadata:
    """Width and names of ``--dataset_file coco``'s classes, from the validation split's annotation file.

    Nothing is read when both are already known (``main.py`` resolved them, or a checkpoint recorded
    them); a COCO layout that is not there gives COCO's width and its published names (unless
    --num_classes is narrower), for models built without the data at hand.
    """
    if None not in (getattr(args, "num_classes", None), getattr(args, "class_names", None)):
        return DatasetMetadata(args.num_classes)  # datasets.dataset_metadata adds the names
    layout = layout_of(args)
    try:
        files = split_files("val", args)
    except DatasetNotFoundError:
        if layout == "coco":
            given = getattr(args, "num_classes", None)
            fits = given is None or given >= COCO_NUM_CLASSES
            return DatasetMetadata(COCO_NUM_CLASSES, class_names=COCO_CATEGORY_NAMES if fits else None)
        raise
    names = read_category_names(files.annotations)
    given = getattr(args, "num_classes", None)
    if given is not None:
        width = given
    elif layout == "coco":
        width = COCO_NUM_CLASSES
    elif names:
        width = max(names) + 1
    else:
        raise DatasetFormatError(f"annotation file {files.annotations}: 'categories' is empty; the "
                                 "classifier's width is the largest category id + 1")
    why = (f"--num_classes {given}" if given is not None else
           "COCO's width, kept for --coco_path in the COCO layout; --num_classes sets another")
    check_ids_fit(names, files.annotations, width, why)
    return DatasetMetadata(width, class_names=names)


def coco_classes_origin(args: argparse.Namespace, metadata: DatasetMetadata) -> tuple[str, str]:
    """(why the classifier has its width, where the names come from), for the run's first lines
    (``datasets.resolve_classes``, which says --num_classes itself where it was given)."""
    layout = layout_of(args)
    names = metadata.class_names or {}
    largest = max(names, default=None)
    if layout == "coco":
        why = "COCO's width, kept for --coco_path in the COCO layout"
        if largest is not None and largest + 1 != metadata.num_classes:
            why += f"; the file's largest category id is {largest}: --num_classes {largest + 1} fits it"
    else:
        why = (f"the largest category id, {largest}, + 1: ids are used as they are, as the public code "
               "sizes COCO's ids 1..90 into 91 outputs")
    try:
        source = os.fspath(split_files("val", args).annotations)
    except DatasetNotFoundError:
        source = "no annotation file found"
    return why, source
