"""Real-time controller: real threads at 50 Hz on a simulated pendulum with a scripted policy
whose chunks are identifiable (chunk number c of a run holds ``100 (c + 1) + i`` at index i)."""

from __future__ import annotations

import argparse
import json
import math
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
from envactor.runtime.realtime import HELD, SAFE, RealtimeController
from envactor.runtime.realtime_cli import add_run_args, run_run
from envactor.runtime.realtime_robot import SimulatedRobot
from envactor.runtime.realtime_safety import ActionFilter
from envactor.runtime.realtime_telemetry import percentiles_ms

STATE = "observation.state"
HZ = 50.0
PERIOD = 1.0 / HZ


class Scripted(Policy):
    """Call n (1-based since reset) returns ``100 n + i``; ``sleeps[n]`` seconds of latency,
    ``fail_on`` raises on that call."""

    trainable = False

    def __init__(self, sleeps: dict[int, float] | None = None, default_sleep: float = 0.0,
                 fail_on: int | None = None, **params: Any) -> None:  # fmt: skip
        super().__init__(None, None, **params)
        self.sleeps, self.default_sleep, self.fail_on = sleeps or {}, default_sleep, fail_on
        self.n = 0

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        self.n += 1
        if self.n == self.fail_on:
            raise RuntimeError(f"injected failure on call {self.n}")
        time.sleep(self.sleeps.get(self.n, self.default_sleep))
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
    robot = SimulatedRobot(env if env is not None else WideBox(), HZ)
    kw.setdefault("max_obs_age", 1.0)  # a loaded test machine must not trip the stale check
    kw.setdefault("warmup", False)
    return RealtimeController(policy, robot, hz=HZ, **kw)


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


def test_naive_async_switches_exactly(no_leaks: None) -> None:
    ctrl = controller(scripted(default_sleep=0.035), executor="naive_async")
    tel = ctrl.run(max_steps=50)
    assert tel.stop_reason == "steps" and tel.steps == 50 and tel.leaked_threads == 0
    assert tel.chunk_switches >= 5
    check_exact_accounting(ctrl)
    # the driven robot stepped with exactly what the controller wrote
    np.testing.assert_array_equal(np.array(ctrl.robot.executed), ctrl.executed)  # type: ignore[attr-defined]
    # 35 ms of latency at a 20 ms period: stale actions are skipped (1 or 2 per switch unless
    # the control loop itself ran late)
    skipped = [r.start_index for r in tel.chunks[1:]]
    assert sum(k >= 1 for k in skipped) >= len(skipped) / 2


def test_forecast_is_max_of_last_b_measured_delays(no_leaks: None) -> None:
    pol = scripted(sleeps={3: 0.045}, default_sleep=0.001)
    ctrl = controller(pol, executor="rtc", delay_buffer=3)
    calls: list[dict[str, Any]] = []
    inner = pol.guided_inference

    def spy(obs: Any, **kw: Any) -> np.ndarray:
        calls.append(kw)
        return inner(obs, **kw)

    pol.guided_inference = spy  # type: ignore[method-assign,assignment]
    tel = ctrl.run(max_steps=45)
    recs = tel.chunks
    assert len(recs) >= 6 and len(calls) >= len(recs) - 1
    for k, rec in enumerate(recs):
        assert rec.measured_delay == math.ceil(rec.latency_ms / 1e3 / PERIOD)
        if k:
            assert rec.forecast_delay == max(r.measured_delay for r in recs[max(0, k - 3) : k])
    assert recs[2].measured_delay >= 3 and recs[3].forecast_delay >= 3  # the 45 ms chunk
    for rec, kw in zip(recs[1:], calls):  # what guided inference got, and what then ran
        assert kw["delay"] == [rec.forecast_delay]
        assert kw["min_num_actions_executed"] == rec.executed_before
        remainder = kw["prev_chunk"][0]
        assert remainder.shape == (8 - rec.executed_before, 1)
        ran = ctrl.executed[rec.snapshot_step : rec.swap_step]
        np.testing.assert_array_equal(ran, remainder[: len(ran)])


def test_sync_holds_until_the_new_chunk_and_starts_it_at_zero(no_leaks: None) -> None:
    ctrl = controller(scripted(default_sleep=0.045), executor="sync")
    tel = ctrl.run(max_steps=40)
    src = ctrl.sources
    assert tel.held_steps == sum(s == HELD for s in src) >= tel.chunk_switches >= 3
    for rec in tel.chunks[1:]:
        assert rec.start_index == 0
        ran = [i for c, i in src if c == rec.chunk - 1]
        assert ran == [0, 1, 2, 3]  # exactly s_min actions of each finished chunk
        held = src[rec.snapshot_step : rec.swap_step]
        assert held == [HELD] * rec.actual_delay
    assert tel.missed_chunks == 0


@pytest.mark.parametrize("safe", ["hold", "zeros"])
def test_inference_error_is_a_safe_stop(no_leaks: None, safe: str) -> None:
    ctrl = controller(scripted(fail_on=3), executor="naive_async", safe_action=safe)
    tel = ctrl.run(seconds=5.0)
    assert tel.stop_reason == "inference_error" and not tel.ok
    assert "injected failure on call 3" in (tel.error or "")
    assert tel.steps < 30 and tel.leaked_threads == 0
    assert ctrl.sources[-1] == SAFE
    want = ctrl.actions[-2] if safe == "hold" else np.zeros(1, np.float32)
    np.testing.assert_array_equal(ctrl.actions[-1], want)


def test_stall_is_a_safe_stop_and_the_control_loop_never_blocks(no_leaks: None) -> None:
    ctrl = controller(scripted(sleeps={3: 0.6}), executor="rtc", inference_timeout=0.15)
    tel = ctrl.run(seconds=5.0)
    assert tel.stop_reason == "inference_stall" and "deadline 0.150 s" in (tel.error or "")
    assert tel.leaked_threads == 0 and ctrl.sources[-1] == SAFE
    # the old chunk ran out while the policy slept: held, one missed chunk, no garbage replayed
    assert tel.missed_chunks == 1 and tel.held_steps >= 1
    assert ctrl.sources[-2] == HELD and ctrl.actions[-1][0] == ctrl.actions[-2][0]


class FrozenSensor(SimulatedRobot):
    """Its observations stop being refreshed after ``freeze_at`` reads."""

    def __init__(self, freeze_at: int) -> None:
        super().__init__(WideBox(), HZ)
        self.reads, self.freeze_at = 0, freeze_at

    def read(self) -> dict[str, Any]:
        self.reads += 1
        obs = super().read()
        if self.reads > self.freeze_at:
            obs["timestamp"] = time.monotonic() - 0.5
        return obs


def test_stale_observation_is_a_safe_stop(no_leaks: None) -> None:
    ctrl = RealtimeController(scripted(), FrozenSensor(10), hz=HZ, max_obs_age=0.2, warmup=False)
    tel = ctrl.run(seconds=5.0)
    assert tel.stop_reason == "stale_observation" and "limit 200.0 ms" in (tel.error or "")
    # read 1 made the first chunk; control step 10 got read 11, the first frozen one
    assert tel.steps == 10 and ctrl.sources[-1] == SAFE and SAFE not in ctrl.sources[:-1]


def test_clip_and_slew_limit_applied(no_leaks: None) -> None:
    # bounds [-1000, 250]: chunk 3 onwards (300+) is clipped; switches are slew-limited to 5
    ctrl = controller(scripted(default_sleep=0.005), WideBox(high=250.0),
                      executor="naive_async", max_delta=5.0)  # fmt: skip
    tel = ctrl.run(max_steps=40)
    prev = float(ctrl.actions[0][0])
    assert prev == 100.0
    for (c, i), a in zip(ctrl.sources[1:], ctrl.actions[1:]):
        raw = 100.0 * (c + 1) + i if (c, i) != HELD else prev
        want = prev + float(np.clip(raw - prev, -5.0, 5.0))
        assert float(a[0]) == min(want, 250.0)
        prev = float(a[0])
    assert tel.slew_limited_steps >= 10 and tel.clipped_steps >= 1
    assert max(ctrl.executed[:, 0]) == 250.0


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
    tel = ctrl.run(seconds=5.0)
    killer.join()
    assert tel.stop_reason == "signal:SIGINT" and tel.ok and 5 <= tel.steps < 100
    assert signal.getsignal(signal.SIGINT) is before


def test_background_start_stop_and_threaded_robot(no_leaks: None) -> None:
    env = gym.make("Pendulum-v1", max_episode_steps=10)
    robot = SimulatedRobot(env, HZ, threaded=True)
    ctrl = RealtimeController(scripted(), robot, hz=HZ, max_obs_age=1.0, warmup=False)
    ctrl.start()
    while ctrl.telemetry.steps < 25:
        time.sleep(0.01)
    ctrl.stop()
    tel = ctrl.wait(5.0)
    assert tel.stop_reason == "stopped" and tel.leaked_threads == 0
    # the physics thread stepped at its own clock, with clipped pendulum torques
    assert len(robot.executed) >= 15 and robot.episodes >= 1
    assert {float(a[0]) for a in robot.executed} <= {2.0}
    assert tel.clipped_steps == tel.steps


def test_first_chunk_failure_raises_and_validation(no_leaks: None) -> None:
    with pytest.raises(RuntimeError, match="first chunk failed: injected failure on call 1"):
        controller(scripted(fail_on=1)).run(seconds=1.0)
    with pytest.raises(ValueError, match="executor must be one of"):
        controller(scripted(), executor="ensemble")
    with pytest.raises(ValueError, match=r"s_min must be in \[1, H=8\], got 9"):
        controller(scripted(), s_min=9)
    pend2 = gym.make("Pendulum-v1")
    pend2.action_space = gym.spaces.Box(-1.0, 1.0, (2,))
    with pytest.raises(ValueError, match=r"shape \(2,\) does not hold the policy's action_dim=1"):
        controller(scripted(), pend2)
    with pytest.raises(TypeError, match="Box action space"):
        SimulatedRobot(gym.make("CartPole-v1"), HZ)


def test_cli_run_writes_json(tmp_path: Path, no_leaks: None) -> None:
    from envactor import build_policy, save_policy
    from envactor.normalize import Normalizer

    torch.manual_seed(0)
    pol = build_policy("mlp_chunk", overrides=["policy.params.action_norm=identity"])
    pol.normalizer = Normalizer(
        {STATE: "mean_std", "action": "identity"}, {STATE: {"mean": np.zeros(3), "std": np.ones(3)}}
    )
    save_policy(pol, tmp_path / "ckpt")
    parser = argparse.ArgumentParser()
    add_run_args(parser)
    out = tmp_path / "tel.json"
    args = parser.parse_args(["Pendulum-v1", "--ckpt", str(tmp_path / "ckpt"), "--seconds", "0.5",
                              "--sim-clock", "controller", "--json", str(out)])  # fmt: skip
    assert run_run(args) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "Pendulum-v1" and report["executor"] == "rtc"
    assert report["steps"] + report["skipped_periods"] == 25
    assert report["stop_reason"] == "duration"
    assert set(report["jitter_ms"]) == {"p50", "p99", "max"}
    assert len(report["delay"]["forecast"]) == report["chunk_switches"] >= 4


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
        seen.append(f"{kw['method']}/{kw['jacobian']}")
        return inner(obs, **kw)

    pol.guided_inference = spy  # type: ignore[method-assign,assignment]
    ctrl = controller(pol, gym.make("Pendulum-v1"), executor="rtc", max_delta=0.5)
    tel = ctrl.run(max_steps=30)
    assert tel.ok and tel.chunk_switches >= 3 and set(seen) == {"auto/vjp"}
    assert np.all(np.abs(np.diff(ctrl.executed[:, 0])) <= 0.5 + 1e-6)
    assert np.all(np.abs(ctrl.executed) <= 2.0)
