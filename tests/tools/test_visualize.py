"""tools/visualize.py: detections drawn where they are, only above the threshold, from a checkpoint."""
import argparse
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_model import tiny_flags
from tools import visualize
from util.args import get_args_parser

TINY = tiny_flags("--dim_feedforward", "32", "--num_queries", "5")


def test_draw_boxes_above_threshold_only():
    image = Image.new("RGB", (64, 48), (0, 0, 0))
    result = {"boxes": torch.tensor([[10.0, 8.0, 40.0, 30.0], [2.0, 2.0, 20.0, 20.0]]),
              "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.2])}
    drawn, n = visualize.draw(image, result, threshold=0.5, names={1: "square"})
    assert n == 1
    colour = visualize.PALETTE[1]
    assert drawn.getpixel((25, 30)) == colour  # bottom edge of the kept box
    assert drawn.getpixel((40, 20)) == colour  # right edge
    assert drawn.getpixel((25, 20)) == (0, 0, 0)  # inside stays untouched
    assert drawn.getpixel((2, 15)) == (0, 0, 0)  # the low-score box is not drawn


def test_main_draws_checkpoint_detections_on_images(tmp_path):
    from models import build_model

    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(TINY)
    model, _, _ = build_model(args)
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "epoch": 0, "args": args}, ckpt)
    image = tmp_path / "shape.jpg"
    Image.new("RGB", (96, 80), (200, 30, 30)).save(image)
    written = visualize.main([str(ckpt), "--images", str(image), "--image_size", "64", "--threshold", "0",
                              "--output_dir", str(tmp_path / "out")])
    assert written == [str(tmp_path / "out" / "shape.png")]
    out = Image.open(written[0])
    assert out.size == (77, 64)  # shorter side resized to --image_size
    colours = {c for _, c in out.convert("RGB").getcolors(maxcolors=1 << 16)}
    assert colours & set(visualize.PALETTE), "with --threshold 0 every query's box is drawn"


def test_draw_panoptic_colours_each_segment_and_leaves_void():
    from datasets.panoptic_eval import png_bytes

    ids = np.zeros((6, 8), np.int64)
    ids[:, :3], ids[:, 5:] = 1, 2  # columns 3-4 are VOID
    result = {"png_string": png_bytes(ids), "segments_info": [{"id": 1, "category_id": 7},
                                                              {"id": 2, "category_id": 1}]}
    image = Image.new("RGB", (8, 6), (100, 100, 100))
    drawn = visualize.draw_panoptic(image, result, alpha=0.5)
    for x, seg in ((0, 1), (6, 2)):
        expected = tuple(round(0.5 * 100 + 0.5 * c) for c in visualize.PALETTE[seg - 1])
        assert drawn.getpixel((x, 2)) == expected
    assert drawn.getpixel((3, 2)) == (100, 100, 100)
    with pytest.raises(ValueError, match="draw_panoptic"):
        visualize.draw_panoptic(Image.new("RGB", (9, 6)), result)


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
    written = visualize.main([str(ckpt), "--images", str(image), "--image_size", "64",
                              "--output_dir", str(tmp_path / "out")])
    assert written == [str(tmp_path / "out" / "scene.png"), str(tmp_path / "out" / "scene_panoptic.png")]
    assert Image.open(written[1]).size == (77, 64)


def _checkpoint(tmp_path, *flags: str, drop: str = "") -> str:
    from models import build_model

    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args([*TINY, *flags])
    state = {k: v for k, v in build_model(args)[0].state_dict().items() if not drop or not k.startswith(drop)}
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "epoch": 0, "args": args}, path)
    return str(path)


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
