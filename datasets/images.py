"""Reading an image file the way an annotation tool showed it: 8-bit RGB, in its EXIF orientation.

Three things PIL leaves to the caller:

- Pixel depth. ``convert("RGB")`` clips 16-bit grey values (mode ``I;16``, what a 16-bit PNG opens as)
  at 255, which turns the image white; such values are scaled to 8 bits (the top byte) here. Modes
  whose value range is not defined (32-bit float, 32-bit integers beyond 16 bits) stop with an error
  naming the file.
- Orientation. Phones store a JPEG's rotation in its EXIF orientation tag, and annotation tools show
  and annotate the rotated image, so the tag is applied; unless the annotation's width and height are
  those of the stored pixels and not of the rotated ones (the tool ignored the tag), in which case the
  boxes are in the stored frame and the pixels are left as stored. Callers may also keep the stored
  frame always (``orient=False``): the COCO layout does, as the public code reads COCO, whose
  annotations were drawn on the stored pixels.
- Size. An image over Pillow's decompression-bomb guard (twice ``PIL.Image.MAX_IMAGE_PIXELS``) stops
  with an error naming the file and the flag that raises the guard (``--max_image_pixels``).
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
import PIL.Image

from datasets.errors import DatasetNotFoundError, DatasetReadError

_ORIENTATION = 0x0112  # the EXIF tag
_SWAPS_AXES = (5, 6, 7, 8)  # orientations that turn the image by 90 degrees (with or without a mirror)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
# EXIF orientation -> the transpose that shows the image upright (as PIL.ImageOps.exif_transpose does;
# applied here to the converted copy, which no longer carries the tag)
_TRANSPOSE = {
    2: PIL.Image.Transpose.FLIP_LEFT_RIGHT, 3: PIL.Image.Transpose.ROTATE_180,
    4: PIL.Image.Transpose.FLIP_TOP_BOTTOM, 5: PIL.Image.Transpose.TRANSPOSE,
    6: PIL.Image.Transpose.ROTATE_270, 7: PIL.Image.Transpose.TRANSVERSE, 8: PIL.Image.Transpose.ROTATE_90,
}


def to_rgb8(img: PIL.Image.Image, path: str) -> PIL.Image.Image:
    """``img`` as 8-bit RGB, whatever its mode; DatasetReadError naming ``path`` where no 8-bit reading
    is defined."""
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise DatasetReadError(f"cannot read image {path}: 32-bit integer pixels with values "
                                   f"{values.min()}..{values.max()} have no defined 8-bit reading; "
                                   "save it as 8-bit or 16-bit")
        return PIL.Image.fromarray((values >> 8).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        raise DatasetReadError(f"cannot read image {path}: 32-bit floating-point pixels (mode F) have no "
                               "defined 8-bit reading; save it as 8-bit or 16-bit")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns on a direct conversion of a palette with transparency
    try:
        return img.convert("RGB")
    except ValueError as e:
        message = f"cannot read image {path}: mode {img.mode} has no conversion to RGB ({e})"
        raise DatasetReadError(message) from e


def exif_orientation(img: PIL.Image.Image) -> int:
    """The EXIF orientation tag (1: as stored; 2-8: mirrored and/or turned), 1 when there is none."""
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError):  # a damaged EXIF block: the pixels are still good
        return 1
    return value if value in range(1, 9) else 1


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(w, h) of an image of ``size`` once its EXIF ``orientation`` is applied."""
    return (size[1], size[0]) if orientation in _SWAPS_AXES else size


def follows_orientation(stored: tuple[int, int], orientation: int,
                        annotated: tuple[int, int] | None) -> bool:
    """Whether the boxes are in the EXIF-oriented frame: yes, as annotation tools show images, unless
    the annotation's (w, h) is the stored one and differs from the oriented one."""
    if orientation == 1:
        return False
    return not (annotated is not None and annotated == stored != oriented_size(stored, orientation))


@contextlib.contextmanager
def pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb limit set to ``max_pixels`` (0: none; None: Pillow's own) inside."""
    if max_pixels is None:
        yield
        return
    saved = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = max_pixels or None
    try:
        yield
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = saved


def _bomb_message(path: str, error: PIL.Image.DecompressionBombError) -> str:
    limit = PIL.Image.MAX_IMAGE_PIXELS
    return (f"cannot read image {path}: {error}; Pillow refuses images of more than twice "
            f"PIL.Image.MAX_IMAGE_PIXELS ({limit:,} now) as possible decompression bombs. If you trust the "
            "file, raise the limit with --max_image_pixels N (Pillow warns above N pixels and refuses "
            "above 2N; 0: no limit)")


@contextlib.contextmanager
def _opened(path: str, data: bytes | None) -> Iterator[PIL.Image.Image]:
    """The file (or its cached bytes) opened by PIL, with every failure a data error naming ``path``."""
    try:
        with PIL.Image.open(io.BytesIO(data) if data is not None else path) as img:
            yield img
    except FileNotFoundError as e:
        raise DatasetNotFoundError(f"image file not found: {path}") from e
    except PIL.Image.DecompressionBombError as e:
        raise DatasetReadError(_bomb_message(path, e)) from e
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DatasetReadError):
            raise
        raise DatasetReadError(f"cannot read image {path}: {e}") from e


def read_size(path: str, orient: bool = True) -> tuple[int, int]:
    """(w, h) of the image file as annotation tools show it (EXIF orientation applied, if ``orient``);
    reads the header only."""
    with _opened(path, None) as img:
        return oriented_size(img.size, exif_orientation(img)) if orient else img.size


def read_rgb(path: str, data: bytes | None = None, annotated_size: tuple[int, int] | None = None,
             orient: bool = True) -> PIL.Image.Image:
    """The image file (or its cached ``data``) as 8-bit RGB in the frame its boxes are in.

    ``annotated_size``: (w, h) of the image's annotation entry, which decides the frame when the EXIF
    orientation and the annotation disagree (see ``follows_orientation``); None: follow the tag.
    ``orient=False``: the stored frame, whatever the tag says."""
    with _opened(path, data) as img:
        orientation = exif_orientation(img) if orient else 1
        stored = img.size
        rgb = to_rgb8(img, path)
    if follows_orientation(stored, orientation, annotated_size):
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return rgb
