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
from envactor.runtime.env_batch import EnvBatch, ObsAdapter, StepArrays, as_env_batch
from envactor.runtime.episodes import EpisodeBook
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
        book = EpisodeBook(batch, queue, seed, record)
        started = self._start(book, range(len(batch.ids)))
        if started is not None:
            yield started
        ex = self.executor
        by_dict = _act_overridden(ex)
        steps = 0
        while book.order:
            if before_step is not None:
                before_step(steps)
            pos, ids = book.running()
            obs = book.observations(pos)
            if by_dict:
                actions = _act_by_dict(ex, ids, obs)
            else:
                actions = ex.act_batch(ids, obs, defer=batch.overlaps)
            batch.send(pos, actions)
            try:
                ex.flush()  # the policy call the executor deferred, while the envs step
            finally:
                res = batch.receive()
            versions = ex.action_versions(ids) if record else None
            ended = book.step(pos, obs, actions, res, versions)
            if ended:
                for p in ended:
                    yield self._metrics(book, p, res)
                book.end(ended)
                started = self._start(book, ended)
                if started is not None:
                    yield started
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break

    def _start(self, book: EpisodeBook, positions: Iterable[int]) -> EpisodesStarted | None:
        """Start the next queued episodes on the free envs at ``positions`` (executor and
        policy state reset, noise and env seeded)."""
        chosen = book.begin(positions)
        if not chosen:
            return None
        ids = [book.batch.ids[p] for p in chosen]
        episodes = book.episode[chosen].tolist()
        self.executor.reset(ids)
        self.policy.set_env_seeds(
            {e: episode_noise_seed(book.seed, j) for e, j in zip(ids, episodes)}
        )
        book.started(chosen, book.batch.reset_rows(chosen, [book.seed + j for j in episodes]))
        return EpisodesStarted(episodes)

    def _metrics(self, book: EpisodeBook, p: int, res: StepArrays) -> EpisodeMetrics:
        e = book.batch.ids[p]
        info = res.info(p)
        stats = self.executor.episode_stats(e)
        success = info.get("success")
        j = int(book.episode[p])
        return EpisodeMetrics(
            episode=j, env_id=e, seed=book.seed + j, episode_return=float(book.ret[p]),
            length=int(book.length[p]), success=None if success is None else bool(success),
            jerk=action_jerk(book.episode_actions(p)), held_steps=stats["held_steps"],
            requests=stats["requests"],
            truncated=bool(res.truncated[p]) and not bool(res.terminated[p]),
            weight_version=self.executor.action_version(e), info=scalar_info(info),
            trajectory=book.trajectory(p) if book.record else None,
        )  # fmt: skip


def _act_overridden(ex: ChunkExecutor) -> bool:
    """True when ``act`` was replaced (on the class or the instance): then the actor calls it."""
    return type(ex).act is not ChunkExecutor.act or "act" in vars(ex)


def _act_by_dict(ex: ChunkExecutor, ids: list[Hashable], obs: dict[str, np.ndarray]) -> np.ndarray:
    out = ex.act({e: {k: np.array(v[j]) for k, v in obs.items()} for j, e in enumerate(ids)})
    return np.stack([np.asarray(out[e]) for e in ids])
