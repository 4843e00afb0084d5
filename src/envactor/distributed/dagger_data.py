"""DAgger's datasets: the task's columns, the aggregate written and read back each iteration,
and a dataset given to start from (``--init-data``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_init_data", "read_dataset", "task_features", "task_inputs", "write_dataset"]


def task_features(spec: dict[str, Any]) -> dict[str, Any]:
    """The dataset features of a task: its observation features and ``action``."""
    feats = {k: {"shape": v["shape"], "dtype": "float32"} for k, v in spec["observation"].items()}
    feats["action"] = {"shape": [spec["action_dim"]], "dtype": "float32"}
    return feats


def write_dataset(path: Path, episodes: list[dict[str, np.ndarray]], spec: dict[str, Any]) -> None:
    """Write ``episodes`` (the task's columns and ``reward``) as a dataset at ``path``."""
    from envactor.data import DatasetWriter

    feats = task_features(spec)
    with DatasetWriter(path, feats, fps=spec["control_hz"], task=spec["env_id"],
                       overwrite=True) as writer:  # fmt: skip
        for ep in episodes:
            writer.add_episode({**{k: ep[k] for k in feats}, "next.reward": ep["reward"]})


def read_dataset(path: Path, spec: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """The task's columns of every episode at ``path`` (rewards as ``reward``)."""
    from envactor.data import EpisodeDataset

    ds = EpisodeDataset(path)
    keys = [*task_features(spec), "next.reward"]
    return [
        {("reward" if k == "next.reward" else k): v for k, v in ep.items()}
        for ep in ds.iter_episodes(keys)
    ]


def check_init_data(root: Path, spec: dict[str, Any]) -> None:
    """``root`` is a dataset with the task's observation features and action (a recording of
    ``envactor run --record``, ``envactor collect``, LeRobot's); other columns are ignored."""
    from envactor.data import open_dataset

    ds = open_dataset(root)
    want = {k: tuple(v["shape"]) for k, v in task_features(spec).items()}
    have = {k: tuple(ds.features[k].shape) for k in want if k in ds.features}
    if have != want:
        raise ValueError(
            f"init_data {root}: DAgger on {spec['env_id']} needs the features {want}; the "
            f"dataset has {have or 'none of them'} (of {sorted(ds.features)})"
        )


def task_inputs(root: Path, spec: dict[str, Any]) -> str:
    """The override that gives ``flow`` the task's observation features of ``root`` (with the
    norms ``flow``'s config gives them)."""
    from envactor.config import load_policy_config
    from envactor.data import open_dataset
    from envactor.policy.build import packaged_config
    from envactor.train.from_dataset import features_from_dataset

    declared = load_policy_config(packaged_config("flow")).params.get("input_features")
    feats = features_from_dataset(open_dataset(root), declared)
    task = {k: v for k, v in feats.items() if k in spec["observation"]}
    return f"policy.params.input_features={json.dumps(task)}"
