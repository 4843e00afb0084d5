"""Real-time controller at 50 Hz with a scripted policy whose chunks are identifiable (chunk
number c of a run holds ``100 (c + 1) + i`` at index i).

Most tests run on a :class:`VirtualClock` (step-driven: the policy's latency is simulated, the
run is the same on an idle or a loaded machine), so they assert exact timelines. The tests on
real threads and the wall clock assert only what no scheduling can change."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from envactor import Policy
from envactor.runtime.realtime.cli import add_run_args, run_run
from envactor.runtime.realtime.clock import Clock, VirtualClock
from envactor.runtime.realtime.controller import HELD, SAFE, RealtimeController
from envactor.runtime.realtime.robot import SimulatedRobot
from envactor.runtime.realtime.safety import ActionFilter
from envactor.runtime.realtime.telemetry import percentiles_ms

STATE = "observation.state"
HZ = 50.0
PERIOD = 1.0 / HZ


class Scripted(Policy):
    """Call n (1-based since reset) returns ``100 n + i``; ``sleeps[n]`` seconds of latency
    (on ``clock``: the wall clock, or the controller's virtual one), ``fail_on`` raises on
    that call."""

    trainable = False

    def __init__(self, sleeps: dict[int, float] | None = None, default_sleep: float = 0.0,
                 fail_on: int | None = None, **params: Any) -> None:  # fmt: skip
        super().__init__(None, None, **params)
        self.sleeps, self.default_sleep, self.fail_on = sleeps or {}, default_sleep, fail_on
        self.n = 0
        self.clock = Clock()

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        self.n += 1
        if self.n == self.fail_on:
            raise RuntimeError(f"injected failure on call {self.n}")
        self.clock.sleep(self.sleeps.get(self.n, self.default_sleep))
        row = 100.0 * self.n + torch.arange(self.params.horizon, dtype=torch.float32)
        return row.expand(len(env_ids), -1)[..., None].clone()

    def _reset(self, env_ids: Any) -> None:
        self.n = 0


def scripted(H: int = 8, s: int = 4, **kw: Any) -> Scripted:
    return Scripted(
        input_features={STATE: {"shape": [3], "norm": "identity"}},
        action_dim=1, horizon=H, n_action_steps=s, action_norm="identity", **kw,
    )  # fmt: skip


class WideBox(gym.Env):
    """A do-nothing env whose action bounds are [-1000, high] (chunk values pass by default)."""

    def __init__(self, high: float = 1e6) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1000.0, high, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        return np.zeros(3, np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        return np.zeros(3, np.float32), 0.0, False, False, {}


def controller(policy: Policy, env: gym.Env | None = None, **kw: Any) -> RealtimeController:
    """Wall clock, real threads; no health limits (a loaded machine must not trip them)."""
    robot = SimulatedRobot(env if env is not None else WideBox(), HZ)
    kw.setdefault("max_obs_age", 1.0)  # a loaded test machine must not trip the stale check
    kw.setdefault("warmup", False)
    kw.setdefault("limits", None)
    return RealtimeController(policy, robot, hz=HZ, **kw)


def vcontroller(
    policy: Policy, env: gym.Env | None = None, robot: SimulatedRobot | None = None, **kw: Any
) -> RealtimeController:
    """Step-driven on a virtual clock: exact timelines; a ``Scripted`` policy sleeps on it."""
    clock = robot.clock if robot is not None else VirtualClock()
    if isinstance(policy, Scripted):
        policy.clock = clock
    if robot is None:
        robot = SimulatedRobot(env if env is not None else WideBox(), HZ, clock=clock)
    kw.setdefault("warmup", False)
    return RealtimeController(policy, robot, hz=HZ, clock=clock, **kw)


def timeline(ctrl: RealtimeController) -> list[tuple[int, int, int, int, int]]:
    """(snapshot step, swap step, start index, forecast d, measured d) of every chunk."""
    return [
        (c.snapshot_step, c.swap_step, c.start_index, c.forecast_delay, c.measured_delay)
        for c in ctrl.telemetry.chunks
    ]


@pytest.fixture
def no_leaks():  # type: ignore[no-untyped-def]
    base = threading.active_count()
    yield
    assert threading.active_count() == base


def check_exact_accounting(ctrl: RealtimeController) -> None:
    """Step n runs index n - t0 of its chunk (t0 = that chunk's snapshot step): no action is
    executed twice or skipped, and each switch starts at the steps run since the snapshot."""
    chunks = ctrl.telemetry.chunks
    for n, ((c, i), a) in enumerate(zip(ctrl.sources, ctrl.actions)):
        if (c, i) == HELD:
            continue
        assert i == n - chunks[c].snapshot_step
        assert float(a[0]) == 100.0 * (c + 1) + i
    for rec in chunks[1:]:
        assert rec.start_index == rec.swap_step - rec.snapshot_step
        first = next((n for n, (c, _) in enumerate(ctrl.sources) if c == rec.chunk), None)
        if first is not None:
            assert ctrl.sources[first][1] == rec.start_index


# ---------------------------------------------------------------------------- exact timelines
def test_naive_async_switches_exactly(no_leaks: None) -> None:
    # 35 ms of latency = 1.75 periods: each chunk is snapshotted after step 4k, arrives during
    # step 4k + 1 (measured delay 2) and starts at index 1: the stale action is skipped
    ctrl = vcontroller(scripted(default_sleep=0.035), executor="naive_async")
    tel = ctrl.run(max_steps=50)
    assert tel.stop_reason == "steps" and tel.steps == 50 and tel.leaked_threads == 0
    assert timeline(ctrl) == [(0, 0, 0, 0, 2)] + [(4 * k, 4 * k + 1, 1, 2, 2) for k in range(1, 13)]
    want = [(0, i) for i in range(5)] + [(k, i) for k in range(1, 13) for i in range(1, 5)]
    assert ctrl.sources == want[:50] and tel.held_steps == 0 and tel.missed_chunks == 0
    check_exact_accounting(ctrl)
    # the driven robot stepped with exactly what the controller wrote
    np.testing.assert_array_equal(np.array(ctrl.robot.executed), ctrl.executed)  # type: ignore[attr-defined]
    assert tel.missed_deadlines == 0 and set(tel.lateness_s) == {0.0}


def test_forecast_is_max_of_last_b_measured_delays(no_leaks: None) -> None:
    pol = scripted(sleeps={3: 0.045}, default_sleep=0.001)
    ctrl = vcontroller(pol, executor="rtc", delay_buffer=3)
    calls: list[dict[str, Any]] = []
    inner = pol.guided_inference

    def spy(obs: Any, **kw: Any) -> np.ndarray:
        calls.append(kw)
        return inner(obs, **kw)

    pol.guided_inference = spy  # type: ignore[method-assign,assignment]
    tel = ctrl.run(max_steps=45)
    # call 3 (chunk 2) takes 45 ms: measured 3, so the next three forecasts are 3, then 1 again
    assert timeline(ctrl) == [
        (0, 0, 0, 0, 1), (4, 4, 0, 1, 1), (8, 10, 2, 1, 3), (12, 12, 0, 3, 1),
        (16, 16, 0, 3, 1), (20, 20, 0, 3, 1), (24, 24, 0, 1, 1),
        *[(4 * k, 4 * k, 0, 1, 1) for k in range(7, 12)],
    ]  # fmt: skip
    recs = tel.chunks
    for k, rec in enumerate(recs):
        if k:
            assert rec.forecast_delay == max(r.measured_delay for r in recs[max(0, k - 3) : k])
    assert len(calls) == len(recs) - 1 == 11
    for rec, kw in zip(recs[1:], calls):  # what guided inference got, and what then ran
        request = kw["request"]
        assert request.delay == (rec.forecast_delay,)
        assert request.executed == (rec.executed_before,) and rec.executed_before == 4
        remainder = request.remainder[0]
        assert remainder.shape == (8 - rec.executed_before, 1)
        ran = ctrl.executed[rec.snapshot_step : rec.swap_step]
        np.testing.assert_array_equal(ran, remainder[: len(ran)])
    assert len(ctrl.executed[8:10]) == 2  # the two steps that ran while chunk 2 was computed


def test_sync_holds_until_the_new_chunk_and_starts_it_at_zero(no_leaks: None) -> None:
    # 45 ms = 2.25 periods: each chunk runs its s_min = 4 actions, then 2 steps hold
    ctrl = vcontroller(scripted(default_sleep=0.045), executor="sync")
    tel = ctrl.run(max_steps=40)
    assert timeline(ctrl) == [(0, 0, 0, 0, 3)] + [(6 * k - 2, 6 * k, 0, 3, 3) for k in range(1, 7)]
    cycle = [[(k, 0), (k, 1), (k, 2), (k, 3), HELD, HELD] for k in range(7)]
    assert ctrl.sources == [src for c in cycle for src in c][:40]
    assert tel.held_steps == 12 and tel.chunk_switches == 6 and tel.missed_chunks == 0
    assert tel.ok  # 30 % held is sync by design: under its default limit (50 %)


@pytest.mark.parametrize("safe", ["hold", "zeros"])
def test_inference_error_is_a_safe_stop(no_leaks: None, safe: str) -> None:
    ctrl = vcontroller(scripted(fail_on=3), executor="naive_async", safe_action=safe)
    tel = ctrl.run(seconds=5.0)
    assert tel.stop_reason == "inference_error" and not tel.ok
    assert tel.error == "RuntimeError: injected failure on call 3"
    # call 3 is the snapshot after step 8: the very next step is the safe stop
    assert tel.steps == 9 and tel.leaked_threads == 0
    assert ctrl.sources == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), SAFE]
    want = ctrl.actions[-2] if safe == "hold" else np.zeros(1, np.float32)
    np.testing.assert_array_equal(ctrl.actions[-1], want)


def test_stall_is_a_safe_stop_and_the_control_loop_never_blocks(no_leaks: None) -> None:
    ctrl = vcontroller(scripted(sleeps={3: 0.6}), executor="rtc", inference_timeout=0.15)
    tel = ctrl.run(seconds=5.0)
    # chunk 2 was requested after step 8 (at step 7's time); 8 periods later it is overdue
    assert tel.stop_reason == "inference_stall"
    assert tel.error == "chunk in flight for 0.160 s; deadline 0.150 s"
    assert tel.steps == 16 and tel.leaked_threads == 0 and ctrl.sources[-1] == SAFE
    # chunk 1 ran out while the policy slept: 3 steps held, one missed chunk, no garbage
    assert ctrl.sources[4:15] == [(1, i) for i in range(8)] + [HELD] * 3
    assert tel.missed_chunks == 1 and tel.held_steps == 3
    assert ctrl.actions[-1][0] == ctrl.actions[-2][0] == 207.0


class FrozenSensor(SimulatedRobot):
    """Its observations stop being refreshed after ``freeze_at`` reads."""

    def __init__(self, freeze_at: int, clock: Clock) -> None:
        super().__init__(WideBox(), HZ, clock=clock)
        self.reads, self.freeze_at = 0, freeze_at

    def read(self) -> dict[str, Any]:
        self.reads += 1
        obs = super().read()
        if self.reads > self.freeze_at:
            obs["timestamp"] = self.clock.now() - 0.5
        return obs


def test_stale_observation_is_a_safe_stop(no_leaks: None) -> None:
    ctrl = vcontroller(scripted(), robot=FrozenSensor(10, VirtualClock()), max_obs_age=0.2)
    tel = ctrl.run(seconds=5.0)
    assert tel.stop_reason == "stale_observation"
    assert tel.error == "observation is 500.0 ms old; limit 200.0 ms"
    # read 1 made the first chunk; control step 10 got read 11, the first frozen one
    assert tel.steps == 10 and ctrl.sources[-1] == SAFE and SAFE not in ctrl.sources[:-1]


def test_clip_and_slew_limit_applied(no_leaks: None) -> None:
    # bounds [-1000, 250]: chunk 3 onwards (300+) is clipped; switches are slew-limited to 5
    ctrl = vcontroller(scripted(default_sleep=0.005), WideBox(high=250.0),
                       executor="naive_async", max_delta=5.0)  # fmt: skip
    tel = ctrl.run(max_steps=40)
    prev = float(ctrl.actions[0][0])
    assert prev == 100.0
    limited = clipped = 0
    for (c, i), a in zip(ctrl.sources[1:], ctrl.actions[1:]):
        raw = 100.0 * (c + 1) + i if (c, i) != HELD else prev
        want = prev + float(np.clip(raw - prev, -5.0, 5.0))
        limited += want != raw
        clipped += want > 250.0
        assert float(a[0]) == min(want, 250.0)
        prev = float(a[0])
    assert (tel.slew_limited_steps, tel.clipped_steps) == (limited, clipped)
    # 100..103, then +5 a step from step 4 on (the chunks climb faster): 103 + 5 (n - 3)
    # passes 250 at step 33 and is clipped from there to step 39
    assert limited == 36 and clipped == 7
    assert max(ctrl.executed[:, 0]) == 250.0


def test_flow_policy_runs_true_rtc_in_the_inference_thread(no_leaks: None) -> None:
    from envactor import build_policy
    from envactor.normalize import Normalizer

    torch.manual_seed(0)
    pol = build_policy("flow", overrides=["policy.params.action_norm=identity"])
    pol.normalizer = Normalizer(
        {STATE: "mean_std", "action": "identity"}, {STATE: {"mean": np.zeros(3), "std": np.ones(3)}}
    )
    assert pol.can_guide()
    seen: list[str] = []
    inner = pol.guided_inference

    def spy(obs: Any, **kw: Any) -> np.ndarray:
        seen.append(f"{kw['request'].method}/{kw['request'].jacobian}")
        return inner(obs, **kw)

    pol.guided_inference = spy  # type: ignore[method-assign,assignment]
    ctrl = vcontroller(pol, gym.make("Pendulum-v1"), executor="rtc", max_delta=0.5)
    tel = ctrl.run(max_steps=30)
    # real compute takes no virtual time: each chunk arrives before the next step
    assert tel.ok and timeline(ctrl) == [(4 * k, 4 * k, 0, 0, 0) for k in range(8)]
    assert seen == ["guided/vjp"] * 7
    assert np.all(np.abs(np.diff(ctrl.executed[:, 0])) <= 0.5 + 1e-6)
    assert np.all(np.abs(ctrl.executed) <= 2.0)


# ---------------------------------------------------------------------------- health limits
def test_held_fraction_limit_stops_a_slow_policy(no_leaks: None) -> None:
    # 500 ms per chunk at 50 Hz (25 periods): every chunk runs out long before the next
    ctrl = vcontroller(scripted(default_sleep=0.5), executor="rtc")
    tel = ctrl.run(seconds=5.0)
    # judged from the end of the 1 s grace (step 50): steps 8..49 held
    assert tel.stop_reason == "held_fraction" and not tel.ok
    assert tel.error == "held the last action on 84.0% of steps (42 of 50); limit 20.0%"
    assert tel.limit == {"limit": "max_held_fraction", "measured": 0.84, "threshold": 0.2}
    assert tel.steps == 51 and ctrl.sources[8:50] == [HELD] * 42 and ctrl.sources[-1] == SAFE
    assert tel.to_dict()["limit"] == tel.limit and tel.to_dict()["ok"] is False
    # the same run without limits goes the distance and is "ok"
    free = vcontroller(scripted(default_sleep=0.5), executor="rtc", limits=None).run(seconds=5.0)
    assert free.stop_reason == "duration" and free.ok and free.steps == 250
    assert free.held_steps / free.steps > 0.8


def test_a_short_run_is_judged_at_its_end(no_leaks: None) -> None:
    ctrl = vcontroller(scripted(default_sleep=0.5), executor="rtc")
    tel = ctrl.run(max_steps=30)  # 0.6 s: shorter than the grace period
    assert tel.stop_reason == "held_fraction" and tel.steps == 30 and SAFE not in ctrl.sources
    assert tel.error == "held the last action on 73.3% of steps (22 of 30); limit 20.0%"


def test_missed_chunk_limit() -> None:
    from envactor.runtime.realtime.health import HealthLimits

    # 110 ms = 5.5 periods with 4 actions left: chunks run out at steps 8, 12 and 17
    limits = HealthLimits(max_held_fraction=None, max_missed_chunks=2, grace_s=0.0)
    ctrl = vcontroller(scripted(default_sleep=0.11), executor="rtc", limits=limits)
    tel = ctrl.run(seconds=5.0)
    assert tel.stop_reason == "missed_chunks" and tel.steps == 19
    assert tel.error == (
        "3 chunks ran out before the next arrived within 10 s (3 in the run); limit 2"
    )
    assert [n for n, s in enumerate(ctrl.sources) if s == HELD] == [8, 12, 13, 14, 17]
    assert tel.limit == {"limit": "max_missed_chunks", "measured": 3, "threshold": 2}


class SlowWrite(SimulatedRobot):
    """Each write takes 30 ms (of the virtual clock): longer than a 20 ms period."""

    def write(self, action: np.ndarray) -> None:
        self.clock.sleep(0.03)
        super().write(action)


def test_missed_deadline_limit() -> None:
    from envactor.runtime.realtime.health import HealthLimits

    limits = HealthLimits(max_missed_deadline_fraction=0.5, grace_s=0.0)
    robot = SlowWrite(WideBox(), HZ, clock=VirtualClock())
    tel = vcontroller(scripted(), robot=robot, limits=limits).run(seconds=5.0)
    assert tel.stop_reason == "missed_deadlines" and tel.steps == 2
    assert tel.error == "1 of 1 steps (100.0%) ended after the next step was due; limit 50.0%"


def test_limits_defaults_and_validation() -> None:
    from envactor.runtime.realtime.health import HealthLimits

    assert HealthLimits().held_limit("rtc") == 0.2 and HealthLimits().held_limit("sync") == 0.5
    assert HealthLimits(max_held_fraction=0.3).held_limit("sync") == 0.3
    with pytest.raises(ValueError, match=r"max_held_fraction: expected a number in \[0, 1\]"):
        HealthLimits(max_held_fraction=1.5)
    with pytest.raises(ValueError, match="max_missed_deadline_fraction"):
        HealthLimits(max_missed_deadline_fraction=float("nan"))
    with pytest.raises(TypeError, match="max_missed_chunks: expected an int"):
        HealthLimits(max_missed_chunks=True)
    with pytest.raises(ValueError, match="grace_s: expected a finite number >= 0"):
        HealthLimits(grace_s=float("inf"))
    # sync at 45 ms holds 1/3 of its steps: fine by its default, not under a 0.2 limit
    strict = HealthLimits(max_held_fraction=0.2)
    tel = vcontroller(scripted(default_sleep=0.045), executor="sync", limits=strict).run(3.0)
    assert tel.stop_reason == "held_fraction"
    assert tel.error == "held the last action on 32.0% of steps (16 of 50); limit 20.0%"
    tel = vcontroller(scripted(default_sleep=0.045), executor="sync").run(3.0)
    assert tel.ok and tel.steps == 150 and tel.held_steps == 50


# ---------------------------------------------------------------------------- the clock
def test_virtual_clock_sleeps_until_advanced_and_released() -> None:
    clock = VirtualClock()
    clock.begin()  # this thread drives: its sleep moves the time
    clock.sleep(0.25)
    assert clock.now() == 0.25
    woke: list[float] = []
    other = threading.Thread(target=lambda: (clock.sleep(0.5), woke.append(clock.now())))
    other.start()
    while not clock.asleep_past(0.7):
        time.sleep(0.001)
    clock.wait_until(0.7)
    assert not woke and clock.asleep_past(0.7)  # it sleeps until 0.75
    clock.wait_until(0.8)
    other.join(10)
    assert woke == [0.8]
    stuck = threading.Thread(target=clock.sleep, args=(1.0,))
    stuck.start()
    clock.release()  # the run is over: every sleeper wakes
    stuck.join(10)
    assert not stuck.is_alive()
    lone = VirtualClock(real_timeout=0.05)
    errors: list[BaseException] = []

    def sleep_forever() -> None:
        try:
            lone.sleep(1.0)
        except TimeoutError as exc:
            errors.append(exc)

    t = threading.Thread(target=sleep_forever)
    t.start()
    t.join(10)
    assert "nothing advanced the clock" in str(errors[0])


# ---------------------------------------------------------------------------- real threads
def test_real_threads_smoke(no_leaks: None) -> None:
    """Wall clock, two real threads: whatever the scheduling, every action is accounted for."""
    ctrl = controller(scripted(default_sleep=0.005), executor="naive_async")
    tel = ctrl.run(max_steps=40)
    assert tel.stop_reason == "steps" and tel.steps == 40 and tel.ok and tel.leaked_threads == 0
    check_exact_accounting(ctrl)
    np.testing.assert_array_equal(np.array(ctrl.robot.executed), ctrl.executed)  # type: ignore[attr-defined]
    assert ctrl.sources[:4] == [(0, 0), (0, 1), (0, 2), (0, 3)]  # s_min actions before a swap
    assert len(tel.lateness_s) == 40 and SAFE not in ctrl.sources


def test_action_filter_worked_values() -> None:
    box = gym.spaces.Box(np.array([-1, -2], np.float32), np.array([1, 2], np.float32))
    f = ActionFilter(box, np.array([0.5, 10.0]))
    out, clipped, limited = f(np.array([3.0, -1.0]), np.array([0.2, 0.0]))
    np.testing.assert_allclose(out, [0.7, -1.0])
    assert limited and not clipped
    out, clipped, limited = f(np.array([3.0, -5.0]), np.array([0.9, 0.0]))
    np.testing.assert_allclose(out, [1.0, -2.0])  # 0.9 + 0.5 = 1.4 -> bound 1.0; -5 -> -2
    assert clipped and limited
    with pytest.raises(ValueError, match="max_delta must be > 0"):
        ActionFilter(gym.spaces.Box(-1.0, 1.0, (1,)), 0.0)


def test_percentiles_worked_values() -> None:
    p = percentiles_ms([0.001, 0.002, 0.003])
    assert p == {"p50": 2.0, "p99": 2.98, "max": 3.0}
    assert percentiles_ms([])["p99"] is None


def test_sigint_stops_cleanly_and_restores_the_handler(no_leaks: None) -> None:
    before = signal.getsignal(signal.SIGINT)
    ctrl = controller(scripted(), executor="naive_async")

    def interrupt() -> None:
        while ctrl.telemetry.steps < 5:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    killer = threading.Thread(target=interrupt)
    killer.start()
    tel = ctrl.run(seconds=30.0)
    killer.join()
    assert tel.stop_reason == "signal:SIGINT" and tel.ok and 5 <= tel.steps < 1500
    assert signal.getsignal(signal.SIGINT) is before


def test_background_start_stop_and_threaded_robot(no_leaks: None) -> None:
    env = gym.make("Pendulum-v1", max_episode_steps=10)
    robot = SimulatedRobot(env, HZ, threaded=True)
    ctrl = RealtimeController(scripted(), robot, hz=HZ, max_obs_age=None, warmup=False,
                              inference_timeout=60.0, limits=None)  # fmt: skip
    ctrl.start()
    deadline = time.monotonic() + 60.0
    while len(robot.executed) < 12 and time.monotonic() < deadline:  # its own clock's steps
        time.sleep(0.01)
    ctrl.stop()
    tel = ctrl.wait(30.0)
    assert tel.stop_reason == "stopped" and tel.leaked_threads == 0
    # the physics thread stepped at its own clock, with clipped pendulum torques
    assert len(robot.executed) >= 12 and robot.episodes >= 1
    assert {float(a[0]) for a in robot.executed} == {2.0}
    assert tel.clipped_steps == tel.steps


def test_first_chunk_failure_raises_and_validation(no_leaks: None) -> None:
    with pytest.raises(RuntimeError, match="first chunk failed: injected failure on call 1"):
        controller(scripted(fail_on=1)).run(seconds=1.0)
    with pytest.raises(ValueError, match="executor must be one of"):
        controller(scripted(), executor="ensemble")
    with pytest.raises(ValueError, match=r"s_min must be in \[1, H=8\], got 9"):
        controller(scripted(), s_min=9)
    for hz in (float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match="hz must be a finite number > 0"):
            RealtimeController(scripted(), SimulatedRobot(WideBox(), HZ), hz=hz)
        with pytest.raises(ValueError, match="hz must be a finite number > 0"):
            SimulatedRobot(WideBox(), hz)
    pend2 = gym.make("Pendulum-v1")
    pend2.action_space = gym.spaces.Box(-1.0, 1.0, (2,))
    with pytest.raises(ValueError, match=r"shape \(2,\) does not hold the policy's action_dim=1"):
        controller(scripted(), pend2)
    with pytest.raises(TypeError, match="Box action space"):
        SimulatedRobot(gym.make("CartPole-v1"), HZ)
    with pytest.raises(ValueError, match=r"needs SimulatedRobot.*the same clock"):
        RealtimeController(scripted(), SimulatedRobot(WideBox(), HZ), hz=HZ, clock=VirtualClock())
    with pytest.raises(ValueError, match="threaded SimulatedRobot runs on the wall clock"):
        SimulatedRobot(WideBox(), HZ, threaded=True, clock=VirtualClock())


# ---------------------------------------------------------------------------- envactor run
@pytest.fixture(scope="module")
def mlp_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from envactor import build_policy, save_policy
    from envactor.normalize import Normalizer

    torch.manual_seed(0)
    pol = build_policy("mlp_chunk", overrides=["policy.params.action_norm=identity"])
    pol.normalizer = Normalizer(
        {STATE: "mean_std", "action": "identity"}, {STATE: {"mean": np.zeros(3), "std": np.ones(3)}}
    )
    return save_policy(pol, tmp_path_factory.mktemp("run") / "ckpt")


def test_cli_run_writes_json(tmp_path: Path, mlp_ckpt: Path, no_leaks: None) -> None:
    parser = argparse.ArgumentParser()
    add_run_args(parser)
    out = tmp_path / "tel.json"
    args = parser.parse_args(["Pendulum-v1", "--ckpt", str(mlp_ckpt), "--seconds", "0.5",
                              "--sim-clock", "controller", "--json", str(out),
                              "--no-limits"])  # fmt: skip
    assert run_run(args) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "Pendulum-v1" and report["executor"] == "rtc"
    assert report["steps"] + report["skipped_periods"] == 25  # the grid of 0.5 s at 50 Hz
    assert report["stop_reason"] == "duration" and report["ok"] and report["limit"] is None
    assert set(report["jitter_ms"]) == {"p50", "p99", "max"}
    assert len(report["delay"]["forecast"]) == report["chunk_switches"]


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--hz", "inf", "expected a finite number > 0, got 'inf'"),
        ("--hz", "0", "expected a finite number > 0, got '0'"),
        ("--hz", "-1", "expected a finite number > 0, got '-1'"),
        ("--hz", "nan", "expected a finite number > 0, got 'nan'"),
        ("--seconds", "inf", "expected a finite number > 0, got 'inf'"),
        ("--delay-buffer", "0", "expected an integer >= 1, got '0'"),
        ("--max-delta", "-0.5", "expected a finite number > 0, 'auto' or 'off', got '-0.5'"),
        ("--max-held-fraction", "1.5", "expected a finite number >= 0 and <= 1 or 'off'"),
        ("--max-missed-chunks", "-1", "expected an integer >= 0 or 'off', got '-1'"),
    ],
)
def test_cli_run_bad_numbers_are_one_line_usage_errors(
    flag: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from envactor.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "Pendulum-v1", "--ckpt", "unused", flag, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert f"argument {flag}: {expected}" in err


def test_cli_run_usage_errors_before_running(
    tmp_path: Path, mlp_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from envactor.cli import main

    base = ["run", "Pendulum-v1", "--ckpt", str(mlp_ckpt), "--seconds", "60", "--no-progress"]
    cases = [
        (["--s-min", "9"], "--s-min must be <= the policy's horizon H=8, got 9"),
        (["--json", str(tmp_path / "no" / "t.json")], f"--json {tmp_path / 'no' / 't.json'}"),
    ]
    for extra, expected in cases:
        t0 = time.monotonic()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and expected in err, err
        assert time.monotonic() - t0 < 30  # refused before the 60 s run
    assert main(["run", "Pendulm-v1", "--ckpt", str(mlp_ckpt)]) == 2
    err = capsys.readouterr().err
    assert "Pendulm-v1" in err and "Pendulum-v1" in err and len(err.strip().splitlines()) == 1


def test_cli_run_that_fails_its_health_check_exits_1(
    tmp_path: Path, mlp_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's ``--hz 100000``: a 10 us period that no Python control step can keep (each
    one reads, filters, steps the env and writes), so nearly every step misses its deadline
    and holds; it used to report ok=True and exit 0."""
    from envactor.cli import main
    from envactor.runtime.realtime.cli import LIMIT_FLAGS

    out = tmp_path / "tel.json"
    code = main(["run", "Pendulum-v1", "--ckpt", str(mlp_ckpt), "--hz", "100000", "--seconds",
                 "0.5", "--sim-clock", "controller", "--json", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    (line,) = err.strip().splitlines()  # one line, and no progress line: stderr is no TTY
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["stop_reason"] in ("held_fraction", "missed_deadlines")
    flag = LIMIT_FLAGS[report["limit"]["limit"]]
    assert line == (f"envactor run: failed its health check: {report['stop_reason']}: "
                    f"{report['error']} (set the limit with {flag}, or --no-limits)")  # fmt: skip
    assert report["limit"]["measured"] > report["limit"]["threshold"]


def test_run_progress_line(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from envactor.runtime.realtime.cli import _progress

    stub = SimpleNamespace(telemetry=SimpleNamespace(steps=0))
    with _progress(stub, 2.0, False):
        pass
    assert capsys.readouterr().err == ""
    seen = ""
    with _progress(stub, 2.0, True, interval=0.01):
        stub.telemetry.steps = 7
        deadline = time.monotonic() + 30
        while "7 steps" not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
            seen += capsys.readouterr().err
    assert "run 0.0/2.0 s" in seen and "7 steps" in seen
