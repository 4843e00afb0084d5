"""Chunk executors: how a stream of predicted chunks becomes one action per env per step.

One registry (``EXECUTORS``) serves every runtime. An executor is two things:

- the policy call (:meth:`ChunkExecutor.guidance` + :meth:`ChunkExecutor.infer`): ``method``
  says how a request conditions on each env's remainder (None: plain ``predict``; ``"guided"``,
  ``"prefix"`` or ``"blend"``: a :class:`~envactor.chunking.GuidanceRequest`). The vector
  actor, the real-time controller and the policy server's requests all go through it;
- the execution rules, counted in control steps, in two forms that say the same: per env
  (``_wants``, ``_deliver``, ``_start_index``, ``_next_action``, ``_ran_out`` over an
  :class:`EnvState`: the plugin API, and what the real-time controller drives with the delays it
  measures) and over arrays by env slot (``_wants_slots``, ``_deliver_slots``, ...: what
  :meth:`ChunkExecutor.act` runs for the built-ins). A subclass that overrides a per-env rule
  without its array form runs its per-env rules (``envactor.runtime.executors.per_env``).

A plugin registers a subclass (``@EXECUTORS.register("name")``) and it works in all three.

One executor instance serves many envs; each env id gets a slot in the state arrays the first
time it is seen, until it is reset. Every ``act`` call is one control step: envs whose chunk is
due ask for a new one and exactly those envs go to the policy in ONE batched call (envs that
reset at different times replan at different times). For a policy with observation history
(``n_obs_steps > 1``) the other envs' observations go to ``policy.observe`` in one batched call,
so each env's history holds every step.

Simulated inference delay (d in docs/chunking.md's notation): a chunk requested at local step t from
the observation at t becomes usable at step t + d, and the env keeps stepping meanwhile (what
it executes while waiting is the strategy's business). The first chunk of an episode is
available at once: a robot waits at rest for its first plan; the delay applies to every replan.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
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
from envactor.runtime.executors.per_env import act_per_env, states_of
from envactor.runtime.executors.slot_path import Fields, SlotPath
from envactor.runtime.executors.slots import Selection, SlotTable
from envactor.runtime.executors.state import EnvState, Pending

__all__ = ["EXECUTORS", "ChunkExecutor", "EnvId", "EnvState", "Fields", "Pending", "make_executor"]

EnvId = Hashable

# third-party executors: an `envactor.executors` entry point `name = "module:Class"`
EXECUTORS: Registry[type[ChunkExecutor]] = Registry(
    "executor", entry_point_group="envactor.executors"
)

PER_ENV_RULES = ("_wants", "_deliver", "_start_index", "_next_action", "_remainder", "_request")
"""The per-env rules that ``act`` would otherwise run in array form."""


def _defined_by(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in c.__dict__)


def _has_array_rules(cls: type) -> bool:
    """True when every per-env rule of ``cls`` comes from a class that also gives its array
    form (the nearest class in the MRO that declares ``_slot_rules``, or one above it)."""
    owner = next(c for c in cls.__mro__ if c.__dict__.get("_slot_rules"))
    return all(_defined_by(cls, rule) in owner.__mro__ for rule in PER_ENV_RULES)


class ChunkExecutor(SlotPath):
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
    ``vectorized`` (set per class) says whether ``act`` runs the array rules.

    ``before_request``, when set, is called right before each batched policy call: the one
    point between chunks where new weights can be loaded (``envactor.distributed`` does).
    """

    name: ClassVar[str] = "base"
    method: ClassVar[GuidanceMethod | None] = None
    jacobian: ClassVar[Jacobian] = DEFAULT_JACOBIAN
    holds_while_waiting: ClassVar[bool] = False
    vectorized: ClassVar[bool] = True
    _slot_rules: ClassVar[bool] = True  # this class gives the array form of its rules

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.vectorized = _has_array_rules(cls)
        if "_first_action_now" not in cls.__dict__ and (
            "_next_actions" in cls.__dict__ or "_start_slots" in cls.__dict__
        ):
            cls._first_action_now = False  # array rules of its own: no shortcut

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
        self.action_dim = int(policy.params.action_dim)
        self.explore = explore
        self.schedule = schedule
        self.max_guidance_weight = float(max_guidance_weight)
        self.before_request: Callable[[], None] | None = None
        self._observes = getattr(policy, "n_obs_steps", 1) > 1
        self._table = SlotTable()
        self._arr = self._new_arrays()
        self._states: dict[int, EnvState] = {}  # the per-env path's state, by slot
        self._deferred: tuple[Selection, list[EnvId], dict[str, Any], Any, Any] | None = None
        self._in_flight = 0  # chunks in flight over all slots (none: nothing to deliver)
        if self.method is not None:  # the settings fail here, not at the first replan
            self.guidance([np.zeros((0, policy.params.action_dim), np.float32)], [0])
        if self.method == "prefix" and not policy.can_prefix():
            raise TypeError(
                f"executor {self.name!r} needs a policy with training-time RTC (the hook "
                f"_prefix_chunk, e.g. flow with prefix_max_delay > 0); got policy {policy.name!r}"
            )

    @property
    def _envs(self) -> dict[EnvId, int]:
        """Env id -> slot of every env with state."""
        return self._table.index

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
        self.flush()
        ids = list(obs)
        if not ids:
            return {}
        if not self.vectorized:
            return dict(zip(ids, act_per_env(self, ids, [obs[e] for e in ids])))
        keys = self._keys()

        def take(pos: np.ndarray | None) -> dict[str, np.ndarray]:
            chosen = ids if pos is None else [ids[j] for j in pos]
            return stack_observations({e: obs[e] for e in chosen}, keys)[1]

        return dict(zip(ids, self._act_arrays(ids, take, False)))

    def act_batch(
        self, env_ids: Sequence[EnvId], obs: Mapping[str, Any], *, defer: bool = False
    ) -> np.ndarray:
        """One control step of ``env_ids`` with their observations batched (``obs[key]`` is
        ``(B, ...)``, row j for ``env_ids[j]``): their actions ``(B, A)``, the results of
        :meth:`act`.

        ``defer=True`` lets the policy call wait until :meth:`flush` when no env needs the new
        chunks at this step (every replan has d >= 1 steps of delay): the caller steps the envs
        meanwhile (an asynchronous vector env). The next call flushes first in any case."""
        self.flush()
        ids = list(env_ids)
        if not ids:
            return np.zeros((0, self.action_dim), np.float32)
        if not self.vectorized:
            rows = [{k: v[j] for k, v in obs.items()} for j in range(len(ids))]
            return np.stack(act_per_env(self, ids, rows))
        keys = self._keys()
        missing = [k for k in keys if k not in obs]
        if missing:
            raise KeyError(
                f"executor {self.name!r}: observations are missing keys {missing}; expected the "
                f"policy's input features {keys}, got {sorted(obs)}"
            )

        def take(pos: np.ndarray | None) -> dict[str, np.ndarray]:
            if pos is None:  # the policy gets arrays of its own, as from act()
                return {k: np.array(obs[k]) for k in keys}
            return {k: np.asarray(obs[k])[pos] for k in keys}

        return self._act_arrays(ids, take, defer)

    def flush(self) -> None:
        """Run the policy call that :meth:`act_batch` deferred, if any."""
        job = self._deferred
        if job is not None:
            self._deferred = None
            rows, ids, batch, request, where = job
            self._fill_slots(rows, self._call(batch, ids, request), where)

    def reset(self, env_ids: Sequence[EnvId] | None = None) -> None:
        """Forget the state of ``env_ids`` only (all when None), policy per-env state included."""
        self.flush()
        ids = None if env_ids is None else list(env_ids)
        freed = self._table.release(ids)
        if ids is None:
            self._arr = self._new_arrays()
            self._states.clear()
            self._in_flight = 0
        elif freed:
            self._in_flight -= self._in_flight_slots(np.array(freed, np.int64))
            self._arr.clear(freed)
            for s in freed:
                self._states.pop(s, None)
        self.policy.reset(ids)

    def action_version(self, env_id: EnvId) -> int:
        """Weight version of the chunk that produced ``env_id``'s last action (held: the
        version of the action being held)."""
        slot = self._table.get(env_id)
        if slot is None:
            return 0
        if not self.vectorized:
            return self._states.get(slot, EnvState()).action_version
        return int(self._arr.action_version[slot])

    def action_versions(self, env_ids: Sequence[EnvId]) -> np.ndarray:
        """:meth:`action_version` of each of ``env_ids`` (that took a step), as an array."""
        if not self.vectorized:
            return np.array([st.action_version for st in states_of(self, env_ids)], np.int64)
        return self._arr.action_version[self._table.lookup(env_ids)[0]]

    def episode_stats(self, env_id: EnvId) -> dict[str, int]:
        """Counters of the env's current episode: held steps and chunk requests."""
        slot = self._table.get(env_id)
        if slot is None:
            return {"held_steps": 0, "requests": 0}
        if not self.vectorized:
            st = self._states.get(slot, EnvState())
            return {"held_steps": st.held_steps, "requests": st.requests}
        arr = self._arr
        return {"held_steps": int(arr.held[slot]), "requests": int(arr.requests[slot])}

    # ------------------------------------------------------------------ per-env rules
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
