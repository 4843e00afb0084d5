"""``open_dataset(root)``: the reader for whatever format a dataset folder holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envactor.data.format import DatasetError, read_json
from envactor.data.lerobot_dataset import LeRobotDataset
from envactor.data.lerobot_format import LEROBOT_VERSIONS

__all__ = ["Dataset", "open_dataset"]

Dataset = LeRobotDataset


def open_dataset(root: str | Path | Dataset) -> Dataset:
    """The dataset at ``root`` (LeRobot v3.0 or v2.1, by ``meta/info.json``), or ``root``."""
    if isinstance(root, LeRobotDataset):
        return root
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such dataset directory")
    info: Any = read_json(path / "meta" / "info.json")
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version == "envactor-v1":
        raise DatasetError(
            f"{path}: an envactor-v1 dataset (envactor 0.1); envactor now reads and writes "
            "LeRobot datasets: collect it again (envactor collect ... --overwrite)"
        )
    if version not in LEROBOT_VERSIONS:
        raise DatasetError(
            f"{path / 'meta' / 'info.json'}: codebase_version: expected one of "
            f"{list(LEROBOT_VERSIONS)}, found {version!r}"
        )
    return LeRobotDataset(path)
