"""The running episodes of one ``VectorActor.stream`` call, in arrays by env position: which
episode each env runs, its return and length so far, its actions (for the jerk) and, when
recording, its observations, rewards and weight versions; the last observation of every env;
and the order the running envs go to the executor in (the order they started episodes in)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from envactor.runtime.env_batch import EnvBatch, StepArrays


class EpisodeBook:
    """Bookkeeping of the episodes ``queue`` (popped from the end) run on ``batch``."""

    def __init__(self, batch: EnvBatch, queue: list[int], seed: int, record: bool) -> None:
        n = len(batch.ids)
        self.batch, self.queue, self.seed, self.record = batch, queue, seed, record
        self.episode = np.full(n, -1, np.int64)
        self.ret = np.zeros(n, np.float64)
        self.length = np.zeros(n, np.int64)
        self.order: list[int] = []  # running env positions, in the order their episodes began
        self.obs: dict[str, np.ndarray] = {}  # each env's last observation
        self._pos: np.ndarray | None = None
        self._ids: list[Hashable] = []
        self._all = False  # every env runs, in position order: slices instead of gathers
        self._longest = 0  # the longest running episode so far, in steps
        self._steps = 0  # room along time in the per-step buffers
        self.actions: np.ndarray | None = None  # (N, T, A) float64
        self.seen: dict[str, np.ndarray] = {}  # record: observations (N, T, ...)
        self.rewards = np.zeros((n, 0), np.float64)  # record: (N, T)
        self.versions = np.zeros((n, 0), np.int64)  # record: (N, T)

    def running(self) -> tuple[np.ndarray, list[Hashable]]:
        """Positions and ids of the running envs, in executor order."""
        if self._pos is None:
            self._pos = np.array(self.order, np.int64)
            self._ids = [self.batch.ids[p] for p in self.order]
            self._all = self.order == list(range(len(self.batch.ids)))
        return self._pos, self._ids

    def observations(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        """The last observation of the envs at ``pos`` (row j for ``pos[j]``): the stored
        arrays themselves when every env runs in position order (valid until :meth:`step`),
        else copies."""
        if self._all:
            return dict(self.obs)
        return {k: v[pos] for k, v in self.obs.items()}

    def begin(self, positions: Iterable[int]) -> list[int]:
        """Give the next queued episodes to the free envs ``positions``; those that got one."""
        chosen = []
        for p in positions:
            if not self.queue:
                break
            self.episode[p] = self.queue.pop()
            self.ret[p], self.length[p] = 0.0, 0
            chosen.append(p)
        return chosen

    def started(self, chosen: list[int], obs: dict[str, np.ndarray]) -> None:
        """The envs ``chosen`` were reset to ``obs`` (row j for ``chosen[j]``)."""
        n = len(self.batch.ids)
        for k, v in obs.items():
            store = self.obs.get(k)
            if store is None:
                store = self.obs[k] = np.zeros((n, *v.shape[1:]), v.dtype)
            store[chosen] = v
        self.order.extend(chosen)
        self._pos = None

    def step(
        self, pos: np.ndarray, obs: dict[str, np.ndarray], actions: np.ndarray,
        res: StepArrays, versions: np.ndarray | None,
    ) -> list[int]:  # fmt: skip
        """Account one step of the envs at ``pos`` (what they saw, did and got); the positions
        whose episode ended, in executor order."""
        sel: slice | np.ndarray = slice(None) if self._all else pos
        t = self.length[sel]
        self._room(self._longest + 1, actions, obs)
        assert self.actions is not None
        self.actions[pos, t] = actions
        reward = res.reward[sel]
        if self.record:
            for k, v in obs.items():
                self.seen[k][pos, t] = v
            self.rewards[pos, t] = reward
            if versions is not None:
                self.versions[pos, t] = versions
        self.ret[sel] += reward
        self.length[sel] += 1
        for k, store in self.obs.items():
            store[sel] = res.obs[k][sel]
        assert res.ended is not None
        ended = res.ended[sel]
        self._longest += 1
        return pos[ended].tolist() if ended.any() else []

    def end(self, positions: list[int]) -> None:
        """The episodes of ``positions`` are over: those envs leave the running order."""
        gone = set(positions)
        self.order = [p for p in self.order if p not in gone]
        self._pos = None
        self._longest = int(self.length[self.order].max()) if self.order else 0

    def episode_actions(self, p: int) -> np.ndarray:
        """Env ``p``'s actions this episode ``(T, A)`` (float64, exactly as executed)."""
        assert self.actions is not None
        return self.actions[p, : self.length[p]]

    def trajectory(self, p: int) -> dict[str, np.ndarray]:
        """Env ``p``'s recorded episode: observation keys ``(T, ...)``, ``action``, ``reward``
        and ``weight_version``."""
        n = int(self.length[p])
        out = {k: v[p, :n].copy() for k, v in self.seen.items()}
        out["action"] = self.episode_actions(p).astype(np.float32)
        out["reward"] = self.rewards[p, :n].astype(np.float32)
        out["weight_version"] = self.versions[p, :n].copy()
        return out

    def _room(self, steps: int, actions: np.ndarray, obs: dict[str, Any]) -> None:
        """Per-step buffers long enough for ``steps`` steps (doubling)."""
        if steps <= self._steps:
            return
        cap = max(steps, 2 * self._steps, 64)
        n = len(self.batch.ids)

        def grown(old: np.ndarray | None, tail: tuple[int, ...], dtype: Any) -> np.ndarray:
            new = np.zeros((n, cap, *tail), dtype)
            if old is not None:
                new[:, : old.shape[1]] = old
            return new

        self.actions = grown(self.actions, actions.shape[1:], np.float64)
        if self.record:
            for k, v in obs.items():
                self.seen[k] = grown(self.seen.get(k), v.shape[1:], v.dtype)
            self.rewards = grown(self.rewards, (), np.float64)
            self.versions = grown(self.versions, (), np.int64)
        self._steps = cap
