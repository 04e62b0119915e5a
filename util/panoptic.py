"""COCO panoptic PNG encoding: segment ids <-> RGB colours, PNG bytes.

Shared by the data sets (reading ground truth, writing toy data), the evaluator and the model's
panoptic post-processor, so it lives outside both ``datasets`` and ``models``.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

# Segment ids are < 256**3 (three 8-bit channels), so gt * OFFSET + pred is a unique pair code.
OFFSET = 256 ** 3


def rgb2id(color: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours of a COCO panoptic PNG -> (H, W) int64 ids, id = R + 256 G + 256^2 B."""
    if color.ndim != 3 or color.shape[2] != 3:
        raise ValueError(f"rgb2id expects an (H, W, 3) array, got shape {color.shape}")
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) integer ids -> (H, W, 3) uint8 colours; the inverse of ``rgb2id``."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= OFFSET:
        raise ValueError(f"id2rgb: segment ids must lie in [0, {OFFSET}), got [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str) -> np.ndarray:
    """Read a COCO panoptic PNG as (H, W) int64 segment ids."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"panoptic PNG not found: {path}")
    with Image.open(path) as im:
        return rgb2id(np.asarray(im.convert("RGB")))


def png_bytes(ids: np.ndarray) -> bytes:
    """Encode (H, W) segment ids as the bytes of a COCO panoptic PNG."""
    buf = io.BytesIO()
    Image.fromarray(id2rgb(ids)).save(buf, format="PNG")
    return buf.getvalue()
