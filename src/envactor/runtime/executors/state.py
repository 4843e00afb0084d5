"""Per-env execution state: what an executor's per-env rules (the plugin API, and what the
real-time controller drives) read and write. The vector path keeps the same state in arrays by
env slot (``envactor.runtime.executors.slots``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
