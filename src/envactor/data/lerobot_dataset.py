"""Read LeRobot datasets (v3.0 and v2.1) from disk: numeric columns, video and image cameras.

``LeRobotDataset(root)`` offers what envactor's training and statistics need:

- ``episode(i, keys)``: a whole episode as ``{key: (T, ...) array}``; cameras come out as
  ``uint8 (T, H, W, 3)``, decoded by seeking to the episode in its video file;
- ``frames(indices, keys)``: random access by global frame index (grouped by episode, so one
  seek per episode and camera);
- ``stats()``: ``meta/stats.json`` as arrays; ``tasks`` and each frame's ``task_index``.

Only local files are read: no hub, no network.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envactor.data.format import DatasetError, Feature, require_pyarrow
from envactor.data.lerobot_format import EpisodeLocation, LeRobotMeta
from envactor.data.video import TIMESTAMP_TOLERANCE_S, VideoReaders
from envactor.values import first_bad_value

__all__ = ["INDEX_KEYS", "LeRobotDataset"]

INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
NAN_OK = ("next.reward",)  # NaN there means "not recorded"


class LeRobotDataset:
    """A LeRobot dataset on disk, read lazily (metadata at open, files on demand).

    Args:
        root: the dataset folder (holding ``meta/info.json``).
        tolerance_s: how far a frame's timestamp may be from the video frame decoded for it.
        max_open_videos: video files kept open between reads.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        tolerance_s: float = TIMESTAMP_TOLERANCE_S,
        max_open_videos: int = 16,
    ) -> None:
        require_pyarrow()
        self.meta = LeRobotMeta(root)
        self.root, self.info, self.info_path = self.meta.root, self.meta.info, self.meta.info_path
        self.fps, self.tasks = self.meta.fps, self.meta.tasks
        self.tolerance_s = tolerance_s
        self._episodes = self.meta.episodes
        self.episode_lengths = np.array([e.length for e in self._episodes], dtype=np.int64)
        self.episode_starts = np.array([e.start for e in self._episodes], dtype=np.int64)
        self._videos = VideoReaders(max_open_videos)
        self._tables: OrderedDict[Path, tuple[Any, np.ndarray]] = OrderedDict()
        self._columns: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._column_bytes = 0
        self.column_cache_bytes = 256 << 20  # numeric columns kept in memory between reads
        self.features = self._resolve_scalar_shapes(dict(self.meta.features))

    # ---------------------------------------------------------------- description
    @property
    def num_episodes(self) -> int:
        """Number of episodes."""
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        """Frames over all episodes."""
        return int(self.episode_lengths.sum())

    @property
    def camera_keys(self) -> list[str]:
        """Camera features (video or image), each read as ``uint8 (H, W, 3)`` per frame."""
        return list(self.meta.visual_keys)

    @property
    def data_keys(self) -> list[str]:
        """Features other than the index columns: observations, action, rewards, ..."""
        return [k for k in self.features if k not in INDEX_KEYS]

    @property
    def task(self) -> str:
        """The first task (datasets of one task); see ``tasks`` for all."""
        return self.tasks[0] if self.tasks else ""

    def episode_tasks(self, i: int) -> tuple[str, ...]:
        """The tasks of episode ``i`` as listed in the episode metadata."""
        return self._episodes[i].tasks

    def episode_path(self, i: int) -> Path:
        """The data file holding episode ``i`` (with other episodes, in v3.0)."""
        return self._episodes[i].data_file

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """The dataset's normalization stats per feature (``meta/stats.json``)."""
        return self.meta.stats()

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset({str(self.root)!r}, {self.meta.version}, episodes="
            f"{self.num_episodes}, frames={self.num_frames}, fps={self.fps:g}, "
            f"cameras={self.camera_keys})"
        )

    def close(self) -> None:
        """Close open video files and drop cached data files."""
        self._videos.close()
        self._tables.clear()
        self._columns.clear()
        self._column_bytes = 0

    # ---------------------------------------------------------------- reading
    def episode(self, i: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as ``{key: (T, *shape) array}`` (every feature, or ``keys``)."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: dataset has {self.num_episodes}")
        return self._read(self._episodes[i], None, self._check_keys(keys))

    def iter_episodes(self, keys: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Every episode in order."""
        for i in range(self.num_episodes):
            yield self.episode(i, keys)

    def frames(
        self, indices: Sequence[int] | np.ndarray, keys: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Frames at global ``indices`` stacked as ``{key: (N, *shape)}``, in the given order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_frames):
            raise IndexError(f"frame indices must be in [0, {self.num_frames}), got {idx}")
        wanted = self._check_keys(keys)
        eps = np.searchsorted(self.episode_starts, idx, side="right") - 1
        parts: dict[str, np.ndarray] = {}
        for e in np.unique(eps):
            sel = np.flatnonzero(eps == e)
            loc = self._episodes[int(e)]
            got = self._read(loc, idx[sel] - loc.start, wanted)
            for k, v in got.items():
                if k not in parts:
                    parts[k] = np.empty((len(idx), *v.shape[1:]), dtype=v.dtype)
                parts[k][sel] = v
        return parts

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """One frame by global index (arrays without the leading batch dimension)."""
        return {k: v[0] for k, v in self.frames([index]).items()}

    def validate(self) -> None:
        """Read every episode in full (cameras included); raises at the first problem."""
        for i in range(self.num_episodes):
            self.episode(i)

    # ---------------------------------------------------------------- internals
    def _check_keys(self, keys: Sequence[str] | None) -> list[str]:
        wanted = list(self.features) if keys is None else list(keys)
        unknown = [k for k in wanted if k not in self.features]
        if unknown:
            raise DatasetError(f"keys {unknown} not in {self.info_path} features {self.data_keys}")
        return wanted

    def _read(
        self, loc: EpisodeLocation, frames: np.ndarray | None, keys: list[str]
    ) -> dict[str, np.ndarray]:
        videos = [k for k in keys if k in self.meta.video_keys]
        columns = [k for k in keys if k not in videos]
        need = list(dict.fromkeys([*columns, "frame_index", *(["timestamp"] if videos else [])]))
        rows = self._rows(loc, need)
        if frames is not None:
            rows = {k: v[frames] for k, v in rows.items()}
        out = {k: rows[k] for k in columns}
        for key in videos:
            path, t0 = loc.videos[key]
            stamps = t0 + rows["timestamp"].astype(np.float64)
            out[key] = self._videos.get(path).frames(stamps, tolerance_s=self.tolerance_s)
            if out[key].shape[1:] != self.features[key].shape:
                raise DatasetError(
                    f"{path}: frames are {out[key].shape[1:]}, {self.info_path} declares "
                    f"{key!r} as {self.features[key].shape}"
                )
        return out

    def _rows(self, loc: EpisodeLocation, keys: list[str]) -> dict[str, np.ndarray]:
        """Columns ``keys`` of episode ``loc``, cached (numeric columns are small)."""
        missing = [k for k in keys if (loc.index, k) not in self._columns]
        if missing:
            table, index = self._table(loc)
            rows = np.flatnonzero((index >= loc.start) & (index < loc.start + loc.length))
            if len(rows) != loc.length:
                raise DatasetError(
                    f"{loc.data_file}: episode {loc.index} should have {loc.length} rows with "
                    f"index {loc.start}..{loc.start + loc.length - 1}, found {len(rows)}"
                )
            contiguous = rows[-1] - rows[0] + 1 == len(rows)
            part = table.slice(int(rows[0]), len(rows)) if contiguous else table.take(rows)
            for k in missing:
                values = self._column(part, k, loc)
                if k == "frame_index" and not np.array_equal(values, np.arange(loc.length)):
                    raise DatasetError(
                        f"{loc.data_file}: episode {loc.index}: expected frame_index "
                        f"0..{loc.length - 1}"
                    )
                if values.dtype.kind == "f":
                    bad = first_bad_value(values, allow_nan=k in NAN_OK)
                    if bad is not None:
                        raise DatasetError(
                            f"{loc.data_file} (episode {loc.index}), frame {bad.row}: key "
                            f"{k!r}{bad.dim}: {bad.expected()}"
                        )
                values.setflags(write=False)
                if k in self.meta.image_keys:  # decoded images: too big to keep
                    return {**self._rows(loc, [j for j in keys if j != k]), k: values}
                self._cache_column((loc.index, k), values)
        return {k: self._columns[(loc.index, k)] for k in keys}

    def _cache_column(self, key: tuple[int, str], values: np.ndarray) -> None:
        self._columns[key] = values
        self._column_bytes += values.nbytes
        while self._column_bytes > self.column_cache_bytes and len(self._columns) > 1:
            _, dropped = self._columns.popitem(last=False)
            self._column_bytes -= dropped.nbytes

    def _table(self, loc: EpisodeLocation) -> tuple[Any, np.ndarray]:
        """The data file holding ``loc`` (two kept open) and its global ``index`` column."""
        path = loc.data_file
        cached = self._tables.pop(path, None)
        if cached is None:
            pa = require_pyarrow()
            if not path.is_file():
                raise DatasetError(f"{path}: data file missing (episode {loc.index})")
            try:
                table = pa.parquet.read_table(
                    path, memory_map=True, page_checksum_verification=True
                )
            except (pa.ArrowException, OSError) as e:
                raise DatasetError(f"{path}: not a readable Parquet file: {e}") from e
            if "index" in table.column_names:
                index = np.asarray(table.column("index").to_numpy(), dtype=np.int64)
            elif not self.meta.is_v3:  # a v2 file is one episode: its rows are its frames
                index = np.arange(table.num_rows, dtype=np.int64) + loc.start
            else:
                raise DatasetError(f"{path}: no 'index' column")
            cached = (table, index)
            while len(self._tables) >= 2:
                self._tables.popitem(last=False)
        self._tables[path] = cached
        return cached

    def _column(self, table: Any, key: str, loc: EpisodeLocation) -> np.ndarray:
        if key not in table.column_names:
            raise DatasetError(f"{loc.data_file}: no column {key!r} (declared in {self.info_path})")
        col = table.column(key)
        n = table.num_rows
        if key in self.meta.image_keys:
            return _decode_images(col, n, self.features[key], f"{loc.data_file}: {key!r}")
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if arr.null_count:
            raise DatasetError(f"{loc.data_file}: column {key!r} has {arr.null_count} nulls")
        while hasattr(arr, "flatten") and arr.type.num_fields == 1:
            arr = arr.flatten()
        values: np.ndarray = arr.to_numpy(zero_copy_only=False)
        feat = self.features[key]
        if values.size != n * int(np.prod(feat.shape, dtype=np.int64)):
            raise DatasetError(
                f"{loc.data_file}: column {key!r} holds {values.size} values for {n} rows, "
                f"expected shape {list(feat.shape)} per row"
            )
        return values.reshape(n, *feat.shape).astype(feat.dtype, copy=False)

    def _resolve_scalar_shapes(self, features: dict[str, Feature]) -> dict[str, Feature]:
        """Shape-[1] features: scalars ``()`` for index and ``next.*`` columns, ``(1,)`` else.

        LeRobot declares every scalar as shape [1] and stores shape-[1] features as plain
        columns, so the declaration cannot tell a scalar from a 1-vector; envactor reads the
        bookkeeping columns as scalars and everything else (a 1-D action, say) as declared.
        """
        for key in self.meta.scalar_declared:
            if key in INDEX_KEYS or key.startswith("next."):
                features[key] = Feature((), features[key].dtype)
        return features


def _decode_images(col: Any, n: int, feat: Feature, where: str) -> np.ndarray:
    """Image columns (``struct<bytes, path>`` of PNG/JPEG) -> ``uint8 (n, H, W, 3)``."""
    from PIL import Image

    out = np.empty((n, *feat.shape), dtype=np.uint8)
    for j, item in enumerate(col.to_pylist()):
        data = item.get("bytes") if isinstance(item, dict) else None
        if not data:
            raise DatasetError(f"{where}: row {j} has no embedded image bytes")
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("RGB"))
        if arr.shape != feat.shape:
            raise DatasetError(f"{where}: row {j} is {arr.shape}, expected {feat.shape}")
        out[j] = arr
    return out
