"""The chunk the real-time controller executes, shared by its two loops (the shared state and
condition variable of Algorithm 1 of the real-time chunking paper), and the policy call that
makes the next chunk.

What runs at each step is the executor's rule (``envactor.runtime.executors``, the registry the
vector actor uses): the board drives one env's :class:`EnvState` through the executor's
``_wants``/``_deliver``/``_next_action`` with the delays it measures instead of a simulated one.
Index i of a chunk snapshotted after control step t0 is the action for step ``t0 + i``: the
chunk is swapped in at index ``steps now - t0`` (or where the executor's rule says), so no action
runs twice or is skipped.

For a policy with observation history (``n_obs_steps > 1``) the board keeps the last
``n_obs_steps`` observations the control loop read; the inference loop hands the ones before
the snapshot to ``policy.observe`` (in order, on its own thread: the policy is only ever called
from one thread) before it asks for the chunk, so the history holds every control tick.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envactor.policy.base import Policy, PolicyError
from envactor.runtime.executors.base import ChunkExecutor, EnvState, Pending
from envactor.runtime.realtime.clock import Clock
from envactor.runtime.realtime.telemetry import ChunkRecord, Telemetry

HELD = (-1, -1)
"""Source of a step that held the last action (no chunk action was due)."""
SAFE = (-2, -2)
"""Source of the safe action written on a safe stop."""
Fault = tuple[str, str]
"""(stop reason, message)."""
_NO_CHUNK = np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class Snapshot:
    """What the inference loop takes from the control loop for one chunk."""

    obs: dict[str, Any]
    remainder: np.ndarray  # the unexecuted rest of the current chunk, (H - s, A)
    executed: int  # s: actions of the current chunk executed (index of the next one)
    step: int  # t0: control steps completed
    delay: int  # d: the forecast
    time: float
    pending: Pending | None = None  # the executor's placeholder, filled on delivery
    earlier: list[dict[str, Any]] = field(default_factory=list)  # frames to observe first
    version: int = 0  # the policy's weight version when the chunk was asked for


def one_row(policy: Policy, obs: dict[str, Any]) -> dict[str, np.ndarray]:
    """One robot's observation as a batch of 1 (the declared features only)."""
    return {k: np.asarray(obs[k])[None] for k in policy.input_features}


def infer_chunk(
    executor: ChunkExecutor, obs: dict[str, Any], remainder: np.ndarray, d: int, s: int
) -> np.ndarray:
    """One chunk ``(H, A)`` for one observation through ``executor``'s policy call (a guidance
    request on the remainder when the executor conditions and there is one).

    A chunk of the wrong shape or with non-finite values is a :class:`PolicyError` (never
    replayed to the robot).
    """
    policy = executor.policy
    request = executor.guidance([remainder], [d], [s]) if len(remainder) else None
    out = executor.infer(one_row(policy, obs), [0], request)
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
    """One env's executor state, its step counter and chunk numbers, under one condition
    variable.

    The control loop calls :meth:`take` once per step; the inference loop calls
    :meth:`wait_snapshot` and then :meth:`deliver` (or :meth:`fail`), and :meth:`finished` when
    it ends. Every chunk installed is recorded in ``telemetry.chunks``. ``inference`` says where
    the inference loop is (``"starting"``, ``"waiting"`` for a snapshot, ``"busy"`` from a
    snapshot to its delivery, ``"done"``): a virtual clock's control loop waits on it.

    Args:
        executor: whose rules decide when to ask, where a new chunk starts and what runs.
        delay_buffer: how many measured delays the forecast takes the max over.
        period: the control period in seconds; ``telemetry``: where chunks are recorded.
        clock: the time source; ``n_obs_steps``: frames kept for the policy's history.
    """

    def __init__(
        self, executor: ChunkExecutor, delay_buffer: int, period: float, telemetry: Telemetry,
        clock: Clock | None = None, n_obs_steps: int = 1,
    ) -> None:  # fmt: skip
        self.executor, self.period, self.telemetry = executor, period, telemetry
        self.clock = clock or Clock()
        self.inference = "starting"
        self.cond = threading.Condition()
        self.state = EnvState()  # state.t == steps: control steps completed
        self.steps = 0
        self.obs: dict[str, Any] = {}
        self.frames: deque[dict[str, Any]] | None = (
            deque(maxlen=n_obs_steps) if n_obs_steps > 1 else None
        )
        self.delays: deque[int] = deque(maxlen=delay_buffer)
        self.inflight_since: float | None = None
        self.fault: Fault | None = None
        self.halted = False
        self.exhausted = False
        self._snapped = -1  # step of the last snapshot: one per observation at most
        self._numbers: dict[int, int] = {}  # id(chunk) -> chunk number, for the sources
        self._recent: deque[int] = deque()

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
            st, ex = self.state, self.executor
            self.steps += 1
            self.cond.notify_all()
            if fault is not None:
                st.t += 1
                return None, SAFE, fault
            self.obs = obs
            if self.frames is not None:
                self.frames.append(obs)
            ex._deliver(st)
            action = ex._next_action(st)
            source = HELD
            if action is not None:
                source = (self._numbers.get(id(st.chunk), -1), ex._source_index(st))
            elif not self.exhausted and ex._ran_out(st):  # ran out of chunk: d > H - s
                self.exhausted = True
                self.telemetry.missed_chunks += 1
            st.t += 1
            return action, source, None

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
            self._snapped = 0
            pending = Pending(0, 0, chunk)
            self.state.pending.append(pending)
            version = self._version()
            snap = Snapshot(obs, chunk[:0], 0, 0, 0, 0.0, pending, version=version)
            self._install(snap, chunk, latency)

    def _version(self) -> int:
        return int(getattr(self.executor.policy, "weight_version", 0))

    def _due(self) -> bool:
        """A snapshot is due: a new step since the last one, and the executor wants a chunk."""
        st = self.state
        return st.t > self._snapped and not st.pending and self.executor._wants(st)

    def wait_snapshot(self) -> Snapshot | None:
        """Block until the executor wants a new chunk; None once halted."""
        with self.cond:
            self.inference = "waiting"
            self.cond.notify_all()
            while not self.halted and not self._due():
                self.cond.wait(0.5)
            if self.halted:
                return None
            self.inference = "busy"
            d = max(self.delays) if self.delays else 0
            now = self.clock.now()
            self.inflight_since = now
            st = self.state
            self._snapped = st.t
            pending = Pending(math.inf, st.t, _NO_CHUNK)  # in flight: never due until filled
            st.pending.append(pending)
            earlier: list[dict[str, Any]] = []
            if self.frames is not None:
                earlier = list(self.frames)[:-1]  # the last one is the snapshot's own
                self.frames.clear()
            remainder = np.array(self.executor._remainder(st), np.float32, copy=True)
            return Snapshot(
                self.obs, remainder, st.idx, st.t, d, now, pending, earlier, self._version()
            )

    def deliver(self, snap: Snapshot, chunk: np.ndarray) -> bool:
        """Swap ``chunk`` in where the executor says (skipping what ran since ``snap``; ``sync``:
        from index 0). False when the run is over (the chunk is dropped)."""
        latency = self.clock.now() - snap.time
        with self.cond:
            self.inflight_since = None
            self.cond.notify_all()
            if self.halted or self.fault is not None:
                return False
            self._install(snap, chunk, latency)
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
            return not self._due()
        if self.inference == "busy" and self.inflight_since is not None:
            return self.clock.asleep_past(now)
        return False

    def _install(self, snap: Snapshot, chunk: np.ndarray, latency: float) -> None:
        """The executor installs ``chunk`` now (call with ``cond`` held)."""
        st, ex, pending = self.state, self.executor, snap.pending
        assert pending is not None
        pending.chunk, pending.ready = chunk, st.t
        start = ex._start_index(st, pending)
        chunks = self.telemetry.chunks
        # periods of latency, rounded up; the tolerance makes exactly k periods k, not k + 1
        measured = max(0, math.ceil(latency / self.period - 1e-6))
        chunks.append(
            ChunkRecord(len(chunks), snap.step, self.steps, start, snap.executed, snap.delay,
                        measured, latency * 1e3, snap.version)
        )  # fmt: skip
        self.delays.append(measured)
        self._numbers[id(chunk)] = len(chunks) - 1
        self._recent.append(id(chunk))
        if len(self._recent) > 64:  # chunks that old are out of every executor's state
            self._numbers.pop(self._recent.popleft(), None)
        ex._deliver(st)
        self.exhausted = False
