"""tools/predict.py: drawn images at their own size, a drawn video, detections.json in the COCO results
format with the checkpoint's class names, the threshold, batches that give batch-1 detections, and inputs
that cannot be read skipped and counted."""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.video import VideoReader, VideoWriter
from tests.tiny_model import tiny_flags
from tools import predict
from util.args import get_args_parser

NAMES = {1: "square", 2: "circle", 3: "triangle", 4: "cross", 5: "diamond"}
SIZES = {"a.jpg": (96, 80), "c.jpg": (96, 80), "sub/b.png": (120, 64)}  # (w, h); sorted as found
VIDEO_FRAMES, VIDEO_SIZE = 4, (64, 48)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from models import build_model

    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(tiny_flags())
    args.num_classes, args.class_names = 20, NAMES
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    torch.save({"model": build_model(args)[0].state_dict(), "epoch": 0, "args": args}, path)
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two image sizes (one in a subfolder), a video, a corrupt image and a file of another type."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (root / "notes.txt").write_text("not an image")
    with VideoWriter(str(root / "clip.mp4"), fps=5) as video:
        for _ in range(VIDEO_FRAMES):
            video.write(Image.fromarray(rng.integers(0, 255, (*VIDEO_SIZE[::-1], 3), dtype=np.uint8)))
    return root


def _predict(checkpoint, *argv):
    return predict.main(["--resume", checkpoint, *map(str, argv), "--num_workers", "0"])


@pytest.fixture(scope="module")
def everything(checkpoint, inputs, tmp_path_factory):
    """The folder predicted with --threshold 0 and --batch_size 1: (output folder, detections, stdout)."""
    out = tmp_path_factory.mktemp("out")
    written = _predict(checkpoint, inputs, "--output_dir", out, "--threshold", "0", "--batch_size", "1")
    return out, written, json.loads((out / "detections.json").read_text())


def test_a_folder_gives_one_drawing_per_image_at_its_own_size_and_a_drawn_video(everything, inputs):
    out, written, _ = everything
    assert sorted(os.path.relpath(p, out) for p in written) == sorted(
        ["a.jpg", "c.jpg", os.path.join("sub", "b.png"), "clip.mp4", "detections.json"])
    for name, size in SIZES.items():
        assert Image.open(out / name).size == size
    frames = list(VideoReader(str(out / "clip.mp4")))
    assert len(frames) == VIDEO_FRAMES and frames[0].size == VIDEO_SIZE


def test_detections_json_is_coco_results_with_ids_and_names_of_the_data_set(everything, inputs):
    _, _, results = everything
    found = ["a.jpg", "broken.jpg", "c.jpg", "sub/b.png"]  # image ids 1-4 in input order; 2 is unreadable
    by_id = {}
    for r in results:
        by_id.setdefault(r["image_id"], []).append(r)
        assert set(r) >= {"image_id", "file_name", "category_id", "category_name", "bbox", "score"}
        assert r["category_name"] == NAMES.get(r["category_id"])
        assert 0 <= r["category_id"] < 20 and len(r["bbox"]) == 4
    assert sorted(by_id) == [1, 3, 4, 5, 6, 7, 8]
    for image_id in (1, 3, 4):
        assert {r["file_name"] for r in by_id[image_id]} == {os.path.join(inputs, found[image_id - 1])}
        assert len(by_id[image_id]) == 100  # --threshold 0: PostProcess's best 100
    assert [by_id[5 + i][0]["frame"] for i in range(VIDEO_FRAMES)] == list(range(VIDEO_FRAMES))
    assert "frame" not in by_id[1][0]
    assert any(r["category_name"] for r in results)


def test_boxes_are_in_pixels_of_the_original_image(everything, inputs, checkpoint):
    """The model's own output on the resized image, scaled to the file's size: detections.json's boxes."""
    from datasets import make_transforms
    from datasets.images import read_rgb
    from util.from_checkpoint import detector_from_checkpoint
    from util.misc import nested_tensor_from_tensor_list

    _, _, results = everything
    detector = detector_from_checkpoint(checkpoint)
    image = read_rgb(str(inputs / "sub" / "b.png"))
    tensor, _ = make_transforms("val", detector.args)(image, None)
    assert tuple(tensor.shape[1:]) == (160, 300)  # toy evaluation resize: shorter side 160
    with torch.no_grad():
        outputs = detector.model(nested_tensor_from_tensor_list([tensor]))
    best = detector.postprocessors["bbox"](outputs, torch.tensor([[64, 120]]))[0]
    x0, y0, x1, y1 = best["boxes"][0].tolist()
    first = next(r for r in results if r["image_id"] == 4)
    assert first["category_id"] == int(best["labels"][0])
    assert first["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.01)


def test_the_threshold_keeps_the_detections_scoring_at_least_it(everything, checkpoint, inputs, tmp_path):
    _, _, every = everything
    scores = sorted({r["score"] for r in every})
    threshold = (scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2
    _predict(checkpoint, inputs, "--output_dir", tmp_path, "--threshold", threshold, "--batch_size", "1")
    kept = json.loads((tmp_path / "detections.json").read_text())
    assert 0 < len(kept) < len(every)
    assert kept == [r for r in every if r["score"] >= threshold]


def test_larger_batches_give_the_detections_of_batch_size_one(everything, checkpoint, inputs, tmp_path):
    """a.jpg and c.jpg share a size and run together; b.png, of another, is never padded into their batch."""
    _, _, single = everything
    predict.main(["--resume", checkpoint, str(inputs), "--output_dir", str(tmp_path), "--threshold", "0",
                  "--batch_size", "3", "--num_workers", "1"])
    batched = json.loads((tmp_path / "detections.json").read_text())
    assert [(r["image_id"], r["category_id"]) for r in batched] == [
        (r["image_id"], r["category_id"]) for r in single]
    assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in single], abs=2e-4)
    assert np.allclose([r["bbox"] for r in batched], [r["bbox"] for r in single], atol=0.02)


def test_batches_hold_one_size_each_in_arrival_order_with_a_bounded_wait():
    def picture(n, h):
        return predict.Picture(predict.Input(str(n), str(n)), n, None, torch.zeros(3, h, 8))

    sizes = [10, 20, 10, 10, 20]
    got = [[p.image_id for p in b] for b in predict.batches_by_size(
        (picture(i, h) for i, h in enumerate(sizes)), batch_size=2)]
    assert got == [[0, 2], [1, 4], [3]]
    # all different: at most 4 * batch_size wait, then the oldest goes alone
    got = [[p.image_id for p in b] for b in predict.batches_by_size(
        (picture(i, 10 + i) for i in range(12)), batch_size=2)]
    assert sorted(sum(got, [])) == list(range(12)) and got[0] == [0] and all(len(b) == 1 for b in got)


def test_exif_orientation_is_applied_as_training_applies_it(checkpoint, tmp_path):
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown turned by 90 degrees
    Image.new("RGB", (80, 40), (10, 200, 10)).save(photo, exif=exif)
    written = _predict(checkpoint, photo, "--output_dir", tmp_path / "out")
    assert Image.open(written[0]).size == (40, 80)


def test_unreadable_inputs_are_skipped_and_counted(checkpoint, inputs, tmp_path, capsys):
    _predict(checkpoint, inputs / "a.jpg", inputs / "broken.jpg", "--output_dir", tmp_path)
    out = capsys.readouterr().out
    assert "warning: skipping: cannot read image" in out and "broken.jpg" in out
    assert "skipped 1 unreadable inputs" in out
    assert (tmp_path / "a.jpg").is_file()


def test_files_of_other_types_in_a_folder_are_one_counted_warning(everything, capsys, checkpoint, inputs,
                                                                   tmp_path):
    _predict(checkpoint, inputs, "--output_dir", tmp_path)
    assert "warning: skipped 1 files of types neither image nor video in the input folders (.txt 1)" in (
        capsys.readouterr().out)


def test_a_missing_input_stops_in_one_line_before_the_checkpoint_is_read(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        predict.main(["--resume", str(tmp_path / "none.pth"), str(tmp_path / "typo.jpg"), "--output_dir",
                      str(tmp_path / "out")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"predict.py: error: INPUT {tmp_path / 'typo.jpg'}: no such file or folder")


def test_nothing_readable_is_a_data_error(checkpoint, inputs, tmp_path):
    with pytest.raises(SystemExit) as info:
        _predict(checkpoint, inputs / "broken.jpg", "--output_dir", tmp_path)
    assert str(info.value.code) == "predict.py: data error: none of the 1 inputs could be read"


def test_a_videos_frames_keep_their_order_in_batches_of_one_size():
    def picture(n, h):
        return predict.Picture(predict.Input("v", "v"), n, None, torch.zeros(3, h, 8), frame=n)

    got = [[p.frame for p in b] for b in predict.batches_in_order(
        (picture(i, h) for i, h in enumerate([10, 10, 10, 20, 10])), batch_size=2)]
    assert got == [[0, 1], [2], [3], [4]]
