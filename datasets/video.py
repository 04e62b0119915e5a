"""Video files through OpenCV (``opencv-python-headless``, which bundles FFmpeg): frames in as 8-bit RGB
PIL images, drawn frames out as an MPEG-4 file.

Reading and writing live together because they share the backend: OpenCV is imported on first use, so
that everything else runs without it, and its absence is a one-line error saying what to install.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import PIL.Image

from datasets.errors import DatasetReadError

# Containers FFmpeg reads; a folder's other files are images or skipped.
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")
# The frame rate written when a file gives none (some streams and image sequences do not).
FALLBACK_FPS = 25.0


def is_video_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise DatasetReadError("reading and writing videos needs OpenCV: python -m pip install "
                               "opencv-python-headless (listed in requirements.txt)") from e
    return cv2


class VideoReader:
    """The frames of a video file, in order: ``for frame in VideoReader(path)`` gives (w, h) RGB images.

    Opening a file FFmpeg cannot read (missing, damaged, not a video) raises DatasetReadError naming it.
    ``fps``: the file's frame rate (FALLBACK_FPS where it states none).
    """

    def __init__(self, path: str):
        cv2 = _cv2()
        self.path = path
        if not os.path.isfile(path):
            raise DatasetReadError(f"cannot read video {path}: no such file")
        self._capture = cv2.VideoCapture(path)
        if not self._capture.isOpened():
            raise DatasetReadError(f"cannot read video {path}: FFmpeg (through OpenCV) cannot open it")
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if np.isfinite(fps) and fps > 0 else FALLBACK_FPS

    def __iter__(self) -> Iterator[PIL.Image.Image]:
        cv2 = _cv2()
        try:
            while True:
                ok, bgr = self._capture.read()
                if not ok:
                    return
                yield PIL.Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            self._capture.release()


class VideoWriter:
    """Writes RGB PIL images as the frames of an MPEG-4 (``mp4v``) file at ``fps``; the frame size is the
    first frame's (a later frame of another size is resized to it). A context manager: the file is
    complete once it closes."""

    def __init__(self, path: str, fps: float):
        self.path, self.fps = path, fps
        self._writer = None

    def write(self, frame: PIL.Image.Image) -> None:
        cv2 = _cv2()
        if self._writer is None:
            self.size = frame.size
            self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, frame.size)
            if not self._writer.isOpened():
                raise OSError(f"cannot write video {self.path}: OpenCV could not open an MPEG-4 writer "
                              "for it")
        if frame.size != self.size:
            frame = frame.resize(self.size)
        self._writer.write(cv2.cvtColor(np.asarray(frame.convert("RGB")), cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
