"""Health limits of a real-time run: a controller that keeps its loops alive but does not
control (it holds the last action on most steps, its chunks keep running out, its steps keep
ending after the next was due) is stopped and reported as failed, not as ``ok``.

Each limit is checked at every control step once ``grace_s`` seconds of the run have passed
(the fractions of the first few steps are noise), and once more over the whole run when it ends
normally (so a run shorter than the grace period is judged too). A limit passed ends the run as
a safe stop whose ``stop_reason`` names it (``held_fraction``, ``missed_chunks``,
``missed_deadlines``) and whose ``error`` gives the measured value and the limit.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from envactor.runtime.realtime.telemetry import Telemetry

__all__ = ["LIMIT_STOPS", "HealthLimits", "HealthMonitor"]

LIMIT_STOPS = ("held_fraction", "missed_chunks", "missed_deadlines")
"""Stop reasons of a run that passed a health limit."""

Breach = tuple[str, str, dict[str, float | int | str]]
"""(stop reason, message, ``{"limit", "measured", "threshold"}``)."""


@dataclass(frozen=True)
class HealthLimits:
    """When a real-time run counts as failed; ``None`` turns a limit off.

    Attributes:
        max_held_fraction: most of the steps (0..1) that may hold the last action instead of
            running a chunk action. ``"auto"``: 0.2, or 0.5 for ``sync``. An asynchronous
            executor holds only when a chunk ran out before the next arrived; at the demo rate
            (50 Hz, H = 8, s = 4) that needs an inference over 80 ms (4 periods), and measured
            runs hold on 0 % of steps, so 20 % is a controller that has lost the rate. ``sync``
            holds by design while it waits for each chunk (d of every s + d steps, d = periods
            of latency, 0 to 20 % measured at 50 Hz); over 50 % means inference takes longer
            than the s actions it runs between requests.
        max_missed_chunks: most chunks that may run out before the next arrived within any
            ``missed_chunk_window_s`` seconds. A healthy run misses none (above: 4 periods of
            slack); a few isolated misses (a GC pause, a loaded machine) pass, a policy too
            slow for the rate (one miss per chunk, 12 a second at 50 Hz) trips it at once.
        missed_chunk_window_s: the window of ``max_missed_chunks``.
        max_missed_deadline_fraction: most of the steps (0..1) that may end after the next step
            was due. Measured 0 % at 50 Hz; 20 % means the control loop cannot keep the rate
            (100 kHz: 87 %).
        grace_s: seconds from the start of a run before the limits are checked at every step.
    """

    max_held_fraction: float | Literal["auto"] | None = "auto"
    max_missed_chunks: int | None = 5
    missed_chunk_window_s: float = 10.0
    max_missed_deadline_fraction: float | None = 0.2
    grace_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_held_fraction", "max_missed_deadline_fraction"):
            value = getattr(self, name)
            if value is None or (name == "max_held_fraction" and value == "auto"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name}: expected a number in [0, 1] or None, got {value!r}")
            if not 0.0 <= value <= 1.0:  # also refuses nan
                raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
        chunks = self.max_missed_chunks
        if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, int)):
            raise TypeError(f"max_missed_chunks: expected an int >= 0 or None, got {chunks!r}")
        if chunks is not None and chunks < 0:
            raise ValueError(f"max_missed_chunks: expected an int >= 0, got {chunks}")
        if not (math.isfinite(self.missed_chunk_window_s) and self.missed_chunk_window_s > 0):
            raise ValueError(
                f"missed_chunk_window_s: expected a finite number > 0, "
                f"got {self.missed_chunk_window_s!r}"
            )
        if not (math.isfinite(self.grace_s) and self.grace_s >= 0):
            raise ValueError(f"grace_s: expected a finite number >= 0, got {self.grace_s!r}")

    def held_limit(self, executor: str, holds: bool | None = None) -> float | None:
        """``max_held_fraction`` with ``"auto"`` resolved for ``executor``: 0.5 for one that
        holds while a chunk is in flight (``holds``; default: what the registered executor of
        that name says, as ``sync`` does), else 0.2."""
        if self.max_held_fraction == "auto":
            if holds is None:
                from envactor.runtime.executors import EXECUTORS

                holds = (
                    executor in EXECUTORS.names() and EXECUTORS.get(executor).holds_while_waiting
                )
            return 0.5 if holds else 0.2
        return self.max_held_fraction


class HealthMonitor:
    """Applies :class:`HealthLimits` to one run's :class:`Telemetry` (one call per step)."""

    def __init__(
        self, limits: HealthLimits, executor: str, start: float, holds: bool | None = None
    ) -> None:
        self.limits, self.start = limits, start
        self.held_limit = limits.held_limit(executor, holds)
        self._missed_seen = 0
        self._missed_at: deque[float] = deque()

    def check(self, tel: Telemetry, now: float, *, final: bool = False) -> Breach | None:
        """The first limit ``tel`` passes at time ``now``; None when healthy or in the grace
        period (``final``: the run is over, judge it whatever its length)."""
        lim = self.limits
        while self._missed_seen < tel.missed_chunks:
            self._missed_seen += 1
            self._missed_at.append(now)
        window = lim.missed_chunk_window_s
        while self._missed_at and self._missed_at[0] <= now - window:
            self._missed_at.popleft()
        if tel.steps == 0 or (not final and now - self.start < lim.grace_s - 1e-9):
            return None
        if self.held_limit is not None and tel.held_steps / tel.steps > self.held_limit:
            frac = tel.held_steps / tel.steps
            return ("held_fraction",
                    f"held the last action on {frac:.1%} of steps ({tel.held_steps} of "
                    f"{tel.steps}); limit {self.held_limit:.1%}",
                    {"limit": "max_held_fraction", "measured": round(frac, 6),
                     "threshold": self.held_limit})  # fmt: skip
        if lim.max_missed_chunks is not None and len(self._missed_at) > lim.max_missed_chunks:
            n = len(self._missed_at)
            return ("missed_chunks",
                    f"{n} chunks ran out before the next arrived within {window:g} s "
                    f"({tel.missed_chunks} in the run); limit {lim.max_missed_chunks}",
                    {"limit": "max_missed_chunks", "measured": n,
                     "threshold": lim.max_missed_chunks})  # fmt: skip
        dl = lim.max_missed_deadline_fraction
        if dl is not None and tel.missed_deadlines / tel.steps > dl:
            frac = tel.missed_deadlines / tel.steps
            return ("missed_deadlines",
                    f"{tel.missed_deadlines} of {tel.steps} steps ({frac:.1%}) ended after the "
                    f"next step was due; limit {dl:.1%}",
                    {"limit": "max_missed_deadline_fraction", "measured": round(frac, 6),
                     "threshold": dl})  # fmt: skip
        return None
