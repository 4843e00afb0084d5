"""How ``VideoReader`` walks a file: one seek for a run of nearby frames, a new seek only when a
keyframe lies more than ``SEEK_AFTER_FRAMES`` frames ahead, and the same pixels either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from envactor.data.video import SEEK_AFTER_FRAMES, VideoEncoder, VideoReader

FPS = 30


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames of moving texture, H.264 with a keyframe every 2 frames (as envactor writes)."""
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    yy, xx = np.mgrid[0:32, 0:48]
    t = np.arange(60)[:, None, None]
    frames = np.stack([(xx + 5 * t) % 256, (yy * 3 + t) % 256, (xx * yy + 7 * t) % 256], -1)
    enc = VideoEncoder(path, fps=FPS, height=32, width=48)
    enc.add(frames.astype(np.uint8))
    enc.close()
    return path


def counted(path: Path) -> tuple[VideoReader, list[float]]:
    reader = VideoReader(path)
    seeks: list[float] = []
    seek = reader._seek

    def spy(t: float) -> None:
        seeks.append(t)
        seek(t)

    reader._seek = spy  # type: ignore[method-assign]
    return reader, seeks


def test_a_sequential_read_seeks_once_and_equals_any_other_read(video: Path) -> None:
    reader, seeks = counted(video)
    whole = reader.frames(np.arange(60) / FPS)
    assert whole.shape == (60, 32, 48, 3) and len(seeks) == 1
    assert len({frame.tobytes() for frame in whole}) == 60  # every frame distinct

    reader, seeks = counted(video)  # far apart: a seek to each one's keyframe
    far = [3, 3 + SEEK_AFTER_FRAMES + 4, 50]
    got = reader.frames(np.array(far[::-1]) / FPS)
    assert len(seeks) == 3
    np.testing.assert_array_equal(got, whole[far[::-1]])

    reader, seeks = counted(video)  # close together: decoding on beats seeking
    near = [10, 13, 17, 12, 10]
    got = reader.frames(np.array(near) / FPS)
    assert len(seeks) == 1
    np.testing.assert_array_equal(got, whole[near])


def test_a_fresh_reader_per_frame_gives_the_same_pixels(video: Path) -> None:
    whole = VideoReader(video).frames(np.arange(60) / FPS)
    for k in (0, 1, 29, 58, 59):
        np.testing.assert_array_equal(VideoReader(video).frames([k / FPS])[0], whole[k])
