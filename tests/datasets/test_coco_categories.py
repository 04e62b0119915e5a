"""The classes of a COCO-format set: the classifier's width from the largest category id (COCO's 91 for
the COCO layout), the names from the annotation file, and one category list for every split."""
import argparse
import json

import pytest

from datasets import build_dataset, dataset_metadata, resolve_classes
from datasets.coco_names import COCO_CATEGORY_NAMES
from datasets.errors import DatasetFormatError
from datasets.torchvision_datasets import AnnotationFileError
from tests.coco_files import EXPORT_FILE, coco_dict, write_export, write_split
from util.args import get_args_parser


def _args(*flags) -> argparse.Namespace:
    return get_args_parser().parse_args(["--device", "cpu", *flags])


def _export(tmp_path, names, **kw) -> argparse.Namespace:
    return _args("--coco_path", str(write_export(tmp_path / "export", names, **kw)))


def _coco_layout(tmp_path, names) -> argparse.Namespace:
    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        write_split(root / split, root / "annotations" / f"instances_{split}.json", coco_dict(names))
    return _args("--coco_path", str(root))


@pytest.mark.parametrize("names,width", [
    ({0: "cat", 1: "dog", 2: "bird"}, 3),  # 0-based
    ({1: "cat", 2: "dog"}, 3),  # 1-based: output 0 is never a target
    ({3: "cat", 7: "dog"}, 8),  # gaps
])
def test_width_is_the_largest_id_plus_one_and_names_come_from_the_file(tmp_path, names, width):
    metadata = dataset_metadata(_export(tmp_path, names))
    assert metadata.num_classes == width
    assert metadata.class_names == names


def test_the_coco_layout_keeps_cocos_91_and_reads_its_names(tmp_path):
    metadata = dataset_metadata(_coco_layout(tmp_path, {1: "person", 3: "car"}))
    assert metadata.num_classes == 91
    assert metadata.class_names == {1: "person", 3: "car"}


def test_without_the_data_at_hand_the_coco_width_is_91_with_cocos_names(tmp_path):
    args = _args("--coco_path", str(tmp_path / "absent"))
    metadata = dataset_metadata(args)
    assert metadata.num_classes == 91 and metadata.class_names == COCO_CATEGORY_NAMES
    names = metadata.class_names
    assert len(names) == 80 and names[1] == "person" and names[90] == "toothbrush" and 12 not in names
    args.num_classes = 20  # another label set in COCO's layout: not COCO's names
    assert dataset_metadata(args).class_names is None


def test_ids_past_cocos_width_stop_at_loading_naming_the_file_the_id_and_the_flag(tmp_path):
    args = _coco_layout(tmp_path, {1: "person", 120: "tractor"})
    with pytest.raises(DatasetFormatError) as e:
        dataset_metadata(args)
    message = str(e.value)
    assert "instances_val2017.json" in message and "category id 120 ('tractor')" in message
    assert "classifier of 91" in message and "--num_classes 121" in message
    args.num_classes = 121
    assert dataset_metadata(args).num_classes == 121


def test_num_classes_below_the_largest_id_is_refused_naming_the_file(tmp_path):
    args = _export(tmp_path, {0: "cat", 5: "dog"})
    args.num_classes = 4
    with pytest.raises(DatasetFormatError, match=r"valid/_annotations\.coco\.json: category id 5 \('dog'\) "
                                                  r"has no output in a classifier of 4 \(--num_classes 4\); "
                                                  r"pass --num_classes 6"):
        build_dataset("train", args)


def test_train_and_val_category_lists_must_agree(tmp_path):
    args = _coco_layout(tmp_path, {1: "cat", 2: "dog", 3: "bird"})
    train_file = tmp_path / "coco" / "annotations" / "instances_train2017.json"
    data = json.loads(train_file.read_text())
    data["categories"][0]["name"] = "wolf"
    train_file.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=r"instances_train2017\.json: its categories differ "
                                                  r"from the validation split's: category id 1 is 'wolf' "
                                                  r"here and 'cat' there"):
        build_dataset("train", args)


def test_the_validation_file_must_name_the_classes_the_checkpoint_recorded(tmp_path):
    args = _export(tmp_path, {0: "cat", 1: "dog"})
    args.num_classes, args.class_names = 3, {0: "cat", 1: "dog", 2: "bird"}  # as test.py adopts them
    with pytest.raises(DatasetFormatError, match=r"valid/_annotations\.coco\.json: .*recorded in its "
                                                  r"checkpoint.*category id 2 is absent here and 'bird' "
                                                  r"there"):
        build_dataset("val", args)


@pytest.mark.parametrize("categories,message", [
    ([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], r"categories\[1\] repeats category id 1"),
    ([{"id": "1", "name": "a"}], r"categories\[0\] has id '1'; category ids must be integers >= 0"),
    ([{"id": -1, "name": "a"}], r"categories\[0\] has id -1"),
    ([{"id": 1}], r"categories\[0\] \(id 1\) has no 'name'"),
])
def test_malformed_categories_are_named(tmp_path, categories, message):
    root = write_export(tmp_path / "export", {1: "a"})
    data = json.loads((root / "valid" / EXPORT_FILE).read_text())
    data["categories"] = categories
    data["annotations"] = []
    (root / "valid" / EXPORT_FILE).write_text(json.dumps(data))
    with pytest.raises(AnnotationFileError, match=message):
        dataset_metadata(_args("--coco_path", str(root)))


def test_resolve_records_width_and_names_in_args_and_says_why(tmp_path):
    args = _export(tmp_path, {3: "cat", 7: "dog"})
    line = resolve_classes(args)
    assert args.num_classes == 8 and args.class_names == {3: "cat", 7: "dog"}
    assert line.startswith("classes: 8 classifier outputs (the largest category id, 7, + 1: ids are used "
                           "as they are, as the public code sizes COCO's ids 1..90 into 91 outputs); 2 "
                           "categories named in ")
    assert line.endswith(f"valid/{EXPORT_FILE}: 3 cat, 7 dog")


def test_resolve_on_the_coco_layout_says_91_and_what_would_fit(tmp_path):
    args = _coco_layout(tmp_path, {1: "person", 3: "car"})
    line = resolve_classes(args)
    assert args.num_classes == 91
    assert line.startswith("classes: 91 classifier outputs (COCO's width, kept for --coco_path in the COCO "
                           "layout; the file's largest category id is 3: --num_classes 4 fits it)")
