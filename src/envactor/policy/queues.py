"""Per-environment queues of pending actions (one queue per env id, never one for the batch)."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable

import numpy as np


class ChunkQueues:
    """Pending actions per env id; ``reset(env_ids)`` clears only those envs."""

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[np.ndarray]] = {}

    def needs_chunk(self, env_id: Hashable) -> bool:
        """True when ``env_id`` has no pending action."""
        q = self._queues.get(env_id)
        return not q

    def push(self, env_id: Hashable, actions: np.ndarray) -> None:
        """Queue ``actions`` (shape ``(s, A)``) for ``env_id``, replacing what was pending."""
        self._queues[env_id] = deque(actions)

    def pop(self, env_id: Hashable) -> np.ndarray:
        """The next pending action of ``env_id``."""
        q = self._queues.get(env_id)
        if not q:
            raise KeyError(f"env id {env_id!r} has no pending action")
        return q.popleft()

    def reset(self, env_ids: Iterable[Hashable] | None = None) -> None:
        """Forget pending actions of ``env_ids`` (all envs when None)."""
        if env_ids is None:
            self._queues.clear()
            return
        for e in env_ids:
            self._queues.pop(e, None)
