"""datasets.make_transforms: a data set's evaluation transform applied to an image file is what the
evaluation feeds the model (prediction relies on it), the longer side capped."""
import PIL.Image
import torch

from datasets import build_dataset, make_transforms
from datasets.images import read_rgb
from util.args import get_args_parser


def test_the_toy_sets_val_transform_is_what_its_evaluation_feeds_the_model(tmp_path):
    from datasets.toy import generate

    args = get_args_parser().parse_args(["--dataset_file", "toy", "--toy_root",
                                         str(generate(tmp_path / "toy", num_train=1, num_val=2))])
    dataset = build_dataset("val", args)
    image, _ = dataset[1]
    again, target = make_transforms("val", args)(read_rgb(dataset.image_path(dataset.ids[1])), None)
    assert target is None and torch.equal(again, image)


def test_the_longer_side_is_capped_as_in_evaluation():
    strip = PIL.Image.new("RGB", (8000, 400))
    coco = make_transforms("val", get_args_parser().parse_args(["--dataset_file", "coco"]))(strip, None)[0]
    toy = make_transforms("val", get_args_parser().parse_args(["--dataset_file", "toy"]))(strip, None)[0]
    # not 800 x 16000: the published rule makes the shorter side round(1333 * 400 / 8000) = 67 and the
    # longer 67 * 20 (a few pixels past the cap, as in the public code)
    assert tuple(coco.shape) == (3, 67, 1340)
    assert tuple(toy.shape) == (3, 16, 320)


def test_image_scale_multiplies_every_size_of_the_recipe():
    from datasets.transforms import COCO_SCALES

    args = get_args_parser().parse_args(["--dataset_file", "coco", "--image_scale", "0.2"])
    image = PIL.Image.new("RGB", (400, 300))
    assert tuple(make_transforms("val", args)(image, None)[0].shape) == (3, 160, 213)  # 800 * 0.2
    strip = make_transforms("val", args)(PIL.Image.new("RGB", (8000, 400)), None)[0]
    assert strip.shape[2] <= 268  # the longer side's cap, 1333 * 0.2
    train = make_transforms("train", args)
    shorter = {min(train(image, {"boxes": torch.zeros(0, 4)})[0].shape[1:]) for _ in range(60)}
    assert shorter <= {round(s * 0.2) for s in COCO_SCALES} and len(shorter) > 3
