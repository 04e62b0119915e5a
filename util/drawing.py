"""Drawing a detector's output on the image it saw: boxes with class names and scores, panoptic segments.

The one drawing path of the tools (tools/predict.py, and tools/visualize.py through it). Boxes are xyxy
pixels of the image drawn on; line width and text grow with the image, so that a label stays readable
on a 4000-pixel photo as on a 200-pixel one.
"""
from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from util.panoptic import rgb2id

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]


def label_text(label: int, score: float, names: Mapping[int, str] | None) -> str:
    """'<class name> <score>' (the category id where the classes have no name)."""
    name = names.get(label) if names else None
    return f"{name if name is not None else label} {score:.2f}"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def draw(image: Image.Image, detections: Mapping[str, torch.Tensor],
         names: Mapping[int, str] | None = None) -> Image.Image:
    """A copy of ``image`` with every detection drawn: its box in its class's colour and, above it,
    ``label_text``. detections: ``scores`` (k,), ``labels`` (k,), ``boxes`` (k, 4) xyxy in pixels of
    ``image`` (``PostProcess``'s output, filtered by the caller)."""
    image = image.convert("RGB")  # a copy, also where the image already is RGB
    canvas = ImageDraw.Draw(image)
    shorter = min(image.size)
    width = max(2, round(shorter / 400))
    font = _font(max(11, round(shorter / 40)))
    for box, label, score in zip(detections["boxes"].tolist(), detections["labels"].tolist(),
                                 detections["scores"].tolist()):
        colour = PALETTE[label % len(PALETTE)]
        canvas.rectangle(box, outline=colour, width=width)
        text = label_text(label, score, names)
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left + 2 * width, bottom - top + 2 * width  # with a margin of `width`
        # above the box and inside the image; under the box's top edge where there is no room above it
        x0 = min(max(box[0], 0), max(image.width - text_w, 0))
        y0 = box[1] - text_h if box[1] >= text_h else max(box[1], 0) + width
        canvas.rectangle((x0, y0, x0 + text_w, y0 + text_h), fill=colour)
        canvas.text((x0 + width - left, y0 + width - top), text, fill=(255, 255, 255), font=font)
    return image


def draw_panoptic(image: Image.Image, result: Mapping, alpha: float = 0.55) -> Image.Image:
    """The segments of a ``PostProcessPanoptic`` result (PNG of ids at the image's size) blended
    over ``image``, one palette colour per segment; VOID pixels are left as they are."""
    with Image.open(io.BytesIO(result["png_string"])) as png:
        ids = rgb2id(np.asarray(png.convert("RGB")))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    if ids.shape != pixels.shape[:2]:
        raise ValueError(f"draw_panoptic: segment ids of size {ids.shape} for an image of size "
                         f"{pixels.shape[:2]}")
    for seg in result["segments_info"]:
        where = ids == seg["id"]
        colour = np.asarray(PALETTE[(seg["id"] - 1) % len(PALETTE)], dtype=np.float32)
        pixels[where] = (1 - alpha) * pixels[where] + alpha * colour
    return Image.fromarray(pixels.round().astype(np.uint8))
