"""One interface over a gymnasium ``VectorEnv`` (sync or async, any autoreset mode) and a plain
``{env_id: gym.Env}`` dict: reset chosen envs with chosen seeds, step by env id.

Two forms of the same operations: by env id with one result per env (``reset``, ``step``), and
by env position with arrays (``reset_rows``, ``send`` + ``receive``), which the vector actor
uses: observations adapted once per step for the whole batch, rewards and episode ends as
arrays, and, for an ``AsyncVectorEnv``, the envs stepping in their processes between ``send``
and ``receive`` while the caller computes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

ObsAdapter = Callable[[Any], dict[str, np.ndarray]]
STATE_KEY = "observation.state"


def default_obs_adapter(obs: Any) -> dict[str, np.ndarray]:
    """An array observation becomes ``{"observation.state": obs}``; a dict whose keys are
    ``observation.*`` passes through; anything else is an error that says what came."""
    if isinstance(obs, Mapping):
        bad = [k for k in obs if not str(k).startswith("observation")]
        if bad:
            raise ValueError(
                f"dict observation keys must be named observation.* (LeRobot naming); got {bad}; "
                "pass obs_adapter= to map them"
            )
        return {str(k): np.asarray(v) for k, v in obs.items()}
    return {STATE_KEY: np.asarray(obs, dtype=np.float32)}


@dataclass
class StepResult:
    """What one env returned for one step."""

    obs: dict[str, np.ndarray]
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


@dataclass
class StepArrays:
    """One step of a batch by env position (the order of ``EnvBatch.ids``); the rows of envs
    that were not stepped mean nothing. ``info(i)``: env i's info dict."""

    obs: dict[str, np.ndarray]
    reward: np.ndarray  # (N,) float64
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    info: Callable[[int], dict[str, Any]]
    ended: np.ndarray | None = None  # terminated | truncated (computed when not given)

    def __post_init__(self) -> None:
        if self.ended is None:
            self.ended = self.terminated | self.truncated


def _rows_to_arrays(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


class EnvBatch:
    """Envs addressed by stable ids (never positions). A subclass implements ``reset`` and
    ``step``; the array forms default to them."""

    ids: list[Hashable]
    overlaps: bool = False
    """True when the envs step between ``send`` and ``receive`` (the caller may compute)."""

    def reset(self, seeds: Mapping[Hashable, int]) -> dict[Hashable, dict[str, np.ndarray]]:
        """Reset exactly the envs in ``seeds`` with their seeds; their first observations."""
        raise NotImplementedError

    def step(self, actions: Mapping[Hashable, np.ndarray]) -> dict[Hashable, StepResult]:
        """Step the envs in ``actions``; results for those envs."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the envs."""

    # ------------------------------------------------------------------ by position
    def reset_rows(self, rows: Sequence[int], seeds: Sequence[int]) -> dict[str, np.ndarray]:
        """Reset the envs at positions ``rows`` with ``seeds``; their first observations
        batched (row j for ``rows[j]``)."""
        ids = [self.ids[r] for r in rows]
        got = self.reset(dict(zip(ids, (int(s) for s in seeds))))
        return _rows_to_arrays([got[e] for e in ids])

    def send(self, rows: np.ndarray, actions: np.ndarray) -> None:
        """Start one step of the envs at positions ``rows`` with ``actions`` (row j for
        ``rows[j]``); :meth:`receive` gives the results."""
        self._sent = (np.asarray(rows).tolist(), actions)

    def receive(self) -> StepArrays:
        """The results of the step started by :meth:`send`."""
        rows, actions = self._sent
        ids = [self.ids[r] for r in rows]
        got = self.step(dict(zip(ids, actions)))
        n = len(self.ids)
        first = got[ids[0]].obs
        obs = {k: np.zeros((n, *np.shape(v)), np.asarray(v).dtype) for k, v in first.items()}
        reward, term, trunc = np.zeros(n), np.zeros(n, np.bool_), np.zeros(n, np.bool_)
        infos: dict[int, dict[str, Any]] = {}
        for r, e in zip(rows, ids):
            res = got[e]
            for k, v in res.obs.items():
                obs[k][r] = v
            reward[r], term[r], trunc[r] = res.reward, res.terminated, res.truncated
            infos[r] = res.info
        return StepArrays(obs, reward, term, trunc, lambda i: infos.get(i, {}))


class DictEnvBatch(EnvBatch):
    """``{env_id: gym.Env}``: each env stepped on its own."""

    def __init__(self, envs: Mapping[Hashable, gym.Env], obs_adapter: ObsAdapter) -> None:
        self.envs = dict(envs)
        self.ids = list(self.envs)
        self.adapt = obs_adapter

    def reset(self, seeds: Mapping[Hashable, int]) -> dict[Hashable, dict[str, np.ndarray]]:
        return {e: self.adapt(self.envs[e].reset(seed=int(s))[0]) for e, s in seeds.items()}

    def step(self, actions: Mapping[Hashable, np.ndarray]) -> dict[Hashable, StepResult]:
        out = {}
        for e, a in actions.items():
            obs, r, term, trunc, info = self.envs[e].step(a)
            out[e] = StepResult(self.adapt(obs), float(r), bool(term), bool(trunc), dict(info))
        return out

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _present(info: Mapping[str, Any], key: str, i: int) -> bool:
    mask = info.get("_" + key)
    return True if mask is None else bool(mask[i])


def _split(x: Any, i: int) -> Any:
    if isinstance(x, Mapping):
        return {k: _split(v, i) for k, v in x.items()}
    return x[i]


def _info_row(info: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Env i's entries of a vector env's batched ``info``."""
    keys = [k for k in info if not k.startswith("_")]
    return {k: _split(info[k], i) for k in keys if _present(info, k, i)}


class VectorEnvBatch(EnvBatch):
    """A gymnasium ``VectorEnv``; env i has id ``ids[i]``. Every step steps all envs (idle ones
    repeat their last action and are ignored); finished envs are reset by us with a reset mask
    and a seed, which overrides the vector env's own autoreset in every mode. An
    ``AsyncVectorEnv`` steps between ``send`` and ``receive`` (``overlaps``)."""

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        obs_adapter: ObsAdapter,
        ids: Sequence[Hashable] | None = None,
    ) -> None:
        self.envs = envs
        self.ids = list(range(envs.num_envs)) if ids is None else list(ids)
        if len(self.ids) != envs.num_envs:
            raise ValueError(f"got {len(self.ids)} env ids for {envs.num_envs} envs")
        self._pos = {e: i for i, e in enumerate(self.ids)}
        self.adapt = obs_adapter
        space = envs.single_action_space
        self._last = np.zeros((envs.num_envs, *(space.shape or ())), dtype=space.dtype)
        self._started = False
        self._finished = np.zeros(envs.num_envs, dtype=bool)  # ended and not reset since
        self.overlaps = isinstance(envs, gym.vector.AsyncVectorEnv)

    def reset(self, seeds: Mapping[Hashable, int]) -> dict[Hashable, dict[str, np.ndarray]]:
        ids = list(seeds)
        got = self.reset_rows([self._pos[e] for e in ids], [seeds[e] for e in ids])
        return {e: {k: v[j] for k, v in got.items()} for j, e in enumerate(ids)}

    def step(self, actions: Mapping[Hashable, np.ndarray]) -> dict[Hashable, StepResult]:
        ids = list(actions)
        rows = np.array([self._pos[e] for e in ids], np.int64)
        self.send(rows, [actions[e] for e in ids])  # type: ignore[arg-type]
        res = self.receive()
        rew, term, trunc = res.reward.tolist(), res.terminated.tolist(), res.truncated.tolist()
        out = {}
        for e, i in zip(ids, rows.tolist()):
            row = {k: v[i] for k, v in res.obs.items()}
            out[e] = StepResult(row, rew[i], term[i], trunc[i], res.info(i))
        return out

    def reset_rows(self, rows: Sequence[int], seeds: Sequence[int]) -> dict[str, np.ndarray]:
        n = self.envs.num_envs
        mask = np.zeros(n, dtype=bool)
        # gymnasium's vector reset takes a seed per env at run time; its annotation says int
        seed_list: Any = [None] * n
        for r, s in zip(rows, seeds):
            mask[r] = True
            seed_list[r] = int(s)
        if not self._started:  # the first reset must cover every env
            obs, _ = self.envs.reset(seed=seed_list)
            self._started = True
        else:
            obs, _ = self.envs.reset(seed=seed_list, options={"reset_mask": mask})
        self._finished &= ~mask
        index = np.asarray(rows, np.int64)
        return {k: np.asarray(v)[index] for k, v in self.adapt(obs).items()}

    def send(self, rows: np.ndarray, actions: np.ndarray) -> None:
        self._last[rows] = np.asarray(actions)  # cast into the action space's dtype
        if self._finished.any():
            idle = self._finished.copy()
            idle[rows] = False
            if idle.any():  # finished envs with no episode left still step with the others
                self.envs.reset(options={"reset_mask": idle})
                self._finished &= ~idle
        if self.overlaps:
            self.envs.step_async(self._last.copy())  # type: ignore[attr-defined]

    def receive(self) -> StepArrays:
        if self.overlaps:
            obs, rew, term, trunc, info = self.envs.step_wait()  # type: ignore[attr-defined]
        else:
            obs, rew, term, trunc, info = self.envs.step(self._last.copy())
        term, trunc = np.asarray(term, bool), np.asarray(trunc, bool)
        ended = term | trunc
        self._finished |= ended
        batched = {k: np.asarray(v) for k, v in self.adapt(obs).items()}  # once for the batch
        return StepArrays(
            batched, np.asarray(rew, np.float64), term, trunc, lambda i: _info_row(info, i), ended
        )

    def close(self) -> None:
        self.envs.close()


def as_env_batch(envs: Any, obs_adapter: ObsAdapter | None = None) -> EnvBatch:
    """Wrap a VectorEnv, a dict of envs, or an EnvBatch."""
    adapt = obs_adapter or default_obs_adapter
    if isinstance(envs, EnvBatch):
        return envs
    if isinstance(envs, gym.vector.VectorEnv):
        return VectorEnvBatch(envs, adapt)
    if isinstance(envs, Mapping) and all(isinstance(v, gym.Env) for v in envs.values()):
        return DictEnvBatch(envs, adapt)
    raise TypeError(
        "expected a gymnasium VectorEnv or a dict {env_id: gymnasium.Env}, "
        f"got {type(envs).__name__}"
    )
