"""``envactor.evaluate``: a policy, a task and an executor -> a table of episode metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    settings: dict[str, Any] = field(default_factory=dict)
    """What the run used: executor, delay, n_action_steps (the resolved s), action_noise_std
    (None: the env has no such setting), episodes, num_envs, seed and the env options."""

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
        """``settings``, ``summary`` and per-episode metrics, JSON-ready."""
        return {
            "settings": dict(self.settings),
            "summary": self.summary(),
            "episodes": [m.to_dict() for m in self.episodes],
        }

    def settings_line(self) -> str:
        """The settings as one line: executor, d, s, action noise, episodes, num envs, seed."""
        st = self.settings
        noise = st.get("action_noise_std")
        parts = [
            f"executor={st.get('executor', self.executor)}",
            f"d={st.get('delay', self.delay)}",
            f"s={st.get('n_action_steps', '?')}",
            f"action_noise={'n/a' if noise is None else f'{noise:g}'}",
            f"episodes={st.get('episodes', len(self.episodes))}",
            f"num_envs={st.get('num_envs', '?')}",
            f"seed={st.get('seed', '?')}",
        ]
        others = {k: v for k, v in st.get("env_kwargs", {}).items() if k != "action_noise_std"}
        parts += [f"{k}={v}" for k, v in others.items()]
        return "settings: " + " ".join(parts)


def make_vector_env(
    env_id: str,
    num_envs: int,
    *,
    vectorization: Literal["sync", "async"] = "sync",
    **env_kwargs: Any,
) -> gym.vector.VectorEnv:
    """A gymnasium vector env of ``env_id`` with autoreset off (the actor resets and seeds).

    Each env is made by ``envactor.envs.lerobot_sims.make_env``: LeRobot's simulations
    (``gym_pusht/PushT-v0``, ...) get LeRobot's observation names (``observation.image``,
    ``observation.state``), every other id is ``gymnasium.make``'s. An unknown id raises
    ``UnknownEnvError`` (with the closest registered ids), keywords the env does not take a
    ``ValueError`` naming them, before any worker starts.
    """
    from envactor.envs import check_env_id  # also registers the embedded envactor/... tasks
    from envactor.envs.lerobot_sims import make_env

    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    check_env_id(env_id)
    fns = [lambda: make_env(env_id, **env_kwargs) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.DISABLED
    try:
        if vectorization == "async":
            make_env(env_id, **env_kwargs).close()  # bad keywords fail here, not in a worker
            return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode)
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    except TypeError as exc:
        if not env_kwargs:
            raise
        raise ValueError(
            f"{env_id} rejected the env options {sorted(env_kwargs)} (gymnasium.make keywords): "
            f"{exc}"
        ) from exc


def action_noise_of(env_id: str, env_kwargs: dict[str, Any] | None) -> float | None:
    """The ``action_noise_std`` an env of ``env_id`` made with ``env_kwargs`` runs with: the
    keyword if given, else the embedded task's default (0); None for envs without one."""
    from envactor.envs import TASKS

    if env_kwargs and "action_noise_std" in env_kwargs:
        return float(env_kwargs["action_noise_std"])
    task = TASKS.get(env_id)
    return None if task is None else float(task.kwargs.get("action_noise_std", 0.0))


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
    The same seed gives the same metrics whatever ``num_envs`` is. ``n_action_steps`` (s)
    defaults to the policy's; ``env_kwargs`` go to ``gymnasium.make`` (the embedded tasks take
    ``action_noise_std``, 0 unless given). ``result.settings`` records what was used.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    if isinstance(policy_or_ckpt, Policy):
        policy = policy_or_ckpt
    else:
        from envactor.policy.build import build_policy

        policy = build_policy(policy_or_ckpt, device=device, overrides=overrides)
    actor = VectorActor(
        policy, executor, delay=delay, n_action_steps=n_action_steps, **(executor_kwargs or {})
    )
    envs = make_vector_env(
        env_id, min(num_envs, num_episodes), vectorization=vectorization, **(env_kwargs or {})
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_episodes, desc=f"{executor} d={delay}", unit="ep", leave=False)
    try:
        episodes = actor.run(
            envs, num_episodes, seed=seed, on_episode=(lambda m: bar.update(1)) if bar else None
        )
        settings = {
            "executor": executor,
            "delay": delay,
            "n_action_steps": getattr(actor.executor, "s", n_action_steps),
            "action_noise_std": action_noise_of(env_id, env_kwargs),
            "episodes": num_episodes,
            "num_envs": envs.num_envs,
            "seed": seed,
            "env_kwargs": dict(env_kwargs or {}),
        }
    finally:
        if bar is not None:
            bar.close()
        envs.close()
    return EvalResult(env_id, executor, delay, episodes, settings)
