"""Collect demonstrations: run a task's expert (a policy) through the vector actor and write the
episodes as a dataset (``envactor.data``), in episode order whatever the number of envs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envactor.policy.base import Policy
from envactor.runtime.actor import EpisodeMetrics, VectorActor
from envactor.runtime.evaluate import make_vector_env


@dataclass
class CollectResult:
    """Where the dataset went and how the expert did."""

    root: Path
    episodes: int
    frames: int
    success_rate: float | None
    return_mean: float


def collect(
    task_id: str,
    *,
    episodes: int,
    out: str | Path,
    num_envs: int = 8,
    seed: int = 0,
    policy: Policy | str | Path | None = None,
    executor: str = "sync",
    overwrite: bool = False,
    progress: bool = True,
    env_kwargs: dict[str, Any] | None = None,
) -> CollectResult:
    """Run ``policy`` (default: the task's expert) for ``episodes`` episodes and write them.

    Episode j uses env seed ``seed + j``; the dataset holds episodes in that order.
    ``env_kwargs`` go to ``gymnasium.make`` (e.g. ``action_noise_std`` of the embedded tasks).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    from envactor.data import DatasetWriter
    from envactor.envs import task_spec
    from envactor.policy.build import build_policy

    spec = task_spec(task_id)
    obs_spec = spec["observation"]
    if policy is None:
        policy = spec["expert_config"]
    if not isinstance(policy, Policy):
        policy = build_policy(policy)
    features = {k: {"shape": v["shape"], "dtype": "float32"} for k, v in obs_spec.items()}
    features["action"] = {"shape": [spec["action_dim"]], "dtype": "float32"}
    envs = make_vector_env(task_id, min(num_envs, episodes), **(env_kwargs or {}))
    try:
        writer = DatasetWriter(
            out, features, fps=spec["control_hz"], task=task_id, overwrite=overwrite
        )
    except BaseException:
        envs.close()
        raise
    pending: dict[int, EpisodeMetrics] = {}
    written = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, desc=f"collect {task_id}", unit="ep")

    def on_episode(m: EpisodeMetrics) -> None:
        nonlocal written
        pending[m.episode] = m
        while written in pending:  # write in episode order
            traj = pending.pop(written).trajectory
            assert traj is not None
            writer.add_episode({**{k: traj[k] for k in features}, "next.reward": traj["reward"]})
            written += 1
        if bar is not None:
            bar.update(1)

    try:
        metrics = VectorActor(policy, executor).run(
            envs, episodes, seed=seed, on_episode=on_episode, record=True
        )
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        envs.close()
        if bar is not None:
            bar.close()
    succ = [m.success for m in metrics if m.success is not None]
    return CollectResult(
        root=Path(out),
        episodes=len(metrics),
        frames=sum(m.length for m in metrics),
        success_rate=float(np.mean(succ)) if succ else None,
        return_mean=float(np.mean([m.episode_return for m in metrics])),
    )
