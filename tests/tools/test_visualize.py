"""tools/visualize.py: detections drawn where they are, only above the threshold, from a checkpoint."""
import argparse

import torch
from PIL import Image

from tools import visualize
from util.args import get_args_parser

TINY = ["--dataset_file", "toy", "--backbone", "resnet18", "--no_pretrained_backbone", "--hidden_dim", "32",
        "--dim_feedforward", "32", "--enc_layers", "1", "--dec_layers", "1", "--nheads", "2",
        "--num_queries", "5", "--num_feature_levels", "1", "--enc_n_points", "2", "--dec_n_points", "2"]


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
