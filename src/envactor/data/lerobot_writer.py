"""Write LeRobot v3.0 datasets: many episodes per Parquet and MP4 file, metadata, stats.

``LeRobotWriter(root, features, fps)`` takes whole episodes (``{key: (T, ...) array}``) and writes

    meta/info.json, meta/stats.json, meta/tasks.parquet, meta/episodes/chunk-000/file-000.parquet
    data/chunk-XXX/file-YYY.parquet            numeric columns, one row group per episode
    videos/<camera>/chunk-XXX/file-YYY.mp4     camera features, H.264, episodes back to back

into a hidden temporary sibling of ``root`` that ``close()`` renames into place, so a crash or an
exception never leaves a half-written dataset (and an existing ``root`` is only replaced with
``overwrite=True``). LeRobot's own ``LeRobotDataset(repo_id, root=...)`` opens the result.

A camera feature is declared with dtype ``"video"`` (or as ``uint8`` of shape ``(H, W, 3)``
named ``observation.image`` or ``observation.images.<camera>``) and is given as
``uint8 (T, H, W, 3)`` RGB frames. Numeric values must be finite and fit their column's dtype
(keys in ``nan_ok`` may hold NaN: "not recorded"); stats skip NaN rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from envactor.data.columns import checked_frames, checked_values, is_camera, stored, to_arrow
from envactor.data.episode_stream import EpisodeStream
from envactor.data.format import (
    CODEBASE_VERSION,
    DatasetError,
    Feature,
    envactor_version,
    require_pyarrow,
)
from envactor.data.lerobot_format import tasks_table
from envactor.data.stats_json import EpisodeStats
from envactor.data.video import DEFAULT_CODEC, VideoEncoder
from envactor.fsio import clean_stale_temps, fsync_path, make_temp_dir, write_text

__all__ = ["EpisodeStream", "LeRobotWriter"]

CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
INDEX_FEATURES = {
    "timestamp": Feature((), "float32"),
    "frame_index": Feature((), "int64"),
    "episode_index": Feature((), "int64"),
    "index": Feature((), "int64"),
    "task_index": Feature((), "int64"),
}


def _file_location(n: int) -> tuple[int, int]:
    return n // CHUNKS_SIZE, n % CHUNKS_SIZE


class _Rolling:
    """The current file of one stream (data or one camera) and when to start the next."""

    def __init__(self, limit_mb: float) -> None:
        self.limit = limit_mb * 1e6
        self.count = 0  # files started
        self.path: Path | None = None

    def location(self) -> tuple[int, int]:
        return _file_location(self.count - 1)

    def full(self) -> bool:
        return self.path is None or (self.path.exists() and self.path.stat().st_size > self.limit)


class LeRobotWriter:
    """Write episodes as a LeRobot v3.0 dataset at ``root``; ``close()`` publishes it."""

    def __init__(
        self,
        root: str | Path,
        features: Mapping[str, Any],
        fps: int,
        *,
        task: str = "",
        robot_type: str | None = None,
        overwrite: bool = False,
        codec: str = DEFAULT_CODEC,
        data_file_mb: float = 100.0,
        video_file_mb: float = 200.0,
        nan_ok: tuple[str, ...] = (),
    ) -> None:
        pa = require_pyarrow()
        self.root = Path(root)
        self.overwrite = overwrite
        self._check_target()
        if isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0:
            raise DatasetError(f"{self.root}: fps must be a positive number, got {fps!r}")
        if float(fps) != int(fps):
            raise DatasetError(f"{self.root}: LeRobot datasets need an integer fps, got {fps}")
        self.fps = int(fps)
        self.cameras: dict[str, Feature] = {}
        self.features: dict[str, Feature] = {}
        for key, spec in features.items():
            if key in INDEX_FEATURES:
                raise DatasetError(f"features[{key!r}] is written by the writer; remove it")
            if is_camera(key, spec):
                shape = spec["shape"] if isinstance(spec, Mapping) else spec.shape
                self.cameras[key] = Feature.of({"shape": shape, "dtype": "uint8"}, key)
            else:
                self.features[key] = Feature.of(spec, f"features[{key!r}]")
        if "action" not in self.features:
            raise DatasetError(f"features must include 'action'; got {sorted(features)}")
        self.task, self.robot_type, self.codec = task, robot_type, codec
        self.nan_ok: set[str] = set(nan_ok)
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.num_frames = 0
        self.root.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(self.root.parent)
        self._tmp: Path | None = make_temp_dir(self.root)
        self._data = _Rolling(data_file_mb)
        self._parquet: Any = None
        self._schema = pa.schema(
            [(k, stored(f).arrow_type()) for k, f in {**self.features, **INDEX_FEATURES}.items()]
        )
        self._video = {k: _Rolling(video_file_mb) for k in self.cameras}
        self._encoders: dict[str, VideoEncoder] = {}
        self._stats = EpisodeStats()
        self._stream: EpisodeStream | None = None

    def _check_target(self) -> None:
        if self.root.exists() and not self.overwrite:
            raise DatasetError(f"{self.root}: already exists (use --overwrite to replace it)")

    # ---------------------------------------------------------------- episodes
    def add_episode(self, episode: Mapping[str, Any], *, task: str | None = None) -> int:
        """Write one episode ``{key: (T, ...) array}``; returns its episode index."""
        self._require_open()
        index = len(self.episodes)
        where = f"episode {index}"
        declared = self.declared()
        unknown = sorted(set(episode) - set(declared))
        missing = sorted(set(declared) - set(episode))
        if unknown or missing:
            raise DatasetError(
                f"{where}: keys must be {sorted(declared)}; unknown {unknown}, missing {missing}"
            )
        arrays = {
            k: self._checked(where, k, np.asarray(v), declared[k]) for k, v in episode.items()
        }
        lengths = {k: v.shape[0] for k, v in arrays.items()}
        n = next(iter(lengths.values()))
        if len(set(lengths.values())) != 1 or n == 0:
            raise DatasetError(
                f"{where}: every key needs the same number T > 0 of frames: {lengths}"
            )
        spans = {}
        for key in self.cameras:
            start = self._camera_begin(key)
            self._camera_add(key, arrays[key])
            spans[key] = self._camera_span(key, start)
        return self._commit(arrays, n, task, spans)

    def declared(self) -> dict[str, Feature]:
        """Every feature an episode gives, numeric columns and cameras."""
        return {**self.features, **self.cameras}

    def _require_open(self) -> None:
        if self._tmp is None:
            raise DatasetError(f"{self.root}: writer is closed")
        if self.streaming:
            raise DatasetError(f"{self.root}: an episode stream is open; close it first")

    def _commit(
        self, arrays: dict[str, np.ndarray], n: int, task: str | None,
        spans: Mapping[str, dict[str, Any]],
    ) -> int:  # fmt: skip
        """Write the rows of one episode of ``n`` frames whose camera frames are in place
        (``spans``: each camera's file and timestamps); returns its index."""
        index = len(self.episodes)
        text = self.task if task is None else task
        task_index = self.tasks.setdefault(text, len(self.tasks))
        frame = np.arange(n, dtype=np.int64)
        arrays["timestamp"] = (frame / self.fps).astype(np.float32)
        arrays["frame_index"] = frame
        arrays["episode_index"] = np.full(n, index, dtype=np.int64)
        arrays["index"] = frame + self.num_frames
        arrays["task_index"] = np.full(n, task_index, dtype=np.int64)
        self._stats.update({k: v for k, v in arrays.items() if k not in self.cameras}, {})
        meta: dict[str, Any] = {
            "episode_index": index,
            "tasks": [text],
            "length": n,
            "dataset_from_index": self.num_frames,
            "dataset_to_index": self.num_frames + n,
        }
        meta.update(self._write_rows(arrays))
        for key in self.cameras:
            meta.update(spans[key])
        meta["meta/episodes/chunk_index"], meta["meta/episodes/file_index"] = 0, 0
        self.episodes.append(meta)
        self.num_frames += n
        return index

    def stream_episode(self, *, task: str | None = None) -> EpisodeStream:
        """An episode written frame by frame (cameras are encoded as the frames come, the
        numeric columns kept until :meth:`EpisodeStream.close`): for recording a run whose
        length is not known in advance without holding its video in memory."""
        self._require_open()
        self._stream = EpisodeStream(self, task)
        return self._stream

    @property
    def streaming(self) -> bool:
        """True while an :meth:`stream_episode` stream is open."""
        return self._stream is not None

    def _checked(self, where: str, key: str, arr: np.ndarray, feat: Feature) -> np.ndarray:
        """``arr`` as column ``key`` stores it; an error naming the frame and key if it is not
        of the feature's shape and dtype or holds a value the column cannot."""
        if key in self.cameras:
            return checked_frames(where, key, arr, feat)
        return checked_values(self.root, where, key, arr, feat, allow_nan=key in self.nan_ok)

    def _write_rows(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        pa = require_pyarrow()
        assert self._tmp is not None
        if self._data.full():
            if self._parquet is not None:
                self._parquet.close()
            self._data.count += 1
            chunk, file = self._data.location()
            self._data.path = self._tmp / DATA_PATH.format(chunk_index=chunk, file_index=file)
            self._data.path.parent.mkdir(parents=True, exist_ok=True)
            self._parquet = pa.parquet.ParquetWriter(
                self._data.path, self._schema, write_page_checksum=True
            )
        feats = {**self.features, **INDEX_FEATURES}
        columns = [to_arrow(arrays[k], stored(feats[k])) for k in feats]
        self._parquet.write_table(pa.Table.from_arrays(columns, schema=self._schema))
        chunk, file = self._data.location()
        return {"data/chunk_index": chunk, "data/file_index": file}

    def _camera_begin(self, key: str) -> float:
        """Make sure camera ``key`` has a file with room (an episode never spans two files);
        the timestamp in it where the next frame goes."""
        assert self._tmp is not None
        roll = self._video[key]
        if key not in self._encoders or roll.full():
            if key in self._encoders:
                self._encoders.pop(key).close()
            roll.count += 1
            chunk, file = roll.location()
            roll.path = self._tmp / VIDEO_PATH.format(
                video_key=key, chunk_index=chunk, file_index=file
            )
            h, w, _ = self.cameras[key].shape
            self._encoders[key] = VideoEncoder(roll.path, self.fps, h, w, codec=self.codec)
        return self._encoders[key].num_frames / self.fps

    def _camera_add(self, key: str, frames: np.ndarray) -> None:
        """Encode ``frames`` ``(T, H, W, 3)`` into camera ``key``'s file; count them in its
        stats."""
        self._encoders[key].add(frames)
        self._stats.update({key: frames}, self.cameras)

    def _camera_span(self, key: str, start: float) -> dict[str, Any]:
        """The episode metadata of camera ``key``'s frames from ``start`` to now."""
        chunk, file = self._video[key].location()
        prefix = f"videos/{key}/"
        return {
            prefix + "chunk_index": chunk,
            prefix + "file_index": file,
            prefix + "from_timestamp": start,
            prefix + "to_timestamp": self._encoders[key].num_frames / self.fps,
        }

    # ---------------------------------------------------------------- metadata
    def info(self) -> dict[str, Any]:
        """``meta/info.json`` for the episodes written so far."""
        feats: dict[str, Any] = {}
        for key, f in self.features.items():
            names = list(f.names) if f.names is not None else None
            feats[key] = {"dtype": f.dtype, "shape": list(f.shape) or [1], "names": names}
        for key, f in self.cameras.items():
            h, w, c = f.shape
            feats[key] = {
                "dtype": "video",
                "shape": [h, w, c],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": self._encoded_codec(),
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": c,
                    "has_audio": False,
                },
            }
        for key, f in INDEX_FEATURES.items():
            feats[key] = {"dtype": f.dtype, "shape": [1], "names": None}
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": self.num_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": self._data.limit / 1e6,
            "video_files_size_in_mb": next(iter(self._video.values())).limit / 1e6
            if self._video
            else 200.0,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.cameras else None,
            "features": feats,
            "envactor_version": envactor_version(),
        }

    def _encoded_codec(self) -> str:
        enc = next(iter(self._encoders.values()), None)
        return enc.codec if enc is not None else self.codec

    def close(self) -> Path:
        """Finish every file, write the metadata and rename the dataset into place."""
        if self._tmp is None:
            raise DatasetError(f"{self.root}: writer is already closed")
        tmp = self._tmp
        try:
            if self._stream is not None:
                self._stream.close()
            if not self.episodes:
                raise DatasetError(f"{self.root}: no episodes were added")
            if self._parquet is not None:
                self._parquet.close()
            for enc in self._encoders.values():
                enc.close()
            write_text(tmp / "meta" / "info.json", json.dumps(self.info(), indent=4) + "\n")
            stats = self._stats.result()
            write_text(tmp / "meta" / "stats.json", json.dumps(stats, indent=4) + "\n")
            self._write_tasks(tmp / "meta" / "tasks.parquet")
            self._write_episodes(tmp / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
            for path in tmp.rglob("*"):
                if path.is_file():
                    fsync_path(path)
            self._check_target()
            aside = self.root.with_name(f".{self.root.name}.old")
            if self.root.exists():
                shutil.rmtree(aside, ignore_errors=True)
                os.rename(self.root, aside)
            os.rename(tmp, self.root)
            shutil.rmtree(aside, ignore_errors=True)
            fsync_path(self.root.parent)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        return self.root

    def _write_tasks(self, path: Path) -> None:
        pa = require_pyarrow()
        path.parent.mkdir(parents=True, exist_ok=True)
        pa.parquet.write_table(tasks_table(list(self.tasks)), path)

    def _write_episodes(self, path: Path) -> None:
        pa = require_pyarrow()
        path.parent.mkdir(parents=True, exist_ok=True)
        pa.parquet.write_table(pa.Table.from_pylist(self.episodes), path)

    def abort(self) -> None:
        """Discard everything written; ``root`` is left untouched."""
        self._stream = None
        if self._parquet is not None:
            with contextlib.suppress(Exception):  # the files are deleted anyway
                self._parquet.close()
            self._parquet = None
        for enc in self._encoders.values():
            with contextlib.suppress(Exception):
                enc.close()
        self._encoders.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif self._tmp is not None:
            self.close()
