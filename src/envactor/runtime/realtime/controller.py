"""The real-time controller: a control loop at a fixed rate and an inference loop (Algorithm 1
of the real-time chunking paper), both real threads.

The control loop, every period, reads the robot, takes the next action of the current chunk and
writes it; it never waits for inference. The inference loop waits until ``s_min`` actions of the
current chunk have run, snapshots (observation, unexecuted remainder, executed count s), forecasts
the delay d as the max of the last ``delay_buffer`` measured delays (``ceil(latency / period)``),
runs the policy and swaps the new chunk in at index = control steps run since the snapshot, so
no action is executed twice or skipped. Index i of a chunk snapshotted after step t0 is the
action for step ``t0 + i``.

Executors: any registered in ``envactor.runtime.executors.EXECUTORS`` (the registry the vector
actor and the policy server use): the executor makes the policy call and its rules say when to
ask, where a new chunk starts and what runs (docs/realtime.md has the table).

Observation history (``n_obs_steps > 1``): every control tick's observation reaches the policy
(``observe`` for the ticks without a request, from the inference thread; see ``realtime_chunks``).

Health limits (``realtime_health.py``) fail a run that keeps its loops alive but does not
control: too many held steps, chunks that run out, steps that end after the next was due. A
:class:`~envactor.runtime.realtime.clock.VirtualClock` makes a run deterministic (tests,
simulation): time moves one period per step and the control loop waits for the inference loop
to settle, so latency is only what the policy simulates with ``clock.sleep``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from envactor.chunking.guidance import DEFAULT_MAX_GUIDANCE_WEIGHT
from envactor.chunking.request import DEFAULT_SCHEDULE
from envactor.policy.base import Policy
from envactor.registry import RegistryError
from envactor.runtime.executors import EXECUTORS, ChunkExecutor, make_executor
from envactor.runtime.realtime.chunks import HELD, SAFE, ChunkBoard, Fault, infer_chunk, one_row
from envactor.runtime.realtime.clock import Clock
from envactor.runtime.realtime.health import HealthLimits, HealthMonitor
from envactor.runtime.realtime.robot import TIMESTAMP_KEY, Robot, SimulatedRobot
from envactor.runtime.realtime.safety import ActionFilter, SafeAction, resolve_safe_action
from envactor.runtime.realtime.signals import run_settings
from envactor.runtime.realtime.steps import StepRecord
from envactor.runtime.realtime.telemetry import Telemetry

__all__ = ["HELD", "SAFE", "HealthLimits", "RealtimeController"]


class RealtimeController:
    """Drive ``robot`` with ``policy`` at ``hz``; see the module docstring for the two loops.

    Args:
        policy: any envactor policy (one env; observations get a batch dim of 1).
        robot: a :class:`~envactor.runtime.realtime.robot.Robot`.
        hz: control rate.
        executor: a registered executor name (``EXECUTORS.names()``; its ``delay`` is the
            measured one, not a setting).
        s_min: actions of a chunk that run before the next is requested (default: the
            policy's ``n_action_steps``).
        delay_buffer: b, how many measured delays the forecast takes the max over.
        max_delta: slew-rate limit per step (scalar or per dim), or None.
        max_obs_age: seconds after which an observation's ``"timestamp"`` is stale (safe stop);
            ``"auto"`` = max(0.1 s, 5 periods); None disables.
        inference_timeout: seconds a chunk may be in flight before a safe stop (default:
            max(1 s, 2 H periods)).
        safe_action: written on a safe stop: ``"hold"`` (last action; zeros if none),
            ``"zeros"`` or an array.
        schedule, max_guidance_weight: the soft mask and beta of guidance requests.
        warmup: run the policy once (plain and guided) on the first observation before timing.
        join_timeout: seconds to wait for the inference thread at shutdown.
        switch_interval: Python's GIL switch interval during the run (restored after), so the
            control thread waits at most about this long for the GIL while the inference thread
            runs Python code; None leaves the interpreter's (5 ms by default).
        limits: the :class:`~envactor.runtime.realtime.health.HealthLimits` a run must keep
            (default: their defaults); None checks none.
        clock: the time source (default: the wall clock); a
            :class:`~envactor.runtime.realtime.clock.VirtualClock` runs step-driven and
            deterministic (a ``SimulatedRobot`` must then share it and not be threaded).
        on_step: called on the control thread after every write with that step's
            :class:`~envactor.runtime.realtime.steps.StepRecord` (a recorder, a log); it must
            return at once (hand the record to a thread of its own). An exception in it is a
            safe stop (``step_hook_error``).
    """

    def __init__(
        self,
        policy: Policy,
        robot: Robot,
        *,
        hz: float,
        executor: str = "rtc",
        s_min: int | None = None,
        delay_buffer: int = 10,
        max_delta: float | np.ndarray | None = None,
        max_obs_age: float | Literal["auto"] | None = "auto",
        inference_timeout: float | None = None,
        safe_action: SafeAction = "hold",
        schedule: str = DEFAULT_SCHEDULE,
        max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT,
        warmup: bool = True,
        join_timeout: float = 2.0,
        switch_interval: float | None = 0.001,
        limits: HealthLimits | None = HealthLimits(),  # noqa: B008  (frozen, shared safely)
        clock: Clock | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> None:
        try:
            executor_cls = EXECUTORS.get(executor)
        except RegistryError:
            raise ValueError(
                f"executor must be one of {EXECUTORS.names()}, got {executor!r}"
            ) from None
        if isinstance(hz, bool) or not (math.isfinite(hz) and hz > 0):
            raise ValueError(f"hz must be a finite number > 0, got {hz!r}")
        self.clock = clock or Clock()
        mismatch = isinstance(robot, SimulatedRobot) and (
            robot.threaded or robot.clock is not self.clock
        )
        if self.clock.virtual and mismatch:
            raise ValueError(
                "a virtual clock needs SimulatedRobot(threaded=False, clock=<the same clock>)"
            )
        horizon, adim = policy.params.horizon, policy.params.action_dim
        s = policy.params.n_action_steps if s_min is None else int(s_min)
        if not 1 <= s <= horizon:
            raise ValueError(f"s_min must be in [1, H={horizon}], got {s}")
        if delay_buffer < 1:
            raise ValueError(f"delay_buffer must be >= 1, got {delay_buffer}")
        shape = tuple(robot.action_space.shape or ())
        if int(np.prod(shape)) != adim:
            raise ValueError(
                f"robot action_space shape {shape} does not hold the policy's action_dim={adim}"
            )
        self.policy, self.robot, self.executor = policy, robot, executor
        self.rules: ChunkExecutor = make_executor(
            executor, policy, n_action_steps=s, schedule=schedule,
            max_guidance_weight=max_guidance_weight,
        )  # fmt: skip
        self.holds_while_waiting = bool(executor_cls.holds_while_waiting)
        self.hz, self.period = float(hz), 1.0 / float(hz)
        self.horizon, self.s_min, self.delay_buffer = horizon, s, int(delay_buffer)
        self.filter = ActionFilter(robot.action_space, max_delta)
        self.max_obs_age = max(0.1, 5 * self.period) if max_obs_age == "auto" else max_obs_age
        self.inference_timeout = (
            max(1.0, 2 * horizon * self.period) if inference_timeout is None else inference_timeout
        )
        resolve_safe_action(safe_action, None, shape)  # validate now, not at the safe stop
        self.safe_action = safe_action
        self.warmup, self.join_timeout = warmup, float(join_timeout)
        self.switch_interval = switch_interval
        self.limits = limits
        self.on_step = on_step
        self._monitor: HealthMonitor | None = None
        self.actions: list[np.ndarray] = []
        self.sources: list[tuple[int, int]] = []
        self.telemetry = self._new_telemetry()
        self._background: threading.Thread | None = None
        self._began = threading.Event()
        self._last_written: np.ndarray | None = None
        self._stop_request: str | None = None
        self._origin = 0.0
        self._board = self._new_board()

    # ------------------------------------------------------------------ public
    @property
    def executed(self) -> np.ndarray:
        """Every action written in the last run, ``(steps, *action shape)``."""
        shape = tuple(self.robot.action_space.shape or ())
        return np.array(self.actions) if self.actions else np.zeros((0, *shape), np.float32)

    def run(
        self,
        seconds: float | None = None,
        *,
        max_steps: int | None = None,
        handle_signals: bool = True,
    ) -> Telemetry:
        """Run until ``seconds`` elapse, ``max_steps`` steps ran, :meth:`stop`, a signal, a
        safe stop or a health limit passed; returns the run's :class:`Telemetry` (the first
        chunk failing raises). A run that ended normally is judged against the limits over all
        its steps too (``ok`` is then False if it passed one).

        With ``handle_signals`` and on the main thread, SIGINT/SIGTERM stop the run cleanly;
        the previous handlers are restored afterwards.
        """
        tel = self.telemetry = self._new_telemetry()
        self._board = self._new_board()
        self.clock.begin()
        self._began.set()
        worker: threading.Thread | None = None
        started = self.clock.now()
        settings = run_settings(
            self.stop, handle_signals=handle_signals, switch_interval=self.switch_interval
        )
        with settings:
            try:
                self.robot.connect()
                self._first_chunk()
                worker = threading.Thread(
                    target=self._inference_loop, name="envactor-inference", daemon=True
                )
                worker.start()
                self._control_loop(seconds, max_steps)
                self._judge_run()
            finally:
                self._board.halt()
                self.clock.release()
                if worker is not None:
                    worker.join(self.join_timeout)
                    tel.leaked_threads = int(worker.is_alive())
                self._disconnect(tel)
                tel.duration_s = self.clock.now() - started
        return tel

    def _disconnect(self, tel: Telemetry) -> None:
        """``robot.disconnect()``; a failure there fails the run (it is reported, never
        raised over an error already in flight)."""
        try:
            self.robot.disconnect()
        except Exception as exc:
            why = f"robot.disconnect() failed: {type(exc).__name__}: {exc}"
            tel.error = f"{tel.error}; {why}" if tel.error else why
            if tel.ok:
                tel.stop_reason = "robot_error"

    def start(self, seconds: float | None = None, *, max_steps: int | None = None) -> None:
        """:meth:`run` on a background thread (no signal handlers); see :meth:`wait`."""
        if self._background is not None and self._background.is_alive():
            raise RuntimeError("this controller is already running; call stop() and wait() first")
        self._background = threading.Thread(
            target=self.run,
            args=(seconds,),
            kwargs={"max_steps": max_steps, "handle_signals": False},
            name="envactor-control",
            daemon=True,
        )
        self._began.clear()
        self._background.start()
        self._began.wait()  # so a stop() right after start() is not lost

    def wait(self, timeout: float | None = None) -> Telemetry:
        """Wait for a :meth:`start`-ed run to end; its telemetry."""
        if self._background is not None:
            self._background.join(timeout)
        return self.telemetry

    def stop(self, reason: str = "stopped") -> None:
        """Ask the control loop to stop at its next step (thread-safe, no lock taken)."""
        if self._stop_request is None:
            self._stop_request = reason

    # ------------------------------------------------------------------ setup
    def _new_telemetry(self) -> Telemetry:
        return Telemetry(self.hz, self.executor, self.horizon, self.s_min, self.delay_buffer)

    def _new_board(self) -> ChunkBoard:
        self.actions, self.sources = [], []
        self._last_written = None
        self._stop_request = None
        n_obs = int(getattr(self.policy, "n_obs_steps", 1))
        return ChunkBoard(
            self.rules, self.delay_buffer, self.period, self.telemetry, self.clock, n_obs
        )

    def _infer(self, obs: dict[str, Any], remainder: np.ndarray, d: int, s: int) -> np.ndarray:
        return infer_chunk(self.rules, obs, remainder, d, s)

    def _first_chunk(self) -> None:
        obs = self.robot.read()
        adim = self.policy.params.action_dim
        self.policy.reset()
        try:
            if self.warmup:
                self._infer(obs, np.zeros((0, adim), np.float32), 0, 0)
                if self.rules.method is not None:
                    rem = np.zeros((self.horizon - self.s_min, adim), np.float32)
                    self._infer(obs, rem, 1, self.s_min)
                self.policy.reset()
            t0 = self.clock.now()
            chunk = self._infer(obs, np.zeros((0, adim), np.float32), 0, 0)
        except Exception as exc:
            self.telemetry.stop_reason = "inference_error"
            self.telemetry.error = f"{type(exc).__name__}: {exc}"
            raise RuntimeError(f"real-time controller: the first chunk failed: {exc}") from exc
        self._board.install_first(obs, chunk, self.clock.now() - t0)

    # ------------------------------------------------------------------ the two loops
    def _inference_loop(self) -> None:
        board = self._board
        try:
            while (snap := board.wait_snapshot()) is not None:
                try:
                    for frame in snap.earlier:  # the ticks since the last snapshot, in order
                        self.policy.observe(one_row(self.policy, frame), env_ids=[0])
                    chunk = self._infer(snap.obs, snap.remainder, snap.delay, snap.executed)
                except Exception as exc:
                    board.fail(exc)
                    return
                if not board.deliver(snap, chunk):
                    return
        finally:
            board.finished()

    def _settle(self) -> None:
        """Virtual clock only: wait (in real time) until the inference loop has settled."""
        if not self.clock.virtual:
            return
        board, deadline = self._board, time.monotonic() + 60.0
        with board.cond:
            while not board.settled(self.clock.now()):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        "real-time controller (virtual clock): the inference loop did not "
                        "settle within 60 s of real time (a policy that blocks without "
                        "clock.sleep?)"
                    )
                board.cond.wait(0.002)

    def _judge_run(self) -> None:
        """A run that ended normally passes the health limits over all its steps, or fails."""
        tel, monitor = self.telemetry, self._monitor
        if monitor is None or not tel.ok:
            return
        breach = monitor.check(tel, self.clock.now(), final=True)
        if breach is not None:
            tel.stop_reason, tel.error, tel.limit = breach

    def _control_loop(self, seconds: float | None, max_steps: int | None) -> None:
        tel, period, clock = self.telemetry, self.period, self.clock
        origin = self._origin = clock.now()
        monitor = self._monitor = (
            None
            if self.limits is None
            else HealthMonitor(self.limits, self.executor, origin, self.holds_while_waiting)
        )
        slot = 0  # the control period the next step belongs to
        while True:
            reason = self._stop_request
            if reason is None:
                if max_steps is not None and tel.steps >= max_steps:
                    reason = "steps"
                elif seconds is not None and slot * period >= seconds - 1e-9:
                    reason = "duration"
                elif self.robot.done:
                    reason = "robot_done"
            if reason is not None:
                if tel.stop_reason == "not_started":
                    tel.stop_reason = reason
                return
            scheduled = origin + slot * period
            self._settle()
            now = clock.now()
            if now < scheduled:
                clock.wait_until(scheduled)
                self._settle()
                now = clock.now()
            tel.lateness_s.append(now - scheduled)
            fault: Fault | None = None
            if monitor is not None and (breach := monitor.check(tel, now)) is not None:
                fault, tel.limit = breach[:2], breach[2]
            self._tick(now, fault)
            behind = clock.now() - (scheduled + period)
            slot += 1
            if behind > 0:  # this step ended after the next one was due
                tel.missed_deadlines += 1
                skip = int(behind / period)  # whole periods lost: skip them, keep the grid
                slot += skip
                tel.skipped_periods += skip

    def _tick(self, now: float, fault: Fault | None = None) -> None:
        """One control step: read, check, take the next action (or hold / safe), write.
        ``fault`` (a health limit passed) makes it a safe stop."""
        tel = self.telemetry
        obs: dict[str, Any] = {}
        try:
            obs = self.robot.read()
        except Exception as exc:
            fault = fault or ("robot_error", f"robot.read() failed: {type(exc).__name__}: {exc}")
        stamp = obs.get(TIMESTAMP_KEY)
        if fault is None and self.max_obs_age is not None and stamp is not None:
            age = now - float(stamp)
            if age > self.max_obs_age:
                limit = self.max_obs_age * 1e3
                fault = ("stale_observation", f"observation is {age * 1e3:.1f} ms old; "
                         f"limit {limit:.1f} ms")  # fmt: skip
        raw, source, fault = self._board.take(obs, now, self.inference_timeout, fault)
        last = self._last_written
        if fault is not None:
            raw = resolve_safe_action(self.safe_action, last, self.filter.shape)
        elif raw is None:  # hold
            raw = np.zeros(self.filter.shape, np.float32) if last is None else last
        action, clipped, limited = self.filter(raw, last)
        sent: np.ndarray | None = None
        try:
            sent = self.robot.write(action)
        except Exception as exc:
            fault = fault or ("robot_error", f"robot.write() failed: {type(exc).__name__}: {exc}")
        if self.on_step is not None:
            record = StepRecord(
                tel.steps, now - self._origin, obs, action, raw, sent, source,
                tel.version_of(source), fault is not None, getattr(self.robot, "episodes", 0),
            )  # fmt: skip
            try:
                self.on_step(record)
            except Exception as exc:
                fault = fault or ("step_hook_error", f"on_step failed: {type(exc).__name__}: {exc}")
        self._last_written = action
        self.actions.append(action)
        self.sources.append(source)
        tel.steps += 1
        tel.clipped_steps += clipped
        tel.slew_limited_steps += limited
        tel.held_steps += source == HELD
        if fault is not None:
            tel.stop_reason, tel.error = fault
            self.stop(fault[0])
