"""The chunk the real-time controller executes, shared by its two loops (the shared state and
condition variable of Algorithm 1 of the real-time chunking paper), and the policy call that
makes the next chunk.

Index i of a chunk snapshotted after control step t0 is the action for step ``t0 + i``: the
chunk is swapped in at index ``steps now - t0``, so no action runs twice or is skipped.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from envactor.policy.base import Policy, PolicyError
from envactor.runtime.realtime_clock import Clock
from envactor.runtime.realtime_telemetry import ChunkRecord, Telemetry

HELD = (-1, -1)
"""Source of a step that held the last action (no chunk action was due)."""
SAFE = (-2, -2)
"""Source of the safe action written on a safe stop."""
Fault = tuple[str, str]
"""(stop reason, message)."""

GUIDED = {"rtc": ("auto", "vjp"), "rtc_identity": ("auto", "identity"), "blend": ("blend", "vjp")}
"""Executors that condition on the remainder: (guided_inference method, jacobian)."""


@dataclass(frozen=True)
class Snapshot:
    """What the inference loop takes from the control loop for one chunk."""

    obs: dict[str, Any]
    remainder: np.ndarray  # the unexecuted rest of the current chunk, (H - s, A)
    executed: int  # s: actions of the current chunk executed (index of the next one)
    step: int  # t0: control steps completed
    delay: int  # d: the forecast
    time: float


def infer_chunk(
    policy: Policy, executor: str, obs: dict[str, Any], snap_remainder: np.ndarray, d: int, s: int,
    schedule: str = "exp", max_guidance_weight: float = 5.0,
) -> np.ndarray:  # fmt: skip
    """One chunk ``(H, A)`` for one observation; guided on the remainder when the executor is.

    A chunk of the wrong shape or with non-finite values is a :class:`PolicyError` (never
    replayed to the robot).
    """
    batch = {k: np.asarray(obs[k])[None] for k in policy.input_features}
    if executor in GUIDED and len(snap_remainder):
        method, jac = GUIDED[executor]
        out = policy.guided_inference(
            batch, prev_chunk=[snap_remainder], delay=[d], min_num_actions_executed=s,
            method=method, jacobian=jac, schedule=schedule,  # type: ignore[arg-type]
            max_guidance_weight=max_guidance_weight,
        )  # fmt: skip
    else:
        out = policy.predict(batch)
    chunk = np.asarray(out, np.float32)[0]
    want = policy.action_shape
    if chunk.shape != want:
        raise PolicyError(
            f"policy {policy.name!r}: chunk must have shape {want}, got {chunk.shape}"
        )
    if not np.all(np.isfinite(chunk)):
        raise PolicyError(f"policy {policy.name!r}: chunk has non-finite values {chunk.ravel()}")
    return chunk


class ChunkBoard:
    """The current chunk, its read index and the step counter, under one condition variable.

    The control loop calls :meth:`take` once per step; the inference loop calls
    :meth:`wait_snapshot` and then :meth:`deliver` (or :meth:`fail`), and :meth:`finished` when
    it ends. Every chunk installed is recorded in ``telemetry.chunks``. ``inference`` says where
    the inference loop is (``"starting"``, ``"waiting"`` for a snapshot, ``"busy"`` from a
    snapshot to its delivery, ``"done"``): a virtual clock's control loop waits on it.
    """

    def __init__(
        self, s_min: int, delay_buffer: int, period: float, sync: bool, telemetry: Telemetry,
        clock: Clock | None = None,
    ) -> None:  # fmt: skip
        self.s_min, self.period, self.sync, self.telemetry = s_min, period, sync, telemetry
        self.clock = clock or Clock()
        self.inference = "starting"
        self.cond = threading.Condition()
        self.chunk = np.zeros((0, 0), np.float32)
        self.chunk_no = self.idx = self.steps = 0
        self.obs: dict[str, Any] = {}
        self.delays: deque[int] = deque(maxlen=delay_buffer)
        self.inflight_since: float | None = None
        self.fault: Fault | None = None
        self.halted = False
        self.exhausted = False

    # ------------------------------------------------------------------ control side
    def take(
        self, obs: dict[str, Any], now: float, timeout: float, fault: Fault | None
    ) -> tuple[np.ndarray | None, tuple[int, int], Fault | None]:
        """One control step: ``(action or None to hold, source, fault)``.

        A fault passed in, an inference failure or a chunk in flight for over ``timeout``
        seconds returns the fault (source ``SAFE``) instead of an action.
        """
        with self.cond:
            fault = fault or self.fault
            since = self.inflight_since
            if fault is None and since is not None and now - since > timeout:
                fault = (
                    "inference_stall",
                    f"chunk in flight for {now - since:.3f} s; deadline {timeout:.3f} s",
                )
            self.steps += 1
            self.cond.notify_all()
            if fault is not None:
                return None, SAFE, fault
            self.obs = obs
            waiting_sync = self.sync and self.idx >= self.s_min
            if not waiting_sync and self.idx < len(self.chunk):
                i = self.idx
                self.idx += 1
                return self.chunk[i], (self.chunk_no, i), None
            if not waiting_sync and not self.exhausted:  # ran out of chunk: d > H - s
                self.exhausted = True
                self.telemetry.missed_chunks += 1
            return None, HELD, None

    def halt(self) -> None:
        """Wake and stop the inference loop."""
        with self.cond:
            self.halted = True
            self.cond.notify_all()

    # ------------------------------------------------------------------ inference side
    def install_first(self, obs: dict[str, Any], chunk: np.ndarray, latency: float) -> None:
        """The chunk computed before the control loop starts."""
        with self.cond:
            self.obs = obs
            self._install(chunk, Snapshot(obs, chunk[:0], 0, 0, 0, 0.0), 0, latency)

    def wait_snapshot(self) -> Snapshot | None:
        """Block until ``s_min`` actions of the current chunk ran; None once halted."""
        with self.cond:
            self.inference = "waiting"
            self.cond.notify_all()
            while not self.halted and self.idx < self.s_min:
                self.cond.wait(0.5)
            if self.halted:
                return None
            self.inference = "busy"
            d = max(self.delays) if self.delays else 0
            now = self.clock.now()
            self.inflight_since = now
            remainder = self.chunk[self.idx :].copy()
            return Snapshot(self.obs, remainder, self.idx, self.steps, d, now)

    def deliver(self, snap: Snapshot, chunk: np.ndarray) -> bool:
        """Swap ``chunk`` in, skipping what ran since ``snap`` (``sync``: from index 0).
        False when the run is over (the chunk is dropped)."""
        latency = self.clock.now() - snap.time
        with self.cond:
            self.inflight_since = None
            self.cond.notify_all()
            if self.halted or self.fault is not None:
                return False
            self._install(chunk, snap, 0 if self.sync else self.steps - snap.step, latency)
            return True

    def fail(self, exc: BaseException) -> None:
        """The policy raised: the control loop takes the safe stop at its next step."""
        with self.cond:
            self.inflight_since = None
            self.cond.notify_all()
            if self.fault is None:
                self.fault = ("inference_error", f"{type(exc).__name__}: {exc}")

    def finished(self) -> None:
        """The inference loop has ended."""
        with self.cond:
            self.inference = "done"
            self.cond.notify_all()

    def settled(self, now: float) -> bool:
        """True when the inference loop will not change the board before the clock passes
        ``now``: it has ended, waits for a snapshot that is not due, or sleeps on the clock
        until later (call with ``cond`` held)."""
        if self.inference == "done" or self.halted:
            return True
        if self.inference == "waiting":
            return self.idx < self.s_min
        if self.inference == "busy" and self.inflight_since is not None:
            return self.clock.asleep_past(now)
        return False

    def _install(self, chunk: np.ndarray, snap: Snapshot, start: int, latency: float) -> None:
        chunks = self.telemetry.chunks
        # periods of latency, rounded up; the tolerance makes exactly k periods k, not k + 1
        measured = max(0, math.ceil(latency / self.period - 1e-6))
        chunks.append(
            ChunkRecord(len(chunks), snap.step, self.steps, start, snap.executed, snap.delay,
                        measured, latency * 1e3)
        )  # fmt: skip
        self.delays.append(measured)
        self.chunk, self.idx, self.chunk_no = chunk, start, len(chunks) - 1
        self.exhausted = False
