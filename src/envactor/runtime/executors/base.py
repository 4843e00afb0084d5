"""Chunk executors: how a stream of predicted chunks becomes one action per env per step.

One registry (``EXECUTORS``) serves every runtime. An executor is two things:

- the policy call (:meth:`ChunkExecutor.guidance` + :meth:`ChunkExecutor.infer`): ``method``
  says how a request conditions on each env's remainder (None: plain ``predict``; ``"guided"``,
  ``"prefix"`` or ``"blend"``: a :class:`~envactor.chunking.GuidanceRequest`). The vector
  actor, the real-time controller and the policy server's requests all go through it;
- the per-env execution rules (``_wants``, ``_deliver``, ``_start_index``, ``_next_action``,
  ``_ran_out``) over an :class:`EnvState` counted in control steps. :meth:`ChunkExecutor.act`
  drives them with a simulated delay; the real-time controller drives the same rules with the
  delays it measures.

A plugin registers a subclass (``@EXECUTORS.register("name")``) and it works in all three.

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

from envactor.chunking.guidance import DEFAULT_MAX_GUIDANCE_WEIGHT, Jacobian
from envactor.chunking.request import (
    DEFAULT_JACOBIAN,
    DEFAULT_SCHEDULE,
    GuidanceMethod,
    GuidanceRequest,
)
from envactor.policy.base import Policy
from envactor.policy.modes import stack_observations
from envactor.registry import Registry

EnvId = Hashable

# third-party executors: an `envactor.executors` entry point `name = "module:Class"`
EXECUTORS: Registry[type[ChunkExecutor]] = Registry(
    "executor", entry_point_group="envactor.executors"
)


@dataclass
class Pending:
    """A chunk in flight: usable from local step ``ready`` on; predicted at step ``t0`` by the
    policy's weights of version ``version`` (the real-time controller fills ``chunk`` and
    ``ready`` when the chunk arrives)."""

    ready: float
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
        schedule, max_guidance_weight: the soft mask and beta of guidance requests (executors
            whose ``method`` is set).

    Class settings: ``method`` (None, ``"guided"``, ``"prefix"`` or ``"blend"``), ``jacobian``
    and ``holds_while_waiting`` (True when the rules hold the last action while a chunk is in
    flight, as ``sync`` does: the real-time health check then allows more held steps).

    ``before_request``, when set, is called right before each batched policy call: the one
    point between chunks where new weights can be loaded (``envactor.distributed`` does).
    """

    name: ClassVar[str] = "base"
    method: ClassVar[GuidanceMethod | None] = None
    jacobian: ClassVar[Jacobian] = DEFAULT_JACOBIAN
    holds_while_waiting: ClassVar[bool] = False

    def __init__(
        self,
        policy: Policy,
        *,
        delay: int = 0,
        n_action_steps: int | None = None,
        explore: bool = False,
        schedule: str = DEFAULT_SCHEDULE,
        max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT,
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
        self.schedule = schedule
        self.max_guidance_weight = float(max_guidance_weight)
        self._envs: dict[EnvId, EnvState] = {}
        self.before_request: Callable[[], None] | None = None
        self._observes = getattr(policy, "n_obs_steps", 1) > 1
        if self.method is not None:  # the settings fail here, not at the first replan
            self.guidance([np.zeros((0, policy.params.action_dim), np.float32)], [0])
        if self.method == "prefix" and not policy.can_prefix():
            raise TypeError(
                f"executor {self.name!r} needs a policy with training-time RTC (the hook "
                f"_prefix_chunk, e.g. flow with prefix_max_delay > 0); got policy {policy.name!r}"
            )

    # ------------------------------------------------------------------ the policy call
    def guidance(
        self,
        remainders: Sequence[np.ndarray],
        delays: Sequence[int],
        executed: Sequence[int | None] | int | None = None,
    ) -> GuidanceRequest | None:
        """The request of this executor for envs with these remainders (index 0 = the next
        action) and delays d; None for executors that do not condition (``method`` None)."""
        if self.method is None:
            return None
        return GuidanceRequest.build(
            remainders, list(delays), horizon=self.horizon, executed=executed,
            schedule=self.schedule, beta=self.max_guidance_weight, jacobian=self.jacobian,
            method=self.method,
        )  # fmt: skip

    def infer(
        self, batch: Mapping[str, Any], env_ids: Sequence[EnvId], request: GuidanceRequest | None
    ) -> np.ndarray:
        """One batched policy call: ``(B, H, A)`` chunks for ``batch`` (observations ``(B, ...)``)
        conditioned on ``request`` (plain ``predict`` when None or without remainders)."""
        if request is None or request.is_empty:
            return self.policy.predict(batch, env_ids=env_ids, explore=self.explore)
        return self.policy.guided_inference(batch, request=request, env_ids=env_ids)

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
        """One batched policy call for ``env_ids``; returns their chunks ``(B, H, A)``. Each
        env's remainder is continued with the simulated delay d (nothing for a first chunk)."""
        ids, batch = stack_observations(obs, self._keys())
        request = None
        if self.method is not None:
            rests = [self._remainder(states[e]) for e in ids]
            delays = [0 if states[e].chunk is None else self.delay for e in ids]
            request = self.guidance(rests, delays)
        return self.infer(batch, ids, request)

    def _remainder(self, st: EnvState) -> np.ndarray:
        """The unexecuted rest ``(L, A)`` of the installed chunk (index 0 = the next action)."""
        if st.chunk is None:
            return np.zeros((0, self.policy.params.action_dim), np.float32)
        return st.chunk[st.idx :]

    def _ran_out(self, st: EnvState) -> bool:
        """After ``_next_action`` gave None: True when the chunk ran out (d > H - s), False when
        holding is the rule's choice."""
        return st.chunk is not None and st.idx >= self.horizon

    def _source_index(self, st: EnvState) -> int:
        """Index into ``st.chunk`` of the action ``_next_action`` just returned."""
        return st.idx - 1

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
