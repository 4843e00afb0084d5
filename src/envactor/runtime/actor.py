"""VectorActor: a policy and a chunk executor driving many envs, episode by episode.

Episode j (0-based, in the order episodes are started) gets env seed ``seed + j`` and policy
noise seeded from ``(seed, j)``, so the metrics of a run depend on the seed and not on how many
envs share a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from envactor.policy.base import Policy
from envactor.runtime.env_batch import EnvBatch, ObsAdapter, as_env_batch
from envactor.runtime.executors import ChunkExecutor, make_executor


@dataclass
class EpisodeMetrics:
    """One finished episode. ``jerk`` = mean squared second difference of the actions."""

    episode: int
    env_id: Hashable
    seed: int
    episode_return: float
    length: int
    success: bool | None
    jerk: float
    held_steps: int
    requests: int
    truncated: bool
    trajectory: dict[str, np.ndarray] | None = field(default=None, repr=False)
    """With ``record=True``: observation keys ``(T, ...)``, ``action`` ``(T, A)``, ``reward``."""

    def to_dict(self) -> dict[str, Any]:
        """Metrics as plain JSON-able values (the trajectory left out)."""
        d = asdict(self)
        d.pop("trajectory")
        d["env_id"] = str(self.env_id)
        return d


@dataclass
class _Running:
    episode: int
    seed: int
    ret: float = 0.0
    actions: list[np.ndarray] = field(default_factory=list)
    observations: list[dict[str, np.ndarray]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    def trajectory(self) -> dict[str, np.ndarray]:
        out = {k: np.stack([o[k] for o in self.observations]) for k in self.observations[0]}
        out["action"] = np.stack(self.actions).astype(np.float32)
        out["reward"] = np.asarray(self.rewards, dtype=np.float32)
        return out


def action_jerk(actions: np.ndarray) -> float:
    """Mean over steps and dims of the squared second difference ``a_t - 2a_{t-1} + a_{t-2}``."""
    a = np.asarray(actions, dtype=np.float64)
    if len(a) < 3:
        return 0.0
    return float(np.mean((a[2:] - 2 * a[1:-1] + a[:-2]) ** 2))


def episode_noise_seed(seed: int, episode: int) -> int:
    """Seed of the policy noise for episode ``episode`` of a run seeded ``seed``."""
    return (seed * 1_000_003 + episode * 7_919 + 12_345) & 0x7FFF_FFFF


class VectorActor:
    """Run ``policy`` through ``executor`` (an instance or a registered name) over many envs."""

    def __init__(
        self, policy: Policy, executor: ChunkExecutor | str = "sync", **executor_kwargs: Any
    ) -> None:
        self.policy = policy
        if isinstance(executor, str):
            executor = make_executor(executor, policy, **executor_kwargs)
        elif executor_kwargs:
            raise ValueError("executor_kwargs only apply when executor is given by name")
        self.executor = executor

    def run(
        self,
        envs: Any,
        num_episodes: int,
        *,
        seed: int = 0,
        obs_adapter: ObsAdapter | None = None,
        on_episode: Callable[[EpisodeMetrics], None] | None = None,
        max_steps: int | None = None,
        record: bool = False,
    ) -> list[EpisodeMetrics]:
        """Run exactly ``num_episodes`` episodes (episode ids 0..n-1) and return their metrics,
        ordered by episode id. ``envs``: a gymnasium VectorEnv, a dict of envs or an EnvBatch.
        ``record`` keeps each episode's observations, actions and rewards (``trajectory``)."""
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
        batch: EnvBatch = as_env_batch(envs, obs_adapter)
        next_episode = 0
        running: dict[Hashable, _Running] = {}
        obs: dict[Hashable, dict[str, np.ndarray]] = {}
        done: list[EpisodeMetrics] = []

        def start(ids: Iterable[Hashable]) -> None:
            nonlocal next_episode
            seeds = {}
            for e in ids:
                if next_episode >= num_episodes:
                    continue
                running[e] = _Running(next_episode, seed + next_episode)
                seeds[e] = seed + next_episode
                next_episode += 1
            if not seeds:
                return
            self.executor.reset(list(seeds))
            self.policy.set_env_seeds(
                {e: episode_noise_seed(seed, running[e].episode) for e in seeds}
            )
            obs.update(batch.reset(seeds))

        start(batch.ids)
        steps = 0
        while running:
            actions = self.executor.act({e: obs[e] for e in running})
            results = batch.step(actions)
            finished = []
            for e, res in results.items():
                ep = running[e]
                ep.ret += res.reward
                ep.actions.append(np.asarray(actions[e]))
                if record:
                    ep.observations.append(obs[e])
                    ep.rewards.append(res.reward)
                obs[e] = res.obs
                if res.terminated or res.truncated:
                    stats = self.executor.episode_stats(e)
                    success = res.info.get("success")
                    m = EpisodeMetrics(
                        episode=ep.episode, env_id=e, seed=ep.seed, episode_return=ep.ret,
                        length=len(ep.actions), success=None if success is None else bool(success),
                        jerk=action_jerk(np.stack(ep.actions)), held_steps=stats["held_steps"],
                        requests=stats["requests"], truncated=res.truncated and not res.terminated,
                        trajectory=ep.trajectory() if record else None,
                    )  # fmt: skip
                    done.append(m)
                    if on_episode is not None:
                        on_episode(m)
                    finished.append(e)
            for e in finished:
                del running[e]
                obs.pop(e, None)
            start(finished)
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        return sorted(done, key=lambda m: m.episode)
