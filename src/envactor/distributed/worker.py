"""``RolloutWorker``: a vector of envs, its own policy copy and any executor, as a Ray actor.

The worker builds its policy from checkpoint files sent as bytes (so it needs no shared disk),
pulls weights from the store at the configured points (before each chunk request, every N
steps, or at episode starts), and streams events from ``rollout``: ``EpisodesStarted`` when
episodes start, ``Episode`` as each one finishes, so the caller owns every finished episode the
moment it is yielded (a worker that dies later loses none of them).

A plain class: ``--workers 0`` and the tests use it in process; ``ray.remote`` wraps it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envactor.distributed.broadcast import WeightSubscriber, parse_sync_every
from envactor.policy.base import Policy
from envactor.runtime.actor import EpisodeMetrics, EpisodesStarted, VectorActor, episode_noise_seed

__all__ = ["Episode", "RolloutWorker", "checkpoint_files", "label_episode"]

PolicySource = str | Path | Mapping[str, bytes]


@dataclass
class Episode:
    """A finished episode: metrics, trajectory (observations, ``action``, ``reward``,
    ``weight_version`` per step), the expert's labels when the worker has a labeler, the final
    step's scalar ``info``, and the worker that ran it."""

    metrics: dict[str, Any]
    trajectory: dict[str, np.ndarray]
    worker: str
    expert_action: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def episode(self) -> int:
        return int(self.metrics["episode"])


def checkpoint_files(ckpt_dir: str | Path) -> dict[str, bytes]:
    """Every file of a checkpoint directory as ``{relative path: bytes}`` (to ship to workers)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {root} does not exist")
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _materialize(source: PolicySource) -> tuple[str, tempfile.TemporaryDirectory[str] | None]:
    if isinstance(source, Mapping):
        tmp = tempfile.TemporaryDirectory(prefix="envactor-worker-")
        for rel, data in source.items():
            path = Path(tmp.name, rel)
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise ValueError(f"checkpoint file name {rel!r} escapes its directory")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return tmp.name, tmp
    return str(source), None


def label_episode(
    expert: Policy, trajectory: Mapping[str, np.ndarray], noise_seed: int
) -> np.ndarray:
    """The expert's action at every visited state ``(T, A)``: the first action of its chunk.
    All steps share one env id, so per-episode expert state (the pendulum expert's swing
    direction) is drawn once, from ``noise_seed``. An expert with observation history
    (``n_obs_steps > 1``) is asked step by step, in order, so that step t's chunk sees the
    states up to t as it would have while acting (one batch would put T rows in one env's
    history at once)."""
    obs = {k: np.asarray(trajectory[k]) for k in expert.input_features}
    n = len(next(iter(obs.values())))
    key = "label"
    expert.reset([key])
    expert.set_env_seeds({key: noise_seed})
    if expert.n_obs_steps > 1:
        steps = [expert.predict({k: v[t : t + 1] for k, v in obs.items()}, env_ids=[key])
                 for t in range(n)]  # fmt: skip
        chunk = np.concatenate(steps) if steps else np.zeros((0, *expert.action_shape))
    else:
        chunk = expert.predict(obs, env_ids=[key] * n)
    expert.reset([key])
    return np.ascontiguousarray(chunk[:, 0, :], dtype=np.float32)


class RolloutWorker:
    """Runs episodes by id; see the module docstring.

    Args:
        worker_id: name reported to the store.
        policy: checkpoint files (``checkpoint_files``), a checkpoint dir, YAML or name.
        task: gymnasium env id; ``num_envs`` copies in a sync vector env.
        executor, executor_kwargs: the chunk executor (any registered name).
        explore: act in collect mode (the policy's exploration noise).
        store: the weight store handle (None: never pull).
        sync_every: "chunk", "episode", "steps:N" or N.
        name_map: learner component names -> this policy's (``load_state_dict_into``).
        labeler: a policy (YAML/name/dir) whose actions label every visited state (DAgger);
            ``"expert"``: the task's scripted expert (``envactor.envs.task_spec``).
        pace_hz: step the envs at most this often (a simulator standing in for a robot).
        die_after_steps: crash the process after that many vector steps (fault tests).
    """

    def __init__(
        self,
        worker_id: str,
        policy: PolicySource,
        task: str,
        *,
        num_envs: int = 4,
        executor: str = "sync",
        executor_kwargs: Mapping[str, Any] | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        explore: bool = False,
        store: Any = None,
        sync_every: str | int = "chunk",
        name_map: Mapping[str, str] | None = None,
        labeler: str | Path | None = None,
        device: str = "cpu",
        torch_threads: int | None = 1,
        pace_hz: float | None = None,
        die_after_steps: int | None = None,
    ) -> None:
        from envactor.policy.build import build_policy
        from envactor.runtime.evaluate import make_vector_env

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.worker_id = worker_id
        path, self._tmp = _materialize(policy)
        self.policy = build_policy(path, device=device)
        self.envs = make_vector_env(task, num_envs, **dict(env_kwargs or {}))
        kwargs = dict(executor_kwargs or {})
        self.actor = VectorActor(self.policy, executor, explore=explore, **kwargs)
        self.sync_every = parse_sync_every(sync_every)
        self.subscriber: WeightSubscriber | None = None
        if store is not None:
            self.subscriber = WeightSubscriber(self.policy, store, worker_id, name_map=name_map)
        if self.subscriber is not None and self.sync_every.kind == "chunk":
            self.actor.executor.before_request = self.subscriber.pull
        if labeler == "expert":  # the task's own expert, resolved in this node's install
            from envactor.envs import task_spec

            labeler = task_spec(task)["expert_config"]
        self.labeler = None if labeler is None else build_policy(labeler)
        self.steps = 0
        self.die_after_steps = die_after_steps
        self.period = None if not pace_hz else 1.0 / float(pace_hz)
        self._next_t = 0.0

    def info(self) -> dict[str, Any]:
        """Who and where: worker id, pid, policy name, weight version."""
        return {"worker": self.worker_id, "pid": os.getpid(), "policy": self.policy.name,
                "version": int(self.policy.weight_version)}  # fmt: skip

    def weight_loads(self) -> list[tuple[int, str]]:
        """(version, object id) of every weight version this worker loaded, in order."""
        return [] if self.subscriber is None else list(self.subscriber.loads)

    def _before_step(self, step: int) -> None:
        if self.period is not None:
            now = time.perf_counter()
            if now < self._next_t:
                time.sleep(self._next_t - now)
            self._next_t = max(now, self._next_t) + self.period
        self.steps += 1
        if self.die_after_steps is not None and self.steps > self.die_after_steps:
            os._exit(17)  # a crash, as abrupt as a lost node
        sub = self.subscriber
        if sub is not None:
            sub.steps = self.steps
            if self.sync_every.kind == "steps" and step % self.sync_every.n == 0:
                sub.check()

    def rollout(self, episode_ids: list[int], seed: int = 0) -> Iterator[Any]:
        """Run ``episode_ids``; yield ``EpisodesStarted`` and ``Episode`` events as they happen."""
        if self.subscriber is not None:
            self.subscriber.check()  # the latest weights before the first step
        stream = self.actor.stream(
            self.envs, episode_ids, seed=seed, record=True, before_step=self._before_step
        )
        for event in stream:
            if isinstance(event, EpisodesStarted):
                if self.subscriber is not None and self.sync_every.kind == "episode":
                    self.subscriber.check()
                yield event
            elif isinstance(event, EpisodeMetrics):
                yield self._episode(event, seed)

    def _episode(self, m: EpisodeMetrics, seed: int) -> Episode:
        traj = m.trajectory
        assert traj is not None  # record=True
        labels = None
        if self.labeler is not None:
            labels = label_episode(self.labeler, traj, episode_noise_seed(seed + 1, m.episode))
        return Episode(m.to_dict(), traj, self.worker_id, labels, dict(m.info))

    def close(self) -> None:
        """Close the envs and remove the materialized checkpoint."""
        self.envs.close()
        if self._tmp is not None:
            self._tmp.cleanup()
