"""One control step as the real-time controller hands it to a recorder or a log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["StepRecord"]


@dataclass(frozen=True)
class StepRecord:
    """What one control step read and wrote.

    Attributes:
        step: the step's number in the run (0 first).
        time_s: seconds since the control loop started, when the step began.
        obs: the observation read at this step (the robot's dict; not copied).
        action: the action written, after the safety filter.
        proposed: the action before the filter (the chunk's, the held or the safe one).
        sent: what the robot reports it commanded, when it changed the action; else None.
        source: ``(chunk, index)`` of the action, ``HELD`` ``(-1, -1)`` or ``SAFE``
            ``(-2, -2)``.
        weight_version: the weight version of the chunk the action came from.
        safe_stop: True for the step that wrote the safe action.
        episodes: the robot's count of finished episodes after the write (0 for robots
            that do not count them).
    """

    step: int
    time_s: float
    obs: dict[str, Any]
    action: np.ndarray
    proposed: np.ndarray
    sent: np.ndarray | None
    source: tuple[int, int]
    weight_version: int
    safe_stop: bool
    episodes: int

    @property
    def commanded(self) -> np.ndarray:
        """The action the robot ran: ``sent`` when it reported one, else ``action``."""
        return self.action if self.sent is None else np.asarray(self.sent, self.action.dtype)
