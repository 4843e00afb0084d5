"""The array path of the executors: one control step of many envs over their slots, and the base
rules (``naive_async``'s, and what ``blend`` and the RTC executors time by) in array form.

:class:`SlotPath` is a mixin of :class:`~envactor.runtime.executors.base.ChunkExecutor`. A step
delivers the chunks that are due, asks the rule which envs want a new one, makes ONE policy call
for exactly those (or leaves it for ``flush`` while the envs step, when none is needed before
d steps), and takes each env's action; the rules read and write :class:`SlotArrays` fields by
slot. A strategy with other rules overrides the ``_..._slots`` methods (``sync``,
``temporal_ensemble``), beside its per-env rules.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from envactor.runtime.executors.slots import Selection, SlotArrays, SlotTable, rows_of

if TYPE_CHECKING:
    from envactor.chunking.request import GuidanceRequest
    from envactor.policy.base import Policy

EnvId = Hashable
Fields = dict[str, tuple[tuple[int, ...], Any, Any]]
RowsOf = Callable[[np.ndarray | None], dict[str, np.ndarray]]


class SlotPath:
    """The array path (a mixin: ``self`` is a ``ChunkExecutor``)."""

    _first_action_now: ClassVar[bool] = True
    """A chunk installed at the step it was asked starts at index 0 and its first action runs
    at once (the base rules and sync's): the step then skips ``_next_actions``."""

    if TYPE_CHECKING:  # what the path uses of ChunkExecutor
        name: ClassVar[str]
        method: ClassVar[str | None]
        policy: Policy
        delay: int
        s: int
        horizon: int
        action_dim: int
        before_request: Callable[[], None] | None
        _observes: bool
        _table: SlotTable
        _arr: SlotArrays
        _deferred: tuple[Selection, list[EnvId], dict[str, Any], Any, Any] | None
        _in_flight: int

        def guidance(
            self, remainders: Any, delays: Any, executed: Any = None
        ) -> GuidanceRequest | None: ...
        def infer(self, batch: Any, env_ids: Any, request: GuidanceRequest | None) -> Any: ...
        def _rest_action(self) -> np.ndarray: ...

    # ------------------------------------------------------------------ one step
    def _act_arrays(self, ids: list[EnvId], take: RowsOf, defer: bool) -> np.ndarray:
        """One step over slots; ``take(positions, or None for all)`` gives the observations
        of those of ``ids`` (the policy's keys, batched, arrays of their own)."""
        slots, sel, order = self._table.lookup(ids)
        arr = self._arr
        arr.ensure(self._table.size)
        if self._in_flight:
            self._in_flight -= self._deliver_slots(sel)
        wants = self._wants_slots(sel)
        asking = wants if order is None else wants[order]  # in the order of ids
        n, k = len(ids), int(np.count_nonzero(asking))
        if self._observes and k < n:
            quiet = np.flatnonzero(~asking)
            self.policy.observe(take(quiet), env_ids=[ids[j] for j in quiet])
        if k == n:  # every env asks
            rows = sel if order is None else slots
            chunks = self._ask(rows, ids, take(None), defer)
            if chunks is not None and self._first_action_now:
                # each env runs its new chunk's first action now (its _next_action does so)
                arr.idx[rows] = 1
                arr.action_version[rows] = arr.version[rows]
                actions = chunks[:, 0]
                arr.last[rows] = actions
                arr.t[rows] += 1
                return actions.copy()
        elif k:
            pos = np.flatnonzero(asking)
            self._ask(slots[pos], [ids[j] for j in pos], take(pos), defer)
        actions, valid = self._next_actions(sel)
        if valid.all():
            arr.action_version[sel] = arr.version[sel]
        else:  # nothing to execute: zero-order hold of the last command
            arr.held[sel] += ~valid
            held = np.where((arr.t[sel] > 0)[:, None], arr.last[sel], self._rest_action())
            actions = np.where(valid[:, None], actions, held)
            arr.action_version[sel] = np.where(valid, arr.version[sel], arr.action_version[sel])
        arr.last[sel] = actions
        arr.t[sel] += 1
        return actions if order is None else actions[order]

    def _ask(
        self, rows: Selection, ids: list[EnvId], batch: dict[str, Any], defer: bool
    ) -> np.ndarray | None:
        """Request chunks for slots ``rows`` (in the order of ``ids``): in flight from now,
        made now or, with ``defer`` and none of them due at this step, at :meth:`flush`.
        Returns the chunks when every one of them was installed at once."""
        if self.before_request is not None:
            self.before_request()
        version = int(self.policy.weight_version)
        arr = self._arr
        fresh = self._fresh_slots(rows) if self.delay else None
        request = None
        if self.method is not None:
            delays = np.where(arr.has_chunk[rows], self.delay, 0).tolist()
            request = self.guidance(self._remainder_slots(rows), delays)
        if fresh is None or fresh.all():  # every chunk is due now: installed as it comes
            chunks = self._call(batch, ids, request)
            self._install_slots(rows, chunks, version)
            arr.requests[rows] += 1
            return chunks
        else:
            ready = arr.t[rows] + np.where(fresh, 0, self.delay)
            where = self._pend_slots(rows, ready, version)
            self._in_flight += len(ids)
            if defer and not fresh.any():
                self._deferred = (rows, ids, batch, request, where)
            else:
                self._fill_slots(rows, self._call(batch, ids, request), where)
                self._in_flight -= self._deliver_slots(rows)
        arr.requests[rows] += 1
        return None

    def _call(self, batch: dict[str, Any], ids: list[EnvId], request: Any) -> np.ndarray:
        """The policy call (``infer``), its chunks checked."""
        chunks = np.asarray(self.infer(batch, ids, request))
        want = (len(ids), self.horizon, self.action_dim)
        if chunks.shape != want:
            raise ValueError(
                f"executor {self.name!r}: the policy call returned chunks of shape "
                f"{chunks.shape} for {len(ids)} envs; expected {want} (B, H, A)"
            )
        if chunks.dtype != self._arr.last.dtype:
            self._arr.take_dtype(chunks.dtype)
        return chunks

    def _new_arrays(self) -> SlotArrays:
        fields, actions = self._slot_fields()
        a = self.action_dim
        fields.update({
            "t": ((), np.int64, 0),  # local control steps since the env's reset
            "held": ((), np.int64, 0),
            "requests": ((), np.int64, 0),
            "version": ((), np.int64, 0),
            "action_version": ((), np.int64, 0),
            "has_chunk": ((), np.bool_, False),
            "last": ((a,), np.float32, 0.0),  # the last action (held when none is due)
        })  # fmt: skip
        return SlotArrays(fields, (*actions, "last"))

    # ------------------------------------------------------------------ array rules
    def _slot_fields(self) -> tuple[Fields, tuple[str, ...]]:
        """The strategy's own state arrays (name -> (shape, dtype, clean value)) and which of
        them hold actions. Default: the installed chunk, its next index and one chunk in flight."""
        h, a = self.horizon, self.action_dim
        fields: Fields = {
            "chunk": ((h, a), np.float32, 0.0),
            "idx": ((), np.int64, 0),
            "pend": ((), np.bool_, False),
            "pend_ready": ((), np.int64, 0),
            "pend_t0": ((), np.int64, 0),
            "pend_version": ((), np.int64, 0),
            "pend_chunk": ((h, a), np.float32, 0.0),
        }
        return fields, ("chunk", "pend_chunk")

    def _wants_slots(self, sel: Selection) -> np.ndarray:
        """``_wants`` of slots ``sel``."""
        arr = self._arr
        return ~arr.pend[sel] & (~arr.has_chunk[sel] | (arr.idx[sel] >= self.s))

    def _fresh_slots(self, rows: Selection) -> np.ndarray:
        """True where a slot has no chunk and none in flight (its next one comes at once)."""
        return ~self._arr.has_chunk[rows] & ~self._arr.pend[rows]

    def _pend_slots(self, rows: Selection, ready: np.ndarray, version: int) -> Any:
        """Chunks in flight for ``rows`` from now; returns where they go, for ``_fill_slots``
        (which gets their content, now or after the envs stepped)."""
        arr = self._arr
        arr.pend[rows] = True
        arr.pend_ready[rows] = ready
        arr.pend_t0[rows] = arr.t[rows]
        arr.pend_version[rows] = version
        return None

    def _fill_slots(self, rows: Selection, chunks: np.ndarray, where: Any) -> None:
        self._arr.pend_chunk[rows] = chunks

    def _install_slots(self, rows: Selection, chunks: np.ndarray, version: int) -> None:
        """Install ``chunks`` asked at this very step (they are due now): what
        ``_pend_slots`` + ``_fill_slots`` + ``_deliver_slots`` would do, in one go."""
        arr = self._arr
        arr.chunk[rows] = chunks
        arr.version[rows] = version
        arr.idx[rows] = self._start_slots(rows, arr.t[rows])
        arr.has_chunk[rows] = True

    def _in_flight_slots(self, rows: np.ndarray) -> int:
        """How many chunks are in flight for slots ``rows``."""
        return int(np.count_nonzero(self._arr.pend[rows]))

    def _deliver_slots(self, sel: Selection) -> int:
        """``_deliver`` of slots ``sel``: the chunk in flight installed once due; returns how
        many were installed."""
        arr = self._arr
        due = arr.pend[sel] & (arr.pend_ready[sel] <= arr.t[sel])
        count = int(np.count_nonzero(due))
        if not count:
            return 0
        rows = sel if count == len(due) else rows_of(sel)[due]
        arr.chunk[rows] = arr.pend_chunk[rows]
        arr.version[rows] = arr.pend_version[rows]
        arr.idx[rows] = self._start_slots(rows, arr.pend_t0[rows])
        arr.has_chunk[rows] = True
        arr.pend[rows] = False
        return count

    def _start_slots(self, rows: Selection, t0: np.ndarray) -> np.ndarray | int:
        """``_start_index`` of slots ``rows`` installing chunks asked at steps ``t0``."""
        return self._arr.t[rows] - t0

    def _next_actions(self, sel: Selection) -> tuple[np.ndarray, np.ndarray]:
        """``_next_action`` of slots ``sel``: the actions ``(n, A)`` and where they are valid
        (elsewhere the last action is held)."""
        arr = self._arr
        idx = arr.idx[sel]
        valid = arr.has_chunk[sel] & (idx < self.horizon)
        actions = arr.chunk[rows_of(sel), np.minimum(idx, self.horizon - 1)]
        arr.idx[sel] = idx + valid
        return actions, valid

    def _remainder_slots(self, rows: Selection) -> list[np.ndarray]:
        """``_remainder`` of slots ``rows`` (copies)."""
        arr = self._arr
        empty = np.zeros((0, self.action_dim), arr.chunk.dtype)
        has, idx = arr.has_chunk[rows].tolist(), arr.idx[rows].tolist()
        slots = rows_of(rows).tolist()
        return [arr.chunk[r, i:].copy() if h else empty for r, i, h in zip(slots, idx, has)]
