"""LeRobot dataset metadata (v3.0 and v2.1): features, episodes, tasks, stats, file locations.

    v3.0                                            v2.1
    meta/info.json                                  meta/info.json
    meta/stats.json                                 meta/episodes_stats.jsonl (per episode)
    meta/tasks.parquet (task -> task_index)         meta/tasks.jsonl
    meta/episodes/chunk-*/file-*.parquet            meta/episodes.jsonl
    data/chunk-*/file-*.parquet (many episodes)     data/chunk-*/episode_*.parquet (one each)
    videos/<key>/chunk-*/file-*.mp4 (many)          videos/chunk-*/<key>/episode_*.mp4 (one each)

In v3.0 an episode is the rows ``dataset_from_index <= index < dataset_to_index`` of its data file
and the span ``[from_timestamp, to_timestamp)`` of each of its video files; in v2.1 each episode
has files of its own starting at time 0. ``LeRobotMeta`` turns both into one table of
``EpisodeLocation`` s so the reader does not care which version it reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envactor.data.format import (
    DTYPES,
    DatasetError,
    Feature,
    entry_names,
    read_json,
    require_pyarrow,
)

__all__ = ["LEROBOT_VERSIONS", "EpisodeLocation", "LeRobotMeta", "tasks_table"]

LEROBOT_VERSIONS = ("v3.0", "v2.1", "v2.0")
VISUAL_DTYPES = ("video", "image")


@dataclass(frozen=True)
class EpisodeLocation:
    """Where one episode lives: its rows in a data file and its span in each video file."""

    index: int
    length: int
    start: int  # global frame index of the episode's first frame
    data_file: Path
    tasks: tuple[str, ...]
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # key -> (file, t0)


class LeRobotMeta:
    """Parsed metadata of a LeRobot dataset at ``root`` (v3.0, v2.1 or v2.0)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.info_path = self.root / "meta" / "info.json"
        info = read_json(self.info_path)
        if not isinstance(info, dict):
            raise DatasetError(f"{self.info_path}: expected a JSON object")
        self.info: dict[str, Any] = info
        self.version = str(info.get("codebase_version", ""))
        if self.version not in LEROBOT_VERSIONS:
            raise DatasetError(
                f"{self.info_path}: codebase_version: expected one of {LEROBOT_VERSIONS}, "
                f"found {self.version!r}"
            )
        for key in ("fps", "features", "data_path"):
            if key not in info:
                raise DatasetError(f"{self.info_path}: missing key {key!r}")
        fps = info["fps"]
        if not isinstance(fps, int | float) or isinstance(fps, bool) or not fps > 0:
            raise DatasetError(f"{self.info_path}: fps: expected a positive number, found {fps!r}")
        self.fps = float(fps)
        self.features, self.visual_keys, self.scalar_declared = self._parse_features()
        self.tasks = self._parse_tasks()
        self.episodes = self._parse_episodes()

    @property
    def is_v3(self) -> bool:
        """True for the v3.0 layout (many episodes per file)."""
        return self.version.startswith("v3")

    # ---------------------------------------------------------------- features
    def _parse_features(self) -> tuple[dict[str, Feature], dict[str, str], set[str]]:
        raw = self.info["features"]
        if not isinstance(raw, Mapping):
            raise DatasetError(f"{self.info_path}: features: expected an object")
        features: dict[str, Feature] = {}
        visual: dict[str, str] = {}
        scalar: set[str] = set()
        for key, spec in raw.items():
            where = f"{self.info_path}: features[{key!r}]"
            if not isinstance(spec, Mapping) or "dtype" not in spec or "shape" not in spec:
                raise DatasetError(f"{where}: expected an object with 'dtype' and 'shape'")
            dtype, shape = spec["dtype"], spec["shape"]
            if not isinstance(shape, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape
            ):
                raise DatasetError(f"{where}: shape: expected positive integers, found {shape!r}")
            if dtype in VISUAL_DTYPES:
                features[key] = Feature(_hwc_shape(spec, where), "uint8")
                visual[key] = dtype
            elif dtype in DTYPES:
                if shape == [1]:
                    scalar.add(key)  # LeRobot declares scalars as shape [1]; see the reader
                features[key] = Feature(tuple(shape), dtype, entry_names(spec, shape))
            # other dtypes (string, ...) are metadata for LeRobot's loader, not arrays
        return features, visual, scalar

    # ---------------------------------------------------------------- tasks
    def _parse_tasks(self) -> list[str]:
        pa = require_pyarrow()
        if self.is_v3:
            path = self.root / "meta" / "tasks.parquet"
            try:
                rows = pa.parquet.read_table(path).to_pylist()
            except FileNotFoundError:
                raise DatasetError(f"{path}: missing (the dataset's task list)") from None
            except (pa.ArrowException, OSError) as e:
                raise DatasetError(f"{path}: not a readable Parquet file: {e}") from e
            # written from a pandas frame indexed by the task string
            text_col = next(
                (c for c in ("task", "__index_level_0__") if rows and c in rows[0]), None
            )
            pairs = [(r.get("task_index"), r.get(text_col) if text_col else None) for r in rows]
        else:
            path = self.root / "meta" / "tasks.jsonl"
            pairs = [(r.get("task_index"), r.get("task")) for r in _read_jsonl(path)]
        tasks: dict[int, str] = {}
        for index, text in pairs:
            if not isinstance(index, int) or not isinstance(text, str):
                raise DatasetError(
                    f"{path}: expected rows of (task_index: int, task: str), found "
                    f"({index!r}, {text!r})"
                )
            tasks[index] = text
        if sorted(tasks) != list(range(len(tasks))):
            raise DatasetError(f"{path}: task indices must be 0..{len(tasks) - 1}")
        return [tasks[i] for i in range(len(tasks))]

    # ---------------------------------------------------------------- episodes
    def _parse_episodes(self) -> list[EpisodeLocation]:
        rows = self._episode_rows_v3() if self.is_v3 else self._episode_rows_v2()
        rows.sort(key=lambda r: r.get("episode_index", -1))
        where = self.root / "meta" / ("episodes/" if self.is_v3 else "episodes.jsonl")
        episodes: list[EpisodeLocation] = []
        start = 0
        for i, row in enumerate(rows):
            index, length = row.get("episode_index"), row.get("length")
            if index != i or not isinstance(length, int) or length < 1:
                raise DatasetError(
                    f"{where}: expected episode_index {i} with a positive length, found "
                    f"episode_index {index!r}, length {length!r}"
                )
            if self.is_v3:
                lo, hi = row.get("dataset_from_index"), row.get("dataset_to_index")
                if lo != start or hi != start + length:
                    raise DatasetError(
                        f"{where}: episode {i}: expected frames [{start}, {start + length}), "
                        f"found dataset_from_index={lo!r}, dataset_to_index={hi!r}"
                    )
            tasks = row.get("tasks") or []
            episodes.append(
                EpisodeLocation(
                    index=i,
                    length=length,
                    start=start,
                    data_file=self._data_file(row, i),
                    tasks=tuple(str(t) for t in tasks),
                    videos={k: self._video_file(row, i, k) for k in self.video_keys},
                )
            )
            start += length
        total = self.info.get("total_frames")
        if isinstance(total, int) and total != start:
            raise DatasetError(
                f"{self.info_path}: total_frames={total}, but the episodes hold {start} frames"
            )
        if not episodes:
            raise DatasetError(f"{where}: no episodes")
        return episodes

    @property
    def video_keys(self) -> list[str]:
        """Camera features stored as MP4 video."""
        return [k for k, kind in self.visual_keys.items() if kind == "video"]

    @property
    def image_keys(self) -> list[str]:
        """Camera features stored as encoded images inside the data files."""
        return [k for k, kind in self.visual_keys.items() if kind == "image"]

    def _episode_rows_v3(self) -> list[dict[str, Any]]:
        pa = require_pyarrow()
        folder = self.root / "meta" / "episodes"
        files = sorted(folder.glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{folder}: no episode metadata files (chunk-*/file-*.parquet)")
        wanted = ["episode_index", "length", "tasks", "dataset_from_index", "dataset_to_index"]
        wanted += ["data/chunk_index", "data/file_index"]
        for key in self.video_keys:
            wanted += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
        rows: list[dict[str, Any]] = []
        for path in files:
            try:
                pf = pa.parquet.ParquetFile(path)
                missing = [c for c in wanted if c not in pf.schema_arrow.names]
                if missing:
                    raise DatasetError(f"{path}: missing columns {missing}")
                rows += pf.read(columns=wanted).to_pylist()
            except (pa.ArrowException, OSError) as e:
                raise DatasetError(f"{path}: not a readable Parquet file: {e}") from e
        return rows

    def _episode_rows_v2(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.root / "meta" / "episodes.jsonl")

    def _data_file(self, row: Mapping[str, Any], i: int) -> Path:
        template = str(self.info["data_path"])
        try:
            if self.is_v3:
                rel = template.format(
                    chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
                )
            else:
                chunks = int(self.info.get("chunks_size", 1000))
                rel = template.format(episode_chunk=i // chunks, episode_index=i)
        except (KeyError, ValueError, IndexError) as e:
            raise DatasetError(f"{self.info_path}: data_path {template!r}: {e}") from e
        return self.root / rel

    def _video_file(self, row: Mapping[str, Any], i: int, key: str) -> tuple[Path, float]:
        template = self.info.get("video_path")
        if not isinstance(template, str):
            raise DatasetError(f"{self.info_path}: video feature {key!r} but no video_path")
        try:
            if self.is_v3:
                rel = template.format(
                    video_key=key,
                    chunk_index=row[f"videos/{key}/chunk_index"],
                    file_index=row[f"videos/{key}/file_index"],
                )
                t0 = float(row[f"videos/{key}/from_timestamp"])
            else:
                chunks = int(self.info.get("chunks_size", 1000))
                rel = template.format(episode_chunk=i // chunks, episode_index=i, video_key=key)
                t0 = 0.0
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise DatasetError(f"{self.info_path}: video_path {template!r} for {key!r}: {e}") from e
        return self.root / rel, t0

    # ---------------------------------------------------------------- stats
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """``meta/stats.json`` as arrays (v2.1 without it: episodes_stats.jsonl aggregated)."""
        path = self.root / "meta" / "stats.json"
        if path.is_file():
            raw = read_json(path)
        else:
            raw = _aggregate(_read_jsonl(self.root / "meta" / "episodes_stats.jsonl"), path)
        if not isinstance(raw, Mapping):
            raise DatasetError(f"{path}: expected an object of feature -> stats")
        out: dict[str, dict[str, np.ndarray]] = {}
        for key, stats in raw.items():
            if not isinstance(stats, Mapping):
                raise DatasetError(f"{path}: {key!r}: expected an object of stat -> values")
            try:
                arrays = {s: np.asarray(v, dtype=np.float64) for s, v in stats.items()}
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{path}: {key!r}: stats must be numbers: {e}") from e
            for s, v in arrays.items():
                if not np.all(np.isfinite(v)):
                    raise DatasetError(f"{path}: {key!r}.{s}: non-finite values")
            out[key] = arrays
        return out


def _hwc_shape(spec: Mapping[str, Any], where: str) -> tuple[int, int, int]:
    """A camera feature's ``(H, W, C)``, whichever order ``names`` declares."""
    shape, names = list(spec["shape"]), spec.get("names")
    if len(shape) != 3:
        raise DatasetError(f"{where}: a camera feature needs a 3-D shape, found {shape}")
    if isinstance(names, list) and sorted(map(str, names)) == ["channels", "height", "width"]:
        dims = dict(zip(names, shape))
        return int(dims["height"]), int(dims["width"]), int(dims["channels"])
    if shape[0] in (1, 3) and shape[2] not in (1, 3):  # (C, H, W)
        return int(shape[1]), int(shape[2]), int(shape[0])
    return int(shape[0]), int(shape[1]), int(shape[2])


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DatasetError(f"{path}:{n}: not JSON: {e}") from e
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{n}: expected an object per line")
        rows.append(row)
    return rows


def _aggregate(rows: list[dict[str, Any]], where: Path) -> dict[str, dict[str, list[float]]]:
    """Pool per-episode stats (count-weighted mean and variance, min of mins, max of maxes)."""
    per_key: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        for key, stats in (row.get("stats") or {}).items():
            per_key.setdefault(key, []).append(stats)
    out: dict[str, dict[str, list[float]]] = {}
    for key, items in per_key.items():
        try:
            n = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in items])
            mean = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in items])
            std = np.stack([np.asarray(s["std"], dtype=np.float64) for s in items])
            lo = np.stack([np.asarray(s["min"], dtype=np.float64) for s in items])
            hi = np.stack([np.asarray(s["max"], dtype=np.float64) for s in items])
        except (KeyError, ValueError) as e:
            raise DatasetError(f"{where}: per-episode stats of {key!r} unusable: {e}") from e
        w = (n / n.sum()).reshape(-1, *([1] * (mean.ndim - 1)))
        total_mean = (w * mean).sum(axis=0)
        var = (w * (std**2 + (mean - total_mean) ** 2)).sum(axis=0)
        out[key] = {
            "mean": total_mean.tolist(),
            "std": np.sqrt(var).tolist(),
            "min": lo.min(axis=0).tolist(),
            "max": hi.max(axis=0).tolist(),
            "count": [float(n.sum())],
        }
    return out


def tasks_table(tasks: list[str]) -> Any:
    """``meta/tasks.parquet``: ``task_index`` per task, the text as the (pandas) index.

    LeRobot writes it from a pandas frame indexed by the task text, so the file carries pandas'
    metadata naming ``__index_level_0__`` as the index; the same is written here by hand (no
    pandas needed) so that readers using pandas see the text as the index.
    """
    pa = require_pyarrow()
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "__index_level_0__": pa.array(tasks, pa.string()),
        }
    )
    unicode = {"pandas_type": "unicode", "numpy_type": "object"}
    meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {"name": None, "field_name": None, **unicode, "metadata": {"encoding": "UTF-8"}}
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {"name": None, "field_name": "__index_level_0__", **unicode, "metadata": None},
        ],
    }
    return table.replace_schema_metadata({"pandas": json.dumps(meta)})
