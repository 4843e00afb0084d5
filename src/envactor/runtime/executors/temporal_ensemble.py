"""Temporal ensembling (ACT): query every step, average every prediction for the current step."""

from __future__ import annotations

from typing import Any

import numpy as np

from envactor.policy.base import Policy
from envactor.runtime.executors.base import EXECUTORS, ChunkExecutor, EnvState, Fields
from envactor.runtime.executors.slots import Selection, rows_of

EMPTY, IN_FLIGHT, ARRIVED = 0, 1, 2


@EXECUTORS.register("temporal_ensemble")
class TemporalEnsembleExecutor(ChunkExecutor):
    """Output ``sum_i w_i a_i / sum_i w_i`` over all arrived chunks that cover the current step,
    ``w_i = exp(-m i)`` with i = 0 the OLDEST prediction (ACT, m = 0.01 by default). A chunk is
    requested every step; with delay d each arrives d steps after its observation.

    Over slots, each env's chunks sit in a ring of ``max(H, d + 1)`` entries by the step they
    were asked at (every chunk that can still be due or cover a step)."""

    name = "temporal_ensemble"
    _slot_rules = True

    def __init__(self, policy: Policy, *, m: float = 0.01, **kwargs: object) -> None:
        super().__init__(policy, **kwargs)  # type: ignore[arg-type]
        self.m = float(m)
        # the weights and their sums for n predictions, computed as the per-env rule does
        self._w = [np.exp(-self.m * np.arange(n)) for n in range(self.horizon + 1)]
        self._w_sum = [w.sum() for w in self._w]

    def _wants(self, st: EnvState) -> bool:
        return True

    def _deliver(self, st: EnvState) -> None:
        live = st.live
        while st.pending and st.pending[0].ready <= st.t:
            p = st.pending.pop(0)
            live.append((p.t0, p.chunk))
            st.chunk = p.chunk  # marks "has a chunk" for the base class
            st.version = p.version
        live[:] = [(t0, c) for t0, c in live if t0 + self.horizon > st.t]

    def _next_action(self, st: EnvState) -> np.ndarray | None:
        preds = [c[st.t - t0] for t0, c in st.live if 0 <= st.t - t0 < self.horizon]
        if not preds:
            return None
        w = np.exp(-self.m * np.arange(len(preds)))  # live is oldest first
        return (np.tensordot(w, np.stack(preds), axes=1) / w.sum()).astype(np.float32)

    def _ran_out(self, st: EnvState) -> bool:
        return not any(0 <= st.t - t0 < self.horizon for t0, _ in st.live)

    def _source_index(self, st: EnvState) -> int:
        return st.t - st.live[-1][0]  # the newest chunk's action for this step

    # ------------------------------------------------------------------ the same over slots
    def _slot_fields(self) -> tuple[Fields, tuple[str, ...]]:
        k, h, a = max(self.horizon, self.delay + 1), self.horizon, self.action_dim
        fields: Fields = {
            "ring_chunk": ((k, h, a), np.float32, 0.0),
            "ring_t0": ((k,), np.int64, -1),  # the step each entry was asked at
            "ring_ready": ((k,), np.int64, 0),
            "ring_version": ((k,), np.int64, 0),
            "ring_state": ((k,), np.int8, EMPTY),
            "newest": ((), np.int64, 0),  # ring entry of the newest arrived chunk
        }
        return fields, ("ring_chunk",)

    def _wants_slots(self, sel: Selection) -> np.ndarray:
        return np.ones(len(self._arr.t[sel]), np.bool_)

    def _fresh_slots(self, rows: Selection) -> np.ndarray:
        arr = self._arr
        return ~arr.has_chunk[rows] & ~(arr.ring_state[rows] == IN_FLIGHT).any(1)

    def _pend_slots(self, rows: Selection, ready: np.ndarray, version: int) -> Any:
        arr = self._arr
        rows = rows_of(rows)
        t = arr.t[rows]
        k = t % arr.ring_t0.shape[1]
        arr.ring_t0[rows, k] = t
        arr.ring_ready[rows, k] = ready
        arr.ring_version[rows, k] = version
        arr.ring_state[rows, k] = IN_FLIGHT
        return k

    def _fill_slots(self, rows: Selection, chunks: np.ndarray, where: Any) -> None:
        self._arr.ring_chunk[rows_of(rows), where] = chunks

    def _install_slots(self, rows: Selection, chunks: np.ndarray, version: int) -> None:
        where = self._pend_slots(rows, self._arr.t[rows], version)
        self._fill_slots(rows, chunks, where)
        self._deliver_slots(rows)

    def _in_flight_slots(self, rows: np.ndarray) -> int:
        return int(np.count_nonzero(self._arr.ring_state[rows] == IN_FLIGHT))

    def _deliver_slots(self, sel: Selection) -> int:
        arr = self._arr
        due = (arr.ring_state[sel] == IN_FLIGHT) & (arr.ring_ready[sel] <= arr.t[sel][:, None])
        if not due.any():
            return 0
        rows = rows_of(sel)
        r, k = np.nonzero(due)
        arr.ring_state[rows[r], k] = ARRIVED
        got = due.any(1)  # the newest of those arriving now (asked last) gives the version
        newest = np.where(due, arr.ring_t0[sel], -1).argmax(1)[got]
        rows = rows[got]
        arr.version[rows] = arr.ring_version[rows, newest]
        arr.newest[rows] = newest
        arr.has_chunk[rows] = True
        return len(r)

    def _next_actions(self, sel: Selection) -> tuple[np.ndarray, np.ndarray]:
        arr = self._arr
        rows, h = rows_of(sel)[:, None], self.horizon
        t = arr.t[sel][:, None]
        t0 = t - (h - 1) + np.arange(h)  # (n, H): the steps whose chunks cover t, oldest first
        k = t0 % arr.ring_t0.shape[1]
        live = (t0 >= 0) & (arr.ring_t0[rows, k] == t0) & (arr.ring_state[rows, k] == ARRIVED)
        preds = arr.ring_chunk[rows, k, t - t0]  # (n, H, A)
        count = live.sum(1)
        first = np.argsort(~live, axis=1, kind="stable")  # the live ones first, oldest first
        packed = np.take_along_axis(preds, first[..., None], 1)
        actions = np.zeros((len(count), self.action_dim), np.float32)
        for n in np.unique(count[count > 0]).tolist():
            g = count == n  # one product per count, as the per-env rule computes it
            w = np.broadcast_to(self._w[n], (int(g.sum()), 1, n))
            num = np.matmul(w, packed[g, :n].astype(np.float64))[:, 0]
            actions[g] = (num / self._w_sum[n]).astype(np.float32)
        return actions, count > 0

    def _remainder_slots(self, rows: Selection) -> list[np.ndarray]:
        arr, rows = self._arr, rows_of(rows)
        empty = np.zeros((0, self.action_dim), arr.ring_chunk.dtype)
        has, newest = arr.has_chunk[rows].tolist(), arr.newest[rows].tolist()
        return [arr.ring_chunk[r, i].copy() if ok else empty for r, i, ok in zip(rows, newest, has)]
