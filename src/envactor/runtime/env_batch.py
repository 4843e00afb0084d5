"""One interface over a gymnasium ``VectorEnv`` (sync or async, any autoreset mode) and a plain
``{env_id: gym.Env}`` dict: reset chosen envs with chosen seeds, step by env id."""

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


class EnvBatch:
    """Envs addressed by stable ids (never positions)."""

    ids: list[Hashable]

    def reset(self, seeds: Mapping[Hashable, int]) -> dict[Hashable, dict[str, np.ndarray]]:
        """Reset exactly the envs in ``seeds`` with their seeds; their first observations."""
        raise NotImplementedError

    def step(self, actions: Mapping[Hashable, np.ndarray]) -> dict[Hashable, StepResult]:
        """Step the envs in ``actions``; results for those envs."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the envs."""


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


class VectorEnvBatch(EnvBatch):
    """A gymnasium ``VectorEnv``; env i has id ``ids[i]``. Every step steps all envs (idle ones
    repeat their last action and are ignored); finished envs are reset by us with a reset mask
    and a seed, which overrides the vector env's own autoreset in every mode."""

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

    def reset(self, seeds: Mapping[Hashable, int]) -> dict[Hashable, dict[str, np.ndarray]]:
        mask = np.zeros(self.envs.num_envs, dtype=bool)
        # gymnasium's vector reset takes a seed per env at run time; its annotation says int
        seed_list: Any = [None] * self.envs.num_envs
        for e, s in seeds.items():
            mask[self._pos[e]] = True
            seed_list[self._pos[e]] = int(s)
        if not self._started:  # the first reset must cover every env
            obs, _ = self.envs.reset(seed=seed_list)
            self._started = True
        else:
            obs, _ = self.envs.reset(seed=seed_list, options={"reset_mask": mask})
        self._finished &= ~mask
        return {e: self.adapt(_split(obs, self._pos[e])) for e in seeds}

    def step(self, actions: Mapping[Hashable, np.ndarray]) -> dict[Hashable, StepResult]:
        for e, a in actions.items():
            self._last[self._pos[e]] = a
        idle = self._finished.copy()
        for e in actions:
            idle[self._pos[e]] = False
        if idle.any():  # finished envs with no episode left still step with the others
            self.envs.reset(options={"reset_mask": idle})
            self._finished &= ~idle
        obs, rew, term, trunc, info = self.envs.step(self._last.copy())
        self._finished |= np.asarray(term, bool) | np.asarray(trunc, bool)
        batched = self.adapt(obs)  # adapt once for the batch, then take row views
        keys = [k for k in info if not k.startswith("_")]
        rew_l, term_l, trunc_l = rew.tolist(), np.asarray(term).tolist(), np.asarray(trunc).tolist()
        out = {}
        for e in actions:
            i = self._pos[e]
            env_info = {k: _split(info[k], i) for k in keys if _present(info, k, i)}
            row = {k: v[i] for k, v in batched.items()}
            out[e] = StepResult(row, rew_l[i], term_l[i], trunc_l[i], env_info)
        return out

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
