"""datasets.dataset_metadata: the data set's own description, and what --num_classes and recorded class
names change in it."""
import pytest

from datasets import dataset_metadata
from util.args import args_problem, get_args_parser


def _args(*flags):
    return get_args_parser().parse_args(["--dataset_file", "toy", *flags])


def test_the_data_set_gives_the_classifier_width_by_default():
    assert dataset_metadata(_args()).num_classes == 20
    assert dataset_metadata(_args()).class_names == {1: "square", 2: "circle", 3: "triangle", 4: "cross",
                                                     5: "diamond"}


def test_num_classes_replaces_the_data_sets_width():
    assert dataset_metadata(_args("--num_classes", "8")).num_classes == 8


def test_recorded_class_names_reach_the_metadata_with_integer_ids():
    args = _args("--num_classes", "4")
    args.class_names = {"1": "cat", "3": "dog"}  # as JSON (config files, Hugging Face id2label) has them
    assert dataset_metadata(args).class_names == {1: "cat", 3: "dog"}


def test_class_names_outside_the_classifier_are_refused():
    args = _args("--num_classes", "2")
    args.class_names = {5: "dog"}
    with pytest.raises(ValueError, match=r"class ids \[5\] are outside the classifier's range \[0, 2\)"):
        dataset_metadata(args)


def test_num_classes_below_one_is_a_flag_error():
    assert args_problem(_args("--num_classes", "0")) == "--num_classes must be an integer >= 1, got 0"
