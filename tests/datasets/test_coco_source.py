"""Where a COCO-format split is: explicit files (--train_json ...), the COCO layout, or the layout
annotation tools export (train/, valid/ with _annotations.coco.json); and the checks of those flags."""
import argparse

import pytest

from datasets import build_dataset
from datasets.coco_source import split_files
from datasets.errors import DatasetNotFoundError
from tests.coco_files import EXPORT_FILE, coco_dict, write_export, write_split
from util.args import args_problem, get_args_parser

NAMES = {0: "cat", 1: "dog"}


def _args(*flags) -> argparse.Namespace:
    return get_args_parser().parse_args(["--device", "cpu", *flags])


def _explicit(tmp_path, names=NAMES):
    for split in ("train", "val"):
        write_split(tmp_path / f"{split}_imgs", tmp_path / f"{split}.json", coco_dict(names))
    return ["--train_json", str(tmp_path / "train.json"), "--train_images", str(tmp_path / "train_imgs"),
            "--val_json", str(tmp_path / "val.json"), "--val_images", str(tmp_path / "val_imgs")]


def test_explicit_files_build_both_splits(tmp_path):
    args = _args(*_explicit(tmp_path))
    assert args_problem(args) is None
    for split in ("train", "val"):
        dataset = build_dataset(split, args)
        assert dataset.ann_file == str(tmp_path / f"{split}.json") and len(dataset) == 2
        image, target = dataset[0]
        assert image.shape[0] == 3 and target["labels"].tolist() == [0]


def test_the_export_layout_is_found_from_coco_path(tmp_path):
    root = write_export(tmp_path / "export", NAMES, splits=("train", "valid", "test"))
    args = _args("--coco_path", str(root))
    assert args_problem(args) is None
    assert split_files("train", args).annotations == root / "train" / EXPORT_FILE
    assert split_files("val", args).images == root / "valid"
    assert split_files("test", args).images == root / "test"
    assert len(build_dataset("val", args)) == 2


def test_an_export_without_valid_names_the_flags_that_would_use_test(tmp_path):
    root = write_export(tmp_path / "export", NAMES, splits=("train", "test"))
    with pytest.raises(DatasetNotFoundError, match=r"no valid/_annotations\.coco\.json .*--val_json .*test"):
        build_dataset("val", _args("--coco_path", str(root)))


def test_a_folder_in_neither_layout_names_both(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"instances_train2017\.json.*_annotations\.coco\.json"):
        build_dataset("train", _args("--coco_path", str(tmp_path / "empty")))


@pytest.mark.parametrize("drop,message", [
    ("--train_images", "--train_json needs --train_images"),
    ("--val_json", "--val_images needs --val_json"),
])
def test_a_split_needs_its_file_and_its_folder(tmp_path, drop, message):
    flags = _explicit(tmp_path)
    i = flags.index(drop)
    assert args_problem(_args(*flags[:i], *flags[i + 2:])).startswith(message)


def test_training_needs_the_validation_split_and_evaluation_only_it(tmp_path):
    flags = _explicit(tmp_path)
    train_only = flags[:4]
    assert args_problem(_args(*train_only)) == (
        "--train_json needs --val_json and --val_images too (the run evaluates on the val split); or drop "
        "the explicit files and pass --coco_path")
    checkpoint = tmp_path / "checkpoint.pth"  # the flag checks ask only that it exists
    checkpoint.write_bytes(b"")
    assert args_problem(_args(*flags[4:], "--eval", "--resume", str(checkpoint))) is None


def test_missing_explicit_files_are_named(tmp_path):
    flags = _explicit(tmp_path)
    flags[flags.index("--val_json") + 1] = str(tmp_path / "nope.json")
    assert args_problem(_args(*flags)) == f"--val_json {tmp_path / 'nope.json'}: no such file"
    flags = _explicit(tmp_path)
    flags[flags.index("--train_images") + 1] = str(tmp_path / "nowhere")
    assert args_problem(_args(*flags)) == f"--train_images {tmp_path / 'nowhere'}: no such folder"


def test_explicit_files_are_for_the_coco_data_set_only(tmp_path):
    flags = _explicit(tmp_path)
    assert args_problem(_args(*flags, "--dataset_file", "toy")) == (
        "--train_json is for --dataset_file coco (COCO-format annotation files), not toy")


def test_max_image_pixels_is_a_count(tmp_path):
    assert args_problem(_args("--max_image_pixels", "-1", "--dataset_file", "toy")) == (
        "--max_image_pixels must be an integer >= 0, got -1")
