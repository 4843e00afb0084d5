"""Chunk executors: how a stream of predicted chunks becomes one action per env per step.

One executor instance serves many envs and keeps its state per env id. Every ``act`` call is one
control step: envs whose chunk is due ask for a new one and exactly those envs go to the policy
in ONE batched call (envs that reset at different times replan at different times). For a policy
with observation history (``n_obs_steps > 1``) the other envs' observations go to
``policy.observe`` in one batched call, so each env's history holds every step.

Simulated inference delay (d in docs/chunking.md's notation): a chunk requested at local step t from
the observation at t becomes usable at step t + d, and the env keeps stepping meanwhile (what
it executes while waiting is the strategy's business). The first chunk of an episode is
available at once: a robot waits at rest for its first plan; the delay applies to every replan.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from envactor.policy.base import Policy
from envactor.policy.modes import stack_observations
from envactor.registry import Registry

EnvId = Hashable

EXECUTORS: Registry[type[ChunkExecutor]] = Registry("executor")


@dataclass
class Pending:
    """A chunk in flight: usable from local step ``ready`` on; predicted at step ``t0`` by the
    policy's weights of version ``version``."""

    ready: int
    t0: int
    chunk: np.ndarray
    version: int = 0


@dataclass
class EnvState:
    """Per-env execution state. ``idx`` is the index into ``chunk`` of the next action."""

    t: int = 0
    chunk: np.ndarray | None = None
    idx: int = 0
    pending: list[Pending] = field(default_factory=list)
    last_action: np.ndarray | None = None
    held_steps: int = 0
    requests: int = 0
    live: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (t0, chunk), ensembles
    version: int = 0  # weight version of the installed chunk (ensembles: the newest)
    action_version: int = 0  # weight version that produced the last action


class ChunkExecutor:
    """Base class; subclasses decide when to ask, how to ask and what to execute.

    Args:
        policy: the policy that predicts ``(B, H, A)`` chunks.
        delay: simulated inference delay d in control steps.
        n_action_steps: s, actions executed from a chunk before the next one is requested
            (default: the policy's).
        explore: use the policy's exploration (collect mode) for plain requests.

    ``before_request``, when set, is called right before each batched policy call: the one
    point between chunks where new weights can be loaded (``envactor.distributed`` does).
    """

    name: ClassVar[str] = "base"

    def __init__(
        self,
        policy: Policy,
        *,
        delay: int = 0,
        n_action_steps: int | None = None,
        explore: bool = False,
    ) -> None:
        horizon = policy.params.horizon
        s = policy.params.n_action_steps if n_action_steps is None else int(n_action_steps)
        if not isinstance(delay, int | np.integer) or delay < 0:
            raise ValueError(f"delay must be an integer >= 0 (control steps), got {delay!r}")
        if not 1 <= s <= horizon:
            raise ValueError(f"n_action_steps s must be in [1, H={horizon}], got {s}")
        self.policy = policy
        self.delay = int(delay)
        self.s = s
        self.horizon = horizon
        self.explore = explore
        self._envs: dict[EnvId, EnvState] = {}
        self.before_request: Callable[[], None] | None = None
        self._observes = getattr(policy, "n_obs_steps", 1) > 1

    # ------------------------------------------------------------------ public
    def act(self, obs: Mapping[EnvId, Mapping[str, Any]]) -> dict[EnvId, np.ndarray]:
        """``{env_id: obs}`` -> ``{env_id: action}`` for one control step of each env."""
        states = {e: self._envs.setdefault(e, EnvState()) for e in obs}
        for st in states.values():
            self._deliver(st)
        asking = [e for e, st in states.items() if self._wants(st)]
        if self._observes and len(asking) < len(states):
            replanning = set(asking)
            quiet = [e for e in states if e not in replanning]
            ids, batch = stack_observations({e: obs[e] for e in quiet}, self._keys())
            self.policy.observe(batch, env_ids=ids)
        if asking:
            if self.before_request is not None:
                self.before_request()
            version = int(self.policy.weight_version)
            chunks = self._request(asking, {e: obs[e] for e in asking}, states)
            for e, chunk in zip(asking, chunks):
                st = states[e]
                first = st.chunk is None and not st.pending
                ready = st.t + (0 if first else self.delay)
                st.pending.append(Pending(ready, st.t, chunk, version))
                st.requests += 1
                self._deliver(st)
        out = {}
        for e, st in states.items():
            action = self._next_action(st)
            if action is None:  # nothing to execute: zero-order hold of the last command
                st.held_steps += 1
                action = st.last_action if st.last_action is not None else self._rest_action()
            else:
                st.action_version = st.version
            st.last_action = action
            st.t += 1
            out[e] = action
        return out

    def reset(self, env_ids: Sequence[EnvId] | None = None) -> None:
        """Forget the state of ``env_ids`` only (all when None), policy per-env state included."""
        if env_ids is None:
            self._envs.clear()
        else:
            for e in env_ids:
                self._envs.pop(e, None)
        self.policy.reset(env_ids)

    def action_version(self, env_id: EnvId) -> int:
        """Weight version of the chunk that produced ``env_id``'s last action (held: the
        version of the action being held)."""
        st = self._envs.get(env_id)
        return 0 if st is None else st.action_version

    def episode_stats(self, env_id: EnvId) -> dict[str, int]:
        """Counters of the env's current episode: held steps and chunk requests."""
        st = self._envs.get(env_id, EnvState())
        return {"held_steps": st.held_steps, "requests": st.requests}

    # ------------------------------------------------------------------ strategy hooks
    def _wants(self, st: EnvState) -> bool:
        """Ask for a chunk now? Default: none in flight, and none yet or s actions executed."""
        return not st.pending and (st.chunk is None or st.idx >= self.s)

    def _request(
        self,
        env_ids: list[EnvId],
        obs: Mapping[EnvId, Mapping[str, Any]],
        states: Mapping[EnvId, EnvState],
    ) -> np.ndarray:
        """One batched policy call for ``env_ids``; returns their chunks ``(B, H, A)``."""
        ids, batch = stack_observations(obs, self._keys())
        return self.policy.predict(batch, env_ids=ids, explore=self.explore)

    def _keys(self) -> list[str]:
        return list(self.policy.input_features)

    def _deliver(self, st: EnvState) -> None:
        """Install pending chunks whose time has come (default: newest wins, stale skipped)."""
        while st.pending and st.pending[0].ready <= st.t:
            p = st.pending.pop(0)
            st.chunk, st.version = p.chunk, p.version
            st.idx = self._start_index(st, p)

    def _start_index(self, st: EnvState, p: Pending) -> int:
        """Index of the new chunk to execute first when it is installed at step ``st.t``."""
        return st.t - p.t0

    def _next_action(self, st: EnvState) -> np.ndarray | None:
        """The action to run at this step, or None to hold the last one."""
        if st.chunk is None or st.idx >= self.horizon:
            return None
        a = st.chunk[st.idx]
        st.idx += 1
        return a

    def _rest_action(self) -> np.ndarray:
        return np.zeros(self.policy.params.action_dim, dtype=np.float32)


def make_executor(name: str, policy: Policy, **kwargs: Any) -> ChunkExecutor:
    """Build the executor registered as ``name`` (``EXECUTORS.names()`` lists them)."""
    return EXECUTORS.get(name)(policy, **kwargs)
