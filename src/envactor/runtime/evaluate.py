"""``envactor.evaluate``: a policy, a task and an executor -> a table of episode metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from envactor.policy.base import Policy
from envactor.runtime.actor import EpisodeMetrics, VectorActor


@dataclass
class EvalResult:
    """Per-episode metrics of one (policy, task, executor, delay) run, and their summary."""

    env_id: str
    executor: str
    delay: int
    episodes: list[EpisodeMetrics]

    def summary(self) -> dict[str, Any]:
        """One row: success rate, mean return, jerk, length, held steps (means over episodes)."""
        eps = self.episodes
        succ = [m.success for m in eps if m.success is not None]
        ret = np.array([m.episode_return for m in eps])
        return {
            "env_id": self.env_id,
            "executor": self.executor,
            "delay": self.delay,
            "episodes": len(eps),
            "success_rate": float(np.mean(succ)) if succ else None,
            "return_mean": float(ret.mean()),
            "return_std": float(ret.std()),
            "jerk_mean": float(np.mean([m.jerk for m in eps])),
            "length_mean": float(np.mean([m.length for m in eps])),
            "held_steps_mean": float(np.mean([m.held_steps for m in eps])),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "episodes": [m.to_dict() for m in self.episodes]}


def make_vector_env(
    env_id: str,
    num_envs: int,
    *,
    vectorization: Literal["sync", "async"] = "sync",
    **env_kwargs: Any,
) -> gym.vector.VectorEnv:
    """A gymnasium vector env of ``env_id`` with autoreset off (the actor resets and seeds)."""
    import envactor.envs  # noqa: F401  (registers the embedded envactor/... tasks)

    fns = [lambda: gym.make(env_id, **env_kwargs) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.DISABLED
    if vectorization == "async":
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode)
    if vectorization == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")


def evaluate(
    policy_or_ckpt: Policy | str | Path,
    env_id: str,
    *,
    num_envs: int = 8,
    num_episodes: int = 32,
    executor: str = "sync",
    delay: int = 0,
    seed: int = 0,
    n_action_steps: int | None = None,
    vectorization: Literal["sync", "async"] = "sync",
    executor_kwargs: dict[str, Any] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    progress: bool = False,
) -> EvalResult:
    """Run ``num_episodes`` episodes of ``env_id`` across ``num_envs`` envs and collect metrics.

    ``policy_or_ckpt``: a Policy, or a checkpoint dir / YAML / registered name for build_policy.
    The same seed gives the same metrics whatever ``num_envs`` is.
    """
    if isinstance(policy_or_ckpt, Policy):
        policy = policy_or_ckpt
    else:
        from envactor.policy.build import build_policy

        policy = build_policy(policy_or_ckpt, device=device, overrides=overrides)
    envs = make_vector_env(
        env_id, min(num_envs, num_episodes), vectorization=vectorization, **(env_kwargs or {})
    )
    actor = VectorActor(
        policy, executor, delay=delay, n_action_steps=n_action_steps, **(executor_kwargs or {})
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_episodes, desc=f"{executor} d={delay}", unit="ep", leave=False)
    try:
        episodes = actor.run(
            envs, num_episodes, seed=seed, on_episode=(lambda m: bar.update(1)) if bar else None
        )
    finally:
        if bar is not None:
            bar.close()
        envs.close()
    return EvalResult(env_id=env_id, executor=executor, delay=delay, episodes=episodes)
