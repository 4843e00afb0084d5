"""The per-env path: one control step of an executor whose rules are written per env.

A plugin executor that overrides the per-env rules (``_wants``, ``_deliver``,
``_start_index``, ``_next_action``, ``_remainder`` or ``_request``) over :class:`EnvState` runs
here, one :class:`EnvState` per env slot, exactly as those rules say; the built-in executors
take the array path of ``ChunkExecutor``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from envactor.policy.modes import stack_observations
from envactor.runtime.executors.state import EnvState, Pending

if TYPE_CHECKING:
    from envactor.runtime.executors.base import ChunkExecutor, EnvId


def states_of(ex: ChunkExecutor, env_ids: Sequence[EnvId]) -> list[EnvState]:
    """The per-env states of ``env_ids`` (new ones for ids without state)."""
    slots = ex._table.lookup(env_ids)[0].tolist()
    states = ex._states
    out = []
    for s in slots:
        st = states.get(s)
        if st is None:
            st = states[s] = EnvState()
        out.append(st)
    return out


def act_per_env(
    ex: ChunkExecutor, env_ids: Sequence[EnvId], obs: Sequence[Mapping[str, Any]]
) -> list[np.ndarray]:
    """One control step of ``env_ids`` (``obs[j]`` is env j's observation) through ``ex``'s
    per-env rules; one action per env."""
    states = states_of(ex, env_ids)
    by_env = dict(zip(env_ids, states))
    for st in states:
        ex._deliver(st)
    asking = [e for e, st in by_env.items() if ex._wants(st)]
    rows = dict(zip(env_ids, obs))
    if ex._observes and len(asking) < len(states):
        replanning = set(asking)
        quiet = [e for e in env_ids if e not in replanning]
        ids, batch = stack_observations({e: rows[e] for e in quiet}, ex._keys())
        ex.policy.observe(batch, env_ids=ids)
    if asking:
        if ex.before_request is not None:
            ex.before_request()
        version = int(ex.policy.weight_version)
        chunks = ex._request(asking, {e: rows[e] for e in asking}, by_env)
        for e, chunk in zip(asking, chunks):
            st = by_env[e]
            first = st.chunk is None and not st.pending
            ready = st.t + (0 if first else ex.delay)
            st.pending.append(Pending(ready, st.t, chunk, version))
            st.requests += 1
            ex._deliver(st)
    out = []
    for st in states:
        action = ex._next_action(st)
        if action is None:  # nothing to execute: zero-order hold of the last command
            st.held_steps += 1
            action = st.last_action if st.last_action is not None else ex._rest_action()
        else:
            st.action_version = st.version
        st.last_action = action
        st.t += 1
        out.append(action)
    return out
