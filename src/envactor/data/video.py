"""MP4 video for camera features: decode frames at timestamps, encode episodes (PyAV).

Decoding seeks to the keyframe at or before the first requested timestamp and decodes forward
only as far as the last one, so reading an episode costs that episode, not the whole file (a
LeRobot v3.0 file holds many episodes back to back). Frames come out as ``uint8 (T, H, W, 3)``
RGB, converted by FFmpeg's ``rgb24`` path, the conversion LeRobot's PyAV backend uses, so the
same file decodes to the same pixels in both.

PyAV (``pip install envactor[data]``) is imported when a video is first opened.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from envactor.data.format import DatasetError

__all__ = [
    "DEFAULT_CODEC",
    "TIMESTAMP_TOLERANCE_S",
    "VideoEncoder",
    "VideoReader",
    "VideoReaders",
    "require_av",
]

# A requested timestamp matches a decoded frame when they differ by less than this (seconds):
# LeRobot's own default. Frame times in a file are exact multiples of 1/fps up to the container's
# time base, so a real frame is always well inside it.
TIMESTAMP_TOLERANCE_S = 1e-4
# Decoding on to a frame at most this many frames ahead is cheaper than seeking to a keyframe
# nearer to it: a seek flushes the decoder, whose frame threads then refill before the first
# frame comes out (seeking at every keyframe made a sequential episode read 1.6x slower).
SEEK_AFTER_FRAMES = 8
# H.264 in yuv420p: decoded by every FFmpeg build, browser and hardware decoder. LeRobot writes
# AV1 by default; envactor reads both.
DEFAULT_CODEC = "h264"


def require_av() -> Any:
    """The ``av`` (PyAV) module; a clear error when it is missing."""
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "camera features stored as video need PyAV; install it with "
            "`pip install envactor[data]`"
        ) from e
    return av


class VideoReader:
    """One open video file; ``frames(timestamps)`` decodes just the frames asked for."""

    def __init__(self, path: str | Path) -> None:
        av = require_av()
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: video file missing")
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError) as e:
            raise DatasetError(f"{self.path}: not a readable video: {e}") from e
        self._stream.thread_type = "AUTO"
        self._time_base = self._stream.time_base or Fraction(1, 1)
        self._keyframes: np.ndarray | None = None
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._seek_gap_s = SEEK_AFTER_FRAMES / float(rate) if rate else 0.0
        # One converter for the file: frame.to_ndarray(format=...) builds a new FFmpeg scaling
        # context per frame, which cost more than decoding it (same conversion, same bytes).
        self._rgb = av.video.reformatter.VideoReformatter()

    def close(self) -> None:
        """Release the file."""
        self._container.close()

    def frames(
        self, timestamps: Iterable[float], *, tolerance_s: float = TIMESTAMP_TOLERANCE_S
    ) -> np.ndarray:
        """The frames at ``timestamps`` (seconds from the file's start) as ``uint8 (T, H, W, 3)``.

        Timestamps may come in any order and repeat. A timestamp with no frame within
        ``tolerance_s`` is a ``DatasetError`` naming the file, the timestamp and the nearest
        frame time found.
        """
        av = require_av()
        query = np.asarray(list(timestamps), dtype=np.float64)
        if query.size == 0:
            raise DatasetError(f"{self.path}: no timestamps requested")
        order = np.argsort(query, kind="stable")
        wanted = query[order]
        out: list[np.ndarray | None] = [None] * len(wanted)
        nearest = np.full(len(wanted), np.inf)
        keyframes = self._keyframe_times()
        j = 0  # first timestamp not yet served
        try:
            while j < len(wanted):
                k = int(np.searchsorted(keyframes, wanted[j] + tolerance_s, side="right")) - 1
                self._seek(keyframes[k] if k >= 0 else wanted[j] - tolerance_s)
                j = self._decode_run(wanted, j, out, nearest, keyframes, tolerance_s)
        except av.FFmpegError as e:
            raise DatasetError(f"{self.path}: cannot decode near t={wanted[j]:.4f}s: {e}") from e
        missing = [k for k, img in enumerate(out) if img is None]
        if missing:
            k = missing[0]
            raise DatasetError(
                f"{self.path}: no frame within {tolerance_s}s of t={wanted[k]:.6f}s "
                f"(nearest decoded frame is {nearest[k]:.6f}s away; {len(missing)} of "
                f"{len(wanted)} timestamps unmatched)"
            )
        stacked = np.stack(out)  # type: ignore[arg-type]
        if np.all(order[1:] > order[:-1]):  # asked in time order (a whole episode): no reorder
            return stacked
        result = np.empty_like(stacked)
        result[order] = stacked
        return result

    def _decode_run(
        self,
        wanted: np.ndarray,
        j: int,
        out: list[np.ndarray | None],
        nearest: np.ndarray,
        keyframes: np.ndarray,
        tol: float,
    ) -> int:
        """Decode forward from the last seek; return the first timestamp left for a new seek.

        The run stops where seeking is cheaper than decoding on: when a keyframe lies more than
        ``SEEK_AFTER_FRAMES`` frames past the current frame and at or before the next timestamp
        wanted (never before serving ``wanted[j]``).
        """
        first = j
        for frame in self._container.decode(self._stream):
            t = float(frame.pts * self._time_base) if frame.pts is not None else float("nan")
            lo = int(np.searchsorted(wanted, t - tol, side="left"))
            hi = int(np.searchsorted(wanted, t + tol, side="right"))
            if hi > lo:
                image = self._rgb.reformat(frame, format="rgb24").to_ndarray()
                for k in range(lo, hi):
                    out[k] = image
            np.minimum(nearest, np.abs(wanted - t), out=nearest)
            j = max(j, hi)
            while j < len(wanted) and wanted[j] < t - tol:  # passed without a match
                j += 1
            if j == len(wanted):
                return j
            nxt = int(np.searchsorted(keyframes, wanted[j] + tol, side="right")) - 1
            if j > first and nxt >= 0 and keyframes[nxt] > t + tol + self._seek_gap_s:
                return j  # a keyframe much closer to the next target than where we are
        return len(wanted)  # end of stream

    def _keyframe_times(self) -> np.ndarray:
        """Times (s) of the file's keyframes, from one pass over its packets (no decoding)."""
        if self._keyframes is None:
            times = [
                float(p.pts * self._time_base)
                for p in self._container.demux(self._stream)
                if p.is_keyframe and p.pts is not None
            ]
            self._keyframes = np.asarray(sorted(times), dtype=np.float64)
        return self._keyframes

    def _seek(self, t: float) -> None:
        target = max(0, int(np.floor(t / float(self._time_base) + 1e-6)))
        self._container.seek(target, stream=self._stream, backward=True, any_frame=False)


class VideoReaders:
    """A small cache of open ``VideoReader`` s (one per file), least recently used closed first."""

    def __init__(self, max_open: int = 16) -> None:
        self.max_open = max_open
        self._open: OrderedDict[Path, VideoReader] = OrderedDict()

    def get(self, path: Path) -> VideoReader:
        """The reader of ``path``, opened on first use."""
        reader = self._open.pop(path, None)
        if reader is None:
            reader = VideoReader(path)
            while len(self._open) >= self.max_open:
                self._open.popitem(last=False)[1].close()
        self._open[path] = reader
        return reader

    def close(self) -> None:
        """Close every open file."""
        for reader in self._open.values():
            reader.close()
        self._open.clear()

    def __getstate__(self) -> dict[str, Any]:  # open files do not travel to other processes
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_open"])  # type: ignore[misc]


class VideoEncoder:
    """Append ``uint8 (H, W, 3)`` frames to one MP4 at a fixed fps; frame ``k`` is at ``k / fps``.

    Many episodes go into one file back to back (``num_frames / fps`` before ``add`` is where the
    next episode starts). Keyframes every ``gop`` frames (2, as LeRobot writes) keep seeking to
    any episode cheap. H.264 needs even width and height.
    """

    def __init__(
        self,
        path: str | Path,
        fps: int,
        height: int,
        width: int,
        *,
        codec: str = DEFAULT_CODEC,
        crf: int = 18,
        gop: int = 2,
    ) -> None:
        av = require_av()
        if codec in ("h264", "libx264", "hevc", "libx265") and (height % 2 or width % 2):
            raise DatasetError(
                f"{path}: {codec} in yuv420p needs an even frame size, found {height}x{width}"
            )
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.height, self.width = int(fps), int(height), int(width)
        self.num_frames = 0
        self._container = av.open(str(self.path), mode="w", format="mp4")
        stream = self._container.add_stream(codec, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        stream.options = {"crf": str(crf), "g": str(gop)}
        if codec in ("h264", "libx264"):
            stream.options["bf"] = "0"  # no B-frames: decode order is display order
        self._stream = stream
        self.codec = stream.codec_context.codec.canonical_name  # "h264", "av1", ...

    def add(self, frames: np.ndarray) -> None:
        """Encode ``frames`` ``(T, H, W, 3)`` (or one ``(H, W, 3)`` frame), uint8 RGB."""
        av = require_av()
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.dtype != np.uint8 or arr.shape[1:] != (self.height, self.width, 3):
            raise DatasetError(
                f"{self.path}: expected uint8 frames of shape (T, {self.height}, {self.width}, 3), "
                f"found {arr.dtype} {arr.shape}"
            )
        for image in arr:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.num_frames  # in the codec's time base, 1 / fps
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.num_frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
