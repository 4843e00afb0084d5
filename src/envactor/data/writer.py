"""``DatasetWriter``: episodes to Parquet files plus metadata, published atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from envactor.data.format import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_FILE,
    INDEX_COLUMNS,
    INDEX_FEATURES,
    INFO_FILE,
    TASKS_FILE,
    DatasetError,
    Feature,
    envactor_version,
    episode_relpath,
    require_pyarrow,
)
from envactor.fsio import fsync_path as _fsync
from envactor.fsio import write_text as _write_text

__all__ = ["DatasetWriter"]


def _to_arrow(values: np.ndarray, feature: Feature) -> Any:
    pa = require_pyarrow()
    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    for n in reversed(feature.shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, n)
    return arr


class DatasetWriter:
    """Write episodes to a new dataset directory; ``close()`` publishes it atomically.

    Files go to a hidden temporary sibling of ``root``, renamed into place by ``close()``; an
    exception inside ``with DatasetWriter(...)`` (or ``abort()``) deletes it and leaves ``root``
    as it was. ``features`` maps column names to ``Feature``/``FeatureSpec``/``{"shape", "dtype"}``
    and must include ``"action"``; ``reward`` (float32, NaN when not given) and ``done`` (bool,
    default: True on the last frame only) are always present.
    """

    def __init__(
        self,
        root: str | Path,
        features: Mapping[str, Any],
        fps: float,
        *,
        task: str = "",
        robot_type: str | None = None,
        overwrite: bool = False,
    ) -> None:
        require_pyarrow()
        self.root = Path(root)
        self.overwrite = overwrite
        self._check_target()
        if not fps > 0:
            raise DatasetError(f"{self.root}: fps must be > 0, got {fps}")
        feats = {k: Feature.of(v, f"features[{k!r}]") for k, v in features.items()}
        reserved = sorted(set(feats) & set(INDEX_COLUMNS))
        if reserved:
            raise DatasetError(f"features {reserved} are written by DatasetWriter; remove them")
        if "action" not in feats:
            raise DatasetError(f"features must include 'action'; got {sorted(feats)}")
        for key, default in DEFAULT_FEATURES.items():
            if feats.setdefault(key, default).shape != ():
                raise DatasetError(f"features[{key!r}]: expected shape (), got {feats[key].shape}")
        self.features = feats
        self.fps = float(fps)
        self.task, self.robot_type = task, robot_type
        self.lengths: list[int] = []
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._tmp: Path | None = Path(
            tempfile.mkdtemp(prefix=f".{self.root.name}.tmp-", dir=self.root.parent)
        )

    def _check_target(self) -> None:
        if self.root.exists() and not self.overwrite:
            raise DatasetError(f"{self.root}: already exists; pass overwrite=True to replace it")

    @property
    def num_frames(self) -> int:
        """Frames written so far."""
        return sum(self.lengths)

    def add_episode(self, episode: Mapping[str, Any]) -> int:
        """Write one episode ``{key: (T, *shape) array}``; returns its episode index."""
        if self._tmp is None:
            raise DatasetError(f"{self.root}: writer is closed")
        index = len(self.lengths)
        where = f"episode {index}"
        unknown = sorted(set(episode) - set(self.features))
        if unknown:
            raise DatasetError(f"{where}: unknown keys {unknown}; declared {sorted(self.features)}")
        missing = sorted(set(self.features) - set(episode) - set(DEFAULT_FEATURES))
        if missing:
            raise DatasetError(f"{where}: missing keys {missing}")
        arrays: dict[str, np.ndarray] = {}
        lengths: dict[str, int] = {}
        for key, value in episode.items():
            arrays[key] = self._checked(where, key, np.asarray(value))
            lengths[key] = arrays[key].shape[0]
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise DatasetError(
                f"{where}: every key needs the same number T > 0 of frames: {lengths}"
            )
        n = next(iter(lengths.values()))
        if "reward" not in arrays:
            arrays["reward"] = np.full(n, np.nan, dtype=np.float32)
        if "done" not in arrays:
            arrays["done"] = np.arange(n) == n - 1
        frame = np.arange(n, dtype=np.int64)
        arrays["episode_index"] = np.full(n, index, dtype=np.int64)
        arrays["frame_index"] = frame
        arrays["index"] = frame + self.num_frames
        arrays["timestamp"] = (frame / self.fps).astype(np.float32)
        feats = {**self.features, **INDEX_FEATURES}
        pa = require_pyarrow()
        table = pa.table({k: _to_arrow(arrays[k], feats[k]) for k in feats})
        path = self._tmp / episode_relpath(index, CHUNKS_SIZE)
        path.parent.mkdir(parents=True, exist_ok=True)
        pa.parquet.write_table(table, path, write_page_checksum=True)
        self.lengths.append(n)
        return index

    def _checked(self, where: str, key: str, arr: np.ndarray) -> np.ndarray:
        feat = self.features[key]
        if arr.ndim != 1 + len(feat.shape) or tuple(arr.shape[1:]) != feat.shape:
            raise DatasetError(
                f"{where}: {key!r} expected shape (T, {', '.join(map(str, feat.shape))}), "
                f"got {arr.shape}"
            )
        want = np.dtype(feat.dtype)
        if not np.can_cast(arr.dtype, want, casting="same_kind"):
            raise DatasetError(f"{where}: {key!r} expected dtype {want}, got {arr.dtype}")
        return arr.astype(want, copy=False)

    def info(self) -> dict[str, Any]:
        """The ``meta/info.json`` contents for the episodes written so far."""
        n_eps = len(self.lengths)
        feats = {**self.features, **INDEX_FEATURES}
        return {
            "codebase_version": CODEBASE_VERSION,
            "envactor_version": envactor_version(),
            "robot_type": self.robot_type,
            "task": self.task,
            "fps": self.fps,
            "total_episodes": n_eps,
            "total_frames": self.num_frames,
            "total_tasks": 1,
            "total_chunks": (n_eps + CHUNKS_SIZE - 1) // CHUNKS_SIZE,
            "chunks_size": CHUNKS_SIZE,
            "splits": {"train": f"0:{n_eps}"},
            "data_path": DATA_PATH,
            "features": {k: f.to_json() for k, f in feats.items()},
        }

    def close(self) -> Path:
        """Write the metadata and rename the dataset into place; returns ``root``."""
        if self._tmp is None:
            raise DatasetError(f"{self.root}: writer is already closed")
        tmp = self._tmp
        try:
            if not self.lengths:
                raise DatasetError(f"{self.root}: no episodes were added")
            _write_text(tmp / INFO_FILE, json.dumps(self.info(), indent=2) + "\n")
            lines = [
                json.dumps({"episode_index": i, "length": n, "tasks": [self.task]})
                for i, n in enumerate(self.lengths)
            ]
            _write_text(tmp / EPISODES_FILE, "\n".join(lines) + "\n")
            _write_text(tmp / TASKS_FILE, json.dumps({"task_index": 0, "task": self.task}) + "\n")
            for path in tmp.rglob("*.parquet"):
                _fsync(path)
            self._check_target()
            aside = self.root.with_name(f".{self.root.name}.old")
            if self.root.exists():
                shutil.rmtree(aside, ignore_errors=True)
                os.rename(self.root, aside)
            os.rename(tmp, self.root)
            shutil.rmtree(aside, ignore_errors=True)
            _fsync(self.root.parent)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        return self.root

    def abort(self) -> None:
        """Discard everything written; ``root`` is left untouched."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> DatasetWriter:
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
