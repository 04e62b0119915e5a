"""tools/visualize.py, a front of tools/predict.py: its documented commands, and the defects it had (bare
ids on --images, the resized image saved, no cap on the longer side, a traceback for a moved data set)."""
import argparse
import os
import shutil

import pytest
import torch
from PIL import Image

from tests.coco_files import write_split
from tests.tiny_model import tiny_flags
from tools import visualize
from util import from_checkpoint
from util.args import get_args_parser

TINY = tiny_flags("--dim_feedforward", "32", "--num_queries", "5")
NAMES = {1: "square", 2: "circle", 3: "triangle", 4: "cross", 5: "diamond"}


def _checkpoint(tmp_path, *flags: str, drop: str = "", names: dict | None = None) -> str:
    from models import build_model

    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args([*TINY, *flags])
    if names is not None:
        args.num_classes, args.class_names = 20, names
    state = {k: v for k, v in build_model(args)[0].state_dict().items() if not drop or not k.startswith(drop)}
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "epoch": 0, "args": args}, path)
    return str(path)


@pytest.fixture
def model_inputs(monkeypatch):
    """The (B, 3, H, W) batches the rebuilt model is given."""
    shapes = []
    build = from_checkpoint._build

    def spying(args):
        model, criterion, postprocessors = build(args)
        model.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].tensors.shape)))
        return model, criterion, postprocessors

    monkeypatch.setattr(from_checkpoint, "_build", spying)
    return shapes


# the toy set's evaluation resize: shorter side 160, longer side at most 320 (not 3200 x 160); the
# checkpoint's --image_scale multiplies both
@pytest.mark.parametrize("flags, model_input", [((), (1, 3, 16, 320)),
                                                (("--image_scale", "0.5"), (1, 3, 8, 160))])
def test_images_are_drawn_at_their_own_size_with_the_longer_side_capped_for_the_model(tmp_path, model_inputs,
                                                                                       flags, model_input):
    image = tmp_path / "strip.jpg"
    Image.new("RGB", (1000, 50), (200, 30, 30)).save(image)
    written = visualize.main([_checkpoint(tmp_path, *flags), "--images", str(image), "--threshold", "0",
                              "--output_dir", str(tmp_path / "out")])
    assert [os.path.basename(p) for p in written] == ["strip.jpg"]
    assert Image.open(written[0]).size == (1000, 50)  # the file's size, not the model's input
    assert model_inputs == [model_input]


def test_images_get_the_class_names_the_checkpoint_records(tmp_path, monkeypatch):
    drawn_with = []

    def draw(image, detections, names):
        drawn_with.append(names)
        return image

    monkeypatch.setattr("tools.predict.draw", draw)
    image = tmp_path / "shape.png"
    Image.new("RGB", (96, 80), (200, 30, 30)).save(image)
    visualize.main([_checkpoint(tmp_path, names=NAMES), "--images", str(image), "--output_dir",
                    str(tmp_path / "out")])
    assert drawn_with == [NAMES]


def test_a_moved_data_set_is_one_line_naming_the_file(tmp_path, capsys):
    names = {1: "a", 2: "b"}
    data = {"images": [{"id": 1, "file_name": "x.jpg", "width": 64, "height": 48}], "annotations": [],
            "categories": [{"id": i, "name": n} for i, n in names.items()]}
    write_split(tmp_path / "data", tmp_path / "data" / "val.json", data)
    path = _checkpoint(tmp_path, "--dataset_file", "coco", "--val_json", str(tmp_path / "data" / "val.json"),
                       "--val_images", str(tmp_path / "data"), names=names)
    shutil.move(tmp_path / "data", tmp_path / "moved")
    with pytest.raises(SystemExit) as info:
        visualize.main([path, "--num_images", "1", "--output_dir", str(tmp_path / "out")])
    message = str(info.value.code)
    assert message.startswith("visualize.py: data error:") and "val.json" in message and "\n" not in message


def test_main_draws_panoptic_segments_of_a_masks_model(tmp_path):
    from models import build_model

    flags = [f if f != "toy" else "toy_panoptic" for f in TINY]
    flags[flags.index("--num_feature_levels") + 1] = "3"
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(flags + ["--masks"])
    model, _, _ = build_model(args)
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "epoch": 0, "args": args}, ckpt)
    image = tmp_path / "scene.jpg"
    Image.new("RGB", (96, 80), (30, 120, 30)).save(image)
    written = visualize.main([str(ckpt), "--images", str(image), "--output_dir", str(tmp_path / "out")])
    assert [os.path.basename(p) for p in written] == ["scene.jpg", "scene_panoptic.png"]
    assert Image.open(written[1]).size == (96, 80)


def test_a_checkpoint_lacking_weights_is_refused_not_drawn_with_random_ones(tmp_path):
    image = tmp_path / "shape.jpg"
    Image.new("RGB", (96, 80), (200, 30, 30)).save(image)
    path = _checkpoint(tmp_path, drop="class_embed")
    with pytest.raises(SystemExit) as info:
        visualize.main([path, "--images", str(image), "--output_dir", str(tmp_path / "out")])
    message = str(info.value.code)
    assert "lacks 2 weight tensors" in message and path in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_flag_errors_after_the_separator_end_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        visualize.main([_checkpoint(tmp_path), "--", "--hidden_dim", "48"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2
    assert last.startswith("visualize.py: error: --hidden_dim must be a multiple of 32")


def test_the_validation_images_are_found_where_the_run_found_them(tmp_path):
    from datasets.toy import generate

    root = generate(tmp_path / "toy", num_train=1, num_val=2)
    written = visualize.main([_checkpoint(tmp_path, "--toy_root", str(root)), "--num_images", "1",
                              "--output_dir", str(tmp_path / "out")])
    assert len(written) == 1 and os.path.isfile(written[0])
    assert Image.open(written[0]).size == Image.open(root / "val2017" / os.path.basename(written[0])).size
