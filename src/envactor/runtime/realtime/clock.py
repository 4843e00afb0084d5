"""Time sources of the real-time controller: the wall clock, and a virtual clock that makes a
run deterministic (step-driven mode) for tests and simulation.

With :class:`VirtualClock` time moves only when the control loop advances it to its next step,
and before every step the control loop waits until the inference thread has settled: it is
waiting for its next snapshot, or it has delivered, or it is asleep on the clock until a later
time (a policy simulates latency with ``clock.sleep(seconds)``; real compute takes no virtual
time). A run is then a pure function of the policy's chunks and simulated latencies, whatever
the load on the machine.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Clock", "VirtualClock"]


class Clock:
    """The wall clock (``time.monotonic``), the controller's default.

    ``now()`` reads the time, ``sleep(seconds)`` lets it pass (what a simulated latency calls),
    ``wait_until(t)`` is the control loop's pacing and ``release()`` wakes every sleeper when a
    run ends (nothing to do for the wall clock).
    """

    virtual = False

    def now(self) -> float:
        """Seconds, monotonic."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        if seconds > 0:
            time.sleep(seconds)

    def wait_until(self, t: float) -> None:
        """Return at time ``t`` (at once when it has passed)."""
        self.sleep(t - self.now())

    def release(self) -> None:
        """Wake every thread asleep on this clock (the run is over)."""
        return None

    def begin(self) -> None:
        """A run starts on the calling thread (which drives a virtual clock)."""
        return None

    def asleep_past(self, t: float) -> bool:
        """True when a thread sleeps on this clock until after ``t`` (unknown here: False)."""
        return False


class VirtualClock(Clock):
    """Simulated time for deterministic runs; see the module docstring.

    The thread that called :meth:`begin` (the controller's) drives it: its ``wait_until`` and
    ``sleep`` move the time forward and wake the sleepers whose time has come. ``sleep`` on any
    other thread (e.g. a policy simulating its latency on the inference thread) blocks until
    the time has moved past its wake-up time, or until :meth:`release`.

    Args:
        start: the time at creation.
        real_timeout: wall-clock seconds a ``sleep`` may block (a safety net against a run that
            never advances the clock); a sleep that passes it raises ``TimeoutError``.
    """

    virtual = True

    def __init__(self, start: float = 0.0, *, real_timeout: float = 60.0) -> None:
        self._t = float(start)
        self._cond = threading.Condition()
        self._wakes: list[float] = []
        self._released = False
        self._driver: int | None = None
        self.real_timeout = float(real_timeout)

    def now(self) -> float:
        with self._cond:
            return self._t

    def sleep(self, seconds: float) -> None:
        with self._cond:
            wake = self._t + max(0.0, float(seconds))
            if threading.get_ident() == self._driver:
                self._advance(wake)
                return
            self._wakes.append(wake)
            deadline = time.monotonic() + self.real_timeout
            try:
                while self._t < wake and not self._released:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"virtual clock: a sleep until t={wake:.6f} s waited "
                            f"{self.real_timeout} s of real time at t={self._t:.6f} s "
                            "(nothing advanced the clock)"
                        )
                    self._cond.wait(min(left, 1.0))
            finally:
                self._wakes.remove(wake)
                self._cond.notify_all()

    def wait_until(self, t: float) -> None:
        with self._cond:
            self._advance(t)

    def _advance(self, t: float) -> None:
        if t > self._t:
            self._t = float(t)
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._released = True
            self._cond.notify_all()

    def begin(self) -> None:
        with self._cond:
            self._released = False
            self._driver = threading.get_ident()

    def asleep_past(self, t: float) -> bool:
        with self._cond:
            return any(w > t for w in self._wakes)
