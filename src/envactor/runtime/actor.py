"""VectorActor: a policy and a chunk executor driving many envs, episode by episode.

Episode j (0-based, in the order episodes are started) gets env seed ``seed + j`` and policy
noise seeded from ``(seed, j)``, so the metrics of a run depend on the seed and not on how many
envs share a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
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
    weight_version: int = 0
    """Weight version of the chunk that produced the episode's last action."""
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    """The scalar entries (bool, int, float, str) of the final step's ``info``."""
    trajectory: dict[str, np.ndarray] | None = field(default=None, repr=False)
    """With ``record=True``: observation keys ``(T, ...)``, ``action`` ``(T, A)``, ``reward``
    ``(T,)`` and ``weight_version`` ``(T,)`` (the weights that produced each step's action)."""

    def to_dict(self) -> dict[str, Any]:
        """Metrics as plain JSON-able values (the trajectory left out)."""
        d = asdict(self)
        d.pop("trajectory")
        d.pop("info")
        d["env_id"] = str(self.env_id)
        return d


@dataclass
class EpisodesStarted:
    """Episodes (ids) that just started on free envs (``VectorActor.stream``)."""

    episodes: list[int]


@dataclass
class _Running:
    episode: int
    seed: int
    ret: float = 0.0
    actions: list[np.ndarray] = field(default_factory=list)
    observations: list[dict[str, np.ndarray]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)

    def trajectory(self) -> dict[str, np.ndarray]:
        out = {k: np.stack([o[k] for o in self.observations]) for k in self.observations[0]}
        out["action"] = np.stack(self.actions).astype(np.float32)
        out["reward"] = np.asarray(self.rewards, dtype=np.float32)
        out["weight_version"] = np.asarray(self.versions, dtype=np.int64)
        return out


def scalar_info(info: Any) -> dict[str, Any]:
    """The bool/int/float/str entries of an ``info`` dict, as plain Python values."""
    if not isinstance(info, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in info.items():
        if isinstance(v, np.generic | np.ndarray) and np.ndim(v) == 0:
            v = v.item()
        if isinstance(v, bool | int | float | str):
            out[str(k)] = v
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
        before_step: Callable[[int], None] | None = None,
    ) -> list[EpisodeMetrics]:
        """Run exactly ``num_episodes`` episodes (episode ids 0..n-1) and return their metrics,
        ordered by episode id. ``envs``: a gymnasium VectorEnv, a dict of envs or an EnvBatch.
        ``record`` keeps each episode's observations, actions, rewards and weight versions
        (``trajectory``). ``before_step(step)`` runs before each vector step (``max_steps``
        ends the run early: the unfinished episodes are not returned)."""
        done: list[EpisodeMetrics] = []
        for event in self.stream(
            envs, range(num_episodes), seed=seed, obs_adapter=obs_adapter,
            max_steps=max_steps, record=record, before_step=before_step,
        ):  # fmt: skip
            if isinstance(event, EpisodeMetrics):
                done.append(event)
                if on_episode is not None:
                    on_episode(event)
        return sorted(done, key=lambda m: m.episode)

    def stream(
        self,
        envs: Any,
        episode_ids: Iterable[int],
        *,
        seed: int = 0,
        obs_adapter: ObsAdapter | None = None,
        max_steps: int | None = None,
        record: bool = False,
        before_step: Callable[[int], None] | None = None,
    ) -> Iterator[EpisodesStarted | EpisodeMetrics]:
        """Run the episodes ``episode_ids`` (in that order, as envs free up) and yield an
        ``EpisodesStarted`` when episodes start and each ``EpisodeMetrics`` as it finishes.

        Episode ``j`` uses env seed ``seed + j`` and noise seed ``episode_noise_seed(seed, j)``,
        so a set of episode ids gives the same episodes however it is split across actors.
        """
        queue = [int(j) for j in episode_ids]
        if not queue:
            raise ValueError("episode_ids is empty: expected at least one episode to run")
        if len(set(queue)) != len(queue):
            raise ValueError(f"episode_ids must be distinct, got {queue}")
        batch: EnvBatch = as_env_batch(envs, obs_adapter)
        queue.reverse()  # pop() from the end = the given order
        episodes = _Episodes(self, batch, queue, seed)
        started = episodes.start(batch.ids)
        if started is not None:
            yield started
        steps = 0
        while episodes.running:
            if before_step is not None:
                before_step(steps)
            running, obs = episodes.running, episodes.obs
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
                    ep.versions.append(self.executor.action_version(e))
                obs[e] = res.obs
                if res.terminated or res.truncated:
                    finished.append(e)
                    yield self._metrics(e, ep, res, record)
            for e in finished:
                del running[e]
                obs.pop(e, None)
            started = episodes.start(finished)
            if started is not None:
                yield started
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break

    def _metrics(self, e: Hashable, ep: _Running, res: Any, record: bool) -> EpisodeMetrics:
        stats = self.executor.episode_stats(e)
        success = res.info.get("success")
        return EpisodeMetrics(
            episode=ep.episode, env_id=e, seed=ep.seed, episode_return=ep.ret,
            length=len(ep.actions), success=None if success is None else bool(success),
            jerk=action_jerk(np.stack(ep.actions)), held_steps=stats["held_steps"],
            requests=stats["requests"], truncated=res.truncated and not res.terminated,
            weight_version=self.executor.action_version(e), info=scalar_info(res.info),
            trajectory=ep.trajectory() if record else None,
        )  # fmt: skip


class _Episodes:
    """The episodes of one ``VectorActor.stream`` call: the queue of episode ids still to run,
    the running episode of each env and each env's last observation."""

    def __init__(self, actor: VectorActor, batch: EnvBatch, queue: list[int], seed: int) -> None:
        self.actor, self.batch, self.queue, self.seed = actor, batch, queue, seed
        self.running: dict[Hashable, _Running] = {}
        self.obs: dict[Hashable, dict[str, np.ndarray]] = {}

    def start(self, ids: Iterable[Hashable]) -> EpisodesStarted | None:
        """Start the next queued episodes on the free envs ``ids`` (reset with their seeds)."""
        seeds = {}
        for e in ids:
            if not self.queue:
                break
            j = self.queue.pop()
            self.running[e] = _Running(j, self.seed + j)
            seeds[e] = self.seed + j
        if not seeds:
            return None
        self.actor.executor.reset(list(seeds))
        self.actor.policy.set_env_seeds(
            {e: episode_noise_seed(self.seed, self.running[e].episode) for e in seeds}
        )
        self.obs.update(self.batch.reset(seeds))
        return EpisodesStarted([self.running[e].episode for e in seeds])
