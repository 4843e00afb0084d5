"""Episode datasets on disk: Parquet files plus JSON metadata, modeled on the LeRobot v2 layout.

    root/
      meta/info.json          format version, fps, totals, path template, every column's shape/dtype
      meta/episodes.jsonl     one line per episode: {"episode_index", "length", "tasks"}
      meta/tasks.jsonl        one line per task: {"task_index", "task"}
      data/chunk-000/episode_000000.parquet   one file per episode, one row per frame

A feature of shape ``()`` is a plain column; any other shape is a nested Arrow
``fixed_size_list`` (shape ``(2, 3)`` -> ``fixed_size_list<fixed_size_list<float>[3]>[2]``), so the
files describe themselves. pyarrow is an optional dependency (``envactor[data]``) and is imported
only when a dataset is written or read. No pickle anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envactor.data.format import (
    CODEBASE_VERSION,
    EPISODES_FILE,
    INDEX_COLUMNS,
    INFO_FILE,
    INFO_KEYS,
    DatasetError,
    Feature,
    episode_relpath,
    read_json,
    require_pyarrow,
)

__all__ = ["EpisodeDataset"]


class EpisodeDataset:
    """Read a dataset written by ``DatasetWriter``: metadata now, each episode file on demand.

    Opening checks ``meta/info.json`` and ``meta/episodes.jsonl``; ``episode(i)`` reads one
    Parquet file (memory-mapped, page checksums verified) and checks its columns against the
    declared features, its row count against the episode length and its index columns. Anything
    wrong raises ``DatasetError`` naming the file and the column.
    """

    def __init__(self, root: str | Path) -> None:
        require_pyarrow()
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such dataset directory")
        self.info_path = self.root / INFO_FILE
        self.info = self._parse_info()
        self.features: dict[str, Feature] = {
            k: Feature.of(v, f"{self.info_path}: features[{k!r}]")
            for k, v in self.info["features"].items()
        }
        required = ["action", "done", *INDEX_COLUMNS]
        missing = [k for k in required if k not in self.features]
        if missing:
            raise DatasetError(f"{self.info_path}: features is missing required columns {missing}")
        self.fps = float(self.info["fps"])
        self.task = str(self.info.get("task", ""))
        self.episode_lengths = self._parse_episodes()
        self.episode_starts = np.concatenate([[0], np.cumsum(self.episode_lengths)[:-1]])

    def _parse_info(self) -> dict[str, Any]:
        info = read_json(self.info_path)
        where = self.info_path
        if not isinstance(info, dict):
            raise DatasetError(f"{where}: expected a JSON object, found {type(info).__name__}")
        missing = [k for k in INFO_KEYS if k not in info]
        if missing:
            raise DatasetError(f"{where}: missing keys {missing}")
        version = info["codebase_version"]
        if version != CODEBASE_VERSION:
            hint = (
                " (a LeRobot dataset? see docs/training.md)" if str(version).startswith("v") else ""
            )
            raise DatasetError(
                f"{where}: codebase_version: expected {CODEBASE_VERSION!r}, found {version!r}{hint}"
            )
        for key in ("total_episodes", "total_frames", "chunks_size"):
            if not isinstance(info[key], int) or info[key] < 1:
                raise DatasetError(
                    f"{where}: {key}: expected a positive integer, found {info[key]!r}"
                )
        if not isinstance(info["fps"], int | float) or not info["fps"] > 0:
            raise DatasetError(f"{where}: fps: expected a positive number, found {info['fps']!r}")
        if not isinstance(info["features"], dict):
            raise DatasetError(f"{where}: features: expected an object of column -> shape/dtype")
        return info

    def _parse_episodes(self) -> np.ndarray:
        path = self.root / EPISODES_FILE
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DatasetError(f"{path}: missing (episode lengths)") from None
        lengths: list[int] = []
        for lineno, line in enumerate((ln for ln in lines if ln.strip()), start=1):
            try:
                entry = json.loads(line)
                index, length = entry["episode_index"], entry["length"]
            except (ValueError, KeyError, TypeError) as e:
                raise DatasetError(
                    f"{path}:{lineno}: expected {{episode_index, length}}: {e}"
                ) from e
            if index != len(lengths) or not isinstance(length, int) or length < 1:
                raise DatasetError(
                    f"{path}:{lineno}: expected episode_index {len(lengths)} with a positive "
                    f"length, found episode_index {index!r}, length {length!r}"
                )
            lengths.append(length)
        n_eps, n_frames = self.info["total_episodes"], self.info["total_frames"]
        if len(lengths) != n_eps or sum(lengths) != n_frames:
            raise DatasetError(
                f"{path}: lists {len(lengths)} episodes / {sum(lengths)} frames, but "
                f"{self.info_path} says total_episodes={n_eps}, total_frames={n_frames}"
            )
        return np.asarray(lengths, dtype=np.int64)

    # ---------------------------------------------------------------- queries
    @property
    def num_episodes(self) -> int:
        """Number of episodes."""
        return len(self.episode_lengths)

    @property
    def num_frames(self) -> int:
        """Total number of frames over all episodes."""
        return int(self.episode_lengths.sum())

    @property
    def data_keys(self) -> list[str]:
        """Feature columns other than the index columns (observations, action, reward, done)."""
        return [k for k in self.features if k not in INDEX_COLUMNS]

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset({str(self.root)!r}, episodes={self.num_episodes}, "
            f"frames={self.num_frames}, fps={self.fps:g}, keys={self.data_keys})"
        )

    def episode_path(self, i: int) -> Path:
        """Path of episode ``i``'s Parquet file."""
        tmpl = str(self.info["data_path"])
        return self.root / episode_relpath(i, int(self.info["chunks_size"]), tmpl)

    # ---------------------------------------------------------------- reading
    def episode(self, i: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as ``{key: (T, *shape) array}`` (all columns, or ``keys``).

        Arrays may be read-only views of the file's memory map; copy before writing to them.
        """
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: dataset has {self.num_episodes}")
        wanted = list(self.features) if keys is None else list(keys)
        unknown = [k for k in wanted if k not in self.features]
        if unknown:
            raise DatasetError(f"keys {unknown} not in {self.info_path} features {self.data_keys}")
        path = self.episode_path(i)
        n = int(self.episode_lengths[i])
        columns = list(dict.fromkeys([*wanted, "episode_index", "frame_index"]))
        table = self._read(i, path, n, columns)
        out = {k: self._column(table.column(k), k, n, path) for k in columns}
        if np.any(out["episode_index"] != i) or np.any(out["frame_index"] != np.arange(n)):
            raise DatasetError(
                f"{path}: expected episode_index {i} and frame_index 0..{n - 1} on every row"
            )
        return {k: out[k] for k in wanted}

    def iter_episodes(self, keys: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Every episode in order (one file in memory at a time)."""
        for i in range(self.num_episodes):
            yield self.episode(i, keys)

    def validate(self) -> None:
        """Read every episode in full; raises ``DatasetError`` at the first problem."""
        for i in range(self.num_episodes):
            self.episode(i)

    def _read(self, i: int, path: Path, n: int, columns: list[str]) -> Any:
        pa = require_pyarrow()
        if not path.is_file():
            raise DatasetError(f"{path}: missing (episode {i} is listed in {EPISODES_FILE})")
        try:
            pf = pa.parquet.ParquetFile(path, memory_map=True, page_checksum_verification=True)
            schema = pf.schema_arrow
        except (pa.ArrowException, OSError) as e:
            raise DatasetError(f"{path}: not a readable Parquet file (truncated?): {e}") from e
        extra = [k for k in schema.names if k not in self.features]
        if extra:
            raise DatasetError(f"{path}: columns {extra} are not declared in {self.info_path}")
        missing = [k for k in self.features if k not in schema.names]
        if missing:
            raise DatasetError(f"{path}: missing columns {missing} declared in {self.info_path}")
        for key, feat in self.features.items():
            found, want = schema.field(key).type, feat.arrow_type()
            if found != want:
                raise DatasetError(
                    f"{path}: column {key!r}: expected {want} (shape {list(feat.shape)}, "
                    f"{feat.dtype}) as declared in {self.info_path}, found {found}"
                )
        if pf.metadata.num_rows != n:
            raise DatasetError(
                f"{path}: expected {n} rows (episode {i} in {EPISODES_FILE}), "
                f"found {pf.metadata.num_rows}"
            )
        try:
            return pf.read(columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise DatasetError(f"{path}: cannot decode columns {columns}: {e}") from e

    def _column(self, col: Any, key: str, n: int, path: Path) -> np.ndarray:
        feat = self.features[key]
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        for _ in range(len(feat.shape) + 1):
            if arr.null_count:
                raise DatasetError(f"{path}: column {key!r} has {arr.null_count} null values")
            if _ < len(feat.shape):
                arr = arr.flatten()
        values: np.ndarray = arr.to_numpy(zero_copy_only=False)
        return values.reshape(n, *feat.shape)
