"""util/drawing.py: boxes where the detections are, labelled with class names, and panoptic segments."""
import numpy as np
import pytest
import torch
from PIL import Image

from util.drawing import PALETTE, draw, draw_panoptic, label_text


def _one(label=1, score=0.9, box=(10.0, 30.0, 40.0, 52.0)):
    return {"boxes": torch.tensor([box]), "labels": torch.tensor([label]), "scores": torch.tensor([score])}


def test_the_box_is_drawn_on_its_edges_in_its_class_colour_and_the_image_is_left_as_it_was():
    image = Image.new("RGB", (64, 60), (0, 0, 0))
    drawn = draw(image, _one())
    colour = PALETTE[1]
    assert drawn.getpixel((25, 52)) == colour  # bottom edge
    assert drawn.getpixel((40, 45)) == colour  # right edge
    assert drawn.getpixel((25, 42)) == (0, 0, 0)  # inside stays untouched
    assert drawn.getpixel((60, 58)) == (0, 0, 0)
    assert image.getpixel((25, 52)) == (0, 0, 0)  # a copy is drawn on


def _label_width(drawn: Image.Image, colour) -> int:
    """Columns of the label's background (the rows above the box at y=30)."""
    rows = np.asarray(drawn)[:28]
    return int((rows == colour).all(axis=-1).any(axis=0).sum())


def test_the_label_names_the_class_where_the_names_are_known():
    assert label_text(3, 0.456, {3: "triangle"}) == "triangle 0.46"
    assert label_text(3, 0.456, None) == "3 0.46"
    assert label_text(3, 0.456, {1: "square"}) == "3 0.46"
    image = Image.new("RGB", (200, 60), (0, 0, 0))
    named = _label_width(draw(image, _one(), {1: "a long class name"}), PALETTE[1])
    bare = _label_width(draw(image, _one()), PALETTE[1])
    assert named > bare + 40


def test_the_label_stays_inside_the_image_for_a_box_at_its_top_edge():
    drawn = np.asarray(draw(Image.new("RGB", (64, 48)), _one(box=(50.0, 0.0, 63.0, 20.0)), {1: "square"}))
    label = (drawn == PALETTE[1]).all(axis=-1)
    assert label[2:6, :50].any()  # moved left of the box's x0 and below its top edge


def test_draw_panoptic_colours_each_segment_and_leaves_void():
    from datasets.panoptic_eval import png_bytes

    ids = np.zeros((6, 8), np.int64)
    ids[:, :3], ids[:, 5:] = 1, 2  # columns 3-4 are VOID
    result = {"png_string": png_bytes(ids), "segments_info": [{"id": 1, "category_id": 7},
                                                              {"id": 2, "category_id": 1}]}
    image = Image.new("RGB", (8, 6), (100, 100, 100))
    drawn = draw_panoptic(image, result, alpha=0.5)
    for x, seg in ((0, 1), (6, 2)):
        expected = tuple(round(0.5 * 100 + 0.5 * c) for c in PALETTE[seg - 1])
        assert drawn.getpixel((x, 2)) == expected
    assert drawn.getpixel((3, 2)) == (100, 100, 100)
    with pytest.raises(ValueError, match="draw_panoptic"):
        draw_panoptic(Image.new("RGB", (9, 6)), result)
