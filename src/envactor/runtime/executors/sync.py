"""Synchronous receding horizon: predict H, execute s, then wait for the next chunk."""

from __future__ import annotations

import numpy as np

from envactor.runtime.executors.base import EXECUTORS, ChunkExecutor, EnvState, Pending
from envactor.runtime.executors.slots import Selection, rows_of


@EXECUTORS.register("sync")
class SyncExecutor(ChunkExecutor):
    """Execute s actions of each chunk; while a replan is in flight (d steps) the world keeps
    going with the last action held (zero-order hold, counted in ``held_steps``); the chunk
    then runs from its first action, computed from the observation d steps old."""

    name = "sync"
    holds_while_waiting = True
    _slot_rules = True
    _first_action_now = True  # a new chunk runs from index 0, nothing in flight

    def _start_index(self, st: EnvState, p: Pending) -> int:
        return 0

    def _next_action(self, st: EnvState) -> np.ndarray | None:
        if st.pending or st.chunk is None or st.idx >= self.s:
            return None
        a = st.chunk[st.idx]
        st.idx += 1
        return a

    def _ran_out(self, st: EnvState) -> bool:
        return False  # holding while the next chunk is computed is the rule, not a miss

    # the same rules over slots
    def _start_slots(self, rows: Selection, t0: np.ndarray) -> int:
        return 0

    def _next_actions(self, sel: Selection) -> tuple[np.ndarray, np.ndarray]:
        arr = self._arr
        idx = arr.idx[sel]
        valid = ~arr.pend[sel] & arr.has_chunk[sel] & (idx < self.s)
        actions = arr.chunk[rows_of(sel), np.minimum(idx, self.horizon - 1)]
        arr.idx[sel] = idx + valid
        return actions, valid
