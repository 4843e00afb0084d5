"""Executor state in arrays indexed by env slot, and the table that maps env ids to slots.

An env id gets a slot the first time an executor sees it and keeps it until it is reset (then
the slot is cleared and reused by the next new id). The arrays grow by doubling; a slot's rows
in every array describe that env alone, so a step over many envs is a few numpy operations.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

EnvId = Hashable
Selection = slice | np.ndarray
"""The slots a rule works on: ``slice(0, n)`` when every slot in use takes part (views, the
fast case) or an index array."""


class SlotTable:
    """Env id -> slot, with the slots of the last id list cached (a vector actor asks with the
    same list every step)."""

    def __init__(self) -> None:
        self.index: dict[EnvId, int] = {}
        self.size = 0  # slots ever handed out (the high-water mark)
        self._free: list[int] = []
        self._generation = 0
        self._last_ids: list[EnvId] | None = None
        self._last: tuple[np.ndarray, Selection, np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def get(self, env_id: EnvId) -> int | None:
        """The slot of ``env_id``, or None when it has no state."""
        return self.index.get(env_id)

    def lookup(self, env_ids: Sequence[EnvId]) -> tuple[np.ndarray, Selection, np.ndarray | None]:
        """``(slots, selection, order)`` for ``env_ids``, new ids getting fresh slots.

        ``slots[j]`` is the slot of ``env_ids[j]``. ``selection`` is what the rules work on:
        ``slice(0, size)`` when the ids hold every slot in use, else ``slots``. ``order``
        reorders results computed over ``selection`` into the ids' order (None: no reordering).
        """
        last = self._last
        if last is not None and self._last_ids is not None and self._last_ids == env_ids:
            return last
        index = self.index
        slots = np.empty(len(env_ids), np.int64)
        for j, e in enumerate(env_ids):
            s = index.get(e)
            if s is None:
                s = index[e] = self._free.pop() if self._free else self._next()
            slots[j] = s
        if len(slots) == self.size and not self._free and len(slots):
            selection: Selection = slice(0, self.size)
            order = None if np.array_equal(slots, np.arange(self.size)) else slots
        else:
            selection, order = slots, None
        self._last_ids = list(env_ids)
        self._last = (slots, selection, order)
        return self._last

    def _next(self) -> int:
        self.size += 1
        return self.size - 1

    def release(self, env_ids: Sequence[EnvId] | None) -> list[int]:
        """Forget ``env_ids`` (all when None); the slots they held (to clear)."""
        self._last_ids = self._last = None
        self._generation += 1
        if env_ids is None:
            freed = list(range(self.size))
            self.index.clear()
            self._free.clear()
            self.size = 0
            return freed
        freed = []
        for e in env_ids:
            s = self.index.pop(e, None)
            if s is not None:
                freed.append(s)
                self._free.append(s)
        return freed


class SlotArrays:
    """Named arrays whose first axis is the env slot. ``fields`` maps a name to (trailing
    shape, dtype, value of a clean slot); fields named in ``actions`` hold actions and take the
    dtype of the chunks the policy returns (float32 unless it returns wider)."""

    def __init__(
        self,
        fields: dict[str, tuple[tuple[int, ...], Any, Any]],
        actions: Sequence[str] = (),
        capacity: int = 8,
    ) -> None:
        self._fields = fields
        self._actions = tuple(actions)
        self.capacity = capacity
        self.arrays: dict[str, np.ndarray] = {
            name: np.full((capacity, *shape), fill, dtype)
            for name, (shape, dtype, fill) in fields.items()
        }
        self.__dict__.update(self.arrays)

    def __getattr__(self, name: str) -> np.ndarray:  # the fields, for type checkers
        raise AttributeError(name)

    def ensure(self, size: int) -> None:
        """Room for ``size`` slots (doubling)."""
        if size <= self.capacity:
            return
        cap = max(size, 2 * self.capacity)
        for name, (shape, _, fill) in self._fields.items():
            old = self.arrays[name]
            new = np.full((cap, *shape), fill, old.dtype)
            new[: self.capacity] = old
            self.arrays[name] = new
        self.capacity = cap
        self.__dict__.update(self.arrays)

    def clear(self, slots: Sequence[int] | slice) -> None:
        """Put ``slots`` back to the clean state."""
        for name, (_, _, fill) in self._fields.items():
            self.arrays[name][slots] = fill

    def take_dtype(self, dtype: np.dtype[Any]) -> None:
        """Widen the action fields when the policy's chunks are wider than they are."""
        for name in self._actions:
            arr = self.arrays[name]
            wide = np.result_type(arr.dtype, dtype)
            if wide != arr.dtype:
                self.arrays[name] = arr.astype(wide)
        self.__dict__.update(self.arrays)


def rows_of(selection: Selection) -> np.ndarray:
    """The slot indices of a selection, as an index array."""
    if isinstance(selection, slice):
        return np.arange(selection.start, selection.stop)
    return selection
