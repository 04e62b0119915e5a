"""datasets/video.py: frames written and read back in order with their size and colours; a file that is
no video is a data error naming it."""
import numpy as np
import pytest
from PIL import Image

from datasets.errors import DatasetReadError
from datasets.video import VideoReader, VideoWriter, is_video_file

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def test_frames_come_back_in_order_at_their_size_and_rate(tmp_path):
    path = str(tmp_path / "clip.mp4")
    with VideoWriter(path, fps=7) as video:
        for colour in COLOURS:
            video.write(Image.new("RGB", (64, 48), colour))
    reader = VideoReader(path)
    frames = list(reader)
    assert reader.fps == pytest.approx(7)
    assert [f.size for f in frames] == [(64, 48)] * 3
    for frame, colour in zip(frames, COLOURS):  # lossy, but each frame keeps its colour, as RGB
        assert np.abs(np.asarray(frame, dtype=float).mean(axis=(0, 1)) - colour).max() < 12


@pytest.mark.parametrize("content", [None, b"\x00\x01 not a video at all" * 20])
def test_a_missing_or_unreadable_file_is_a_data_error_naming_it(tmp_path, content):
    path = tmp_path / "clip.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetReadError, match=f"cannot read video {path}"):
        VideoReader(str(path))


def test_video_files_are_known_by_extension():
    assert is_video_file("a/b.MP4") and is_video_file("x.mkv") and not is_video_file("x.jpg")


def test_a_frame_of_another_size_is_written_at_the_first_frames_size(tmp_path):
    path = str(tmp_path / "clip.mp4")
    with VideoWriter(path, fps=5) as video:
        video.write(Image.new("RGB", (64, 48), COLOURS[0]))
        video.write(Image.new("RGB", (32, 32), COLOURS[1]))
    assert [f.size for f in VideoReader(path)] == [(64, 48)] * 2
