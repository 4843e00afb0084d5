"""Embedded tasks and their scripted experts: registration, success criteria, expert behaviour."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Hashable

import gymnasium as gym
import numpy as np
import pytest

import envactor.envs as envs_pkg
from envactor import build_policy
from envactor.envs import task_spec
from envactor.envs.pendulum import PendulumSwingUpEnv
from envactor.envs.pendulum_expert import PendulumExpert, lqr_gains
from envactor.envs.reacher_expert import inverse_kinematics
from envactor.runtime.actor import VectorActor
from envactor.runtime.evaluate import make_vector_env

PENDULUM = "envactor/PendulumSwingUp-v0"
PENDULUM50 = "envactor/PendulumSwingUp50-v0"
REACHER = "envactor/ReacherReach-v0"
STATE = "observation.state"


def expert(env_id: str, *overrides: str) -> PendulumExpert:
    return build_policy(task_spec(env_id)["expert_config"], overrides=list(overrides))  # type: ignore[return-value]


def obs_of(theta: float, dot: float) -> dict[str, np.ndarray]:
    return {STATE: np.array([[math.cos(theta), math.sin(theta), dot]], dtype=np.float32)}


def run_pendulum(policy, n: int, noise: float, seed: int = 0, env_id: str = PENDULUM):  # type: ignore[no-untyped-def]
    """n episodes on n envs (one each, so every env still holds its final state)."""
    envs = {i: gym.make(env_id, action_noise_std=noise) for i in range(n)}
    metrics = VectorActor(policy, "sync").run(envs, n, seed=seed)
    by_env = {m.env_id: m for m in metrics}
    dirs = {i: envs[i].unwrapped.swing_direction for i in envs}  # type: ignore[attr-defined]
    return metrics, by_env, dirs


# ---------------------------------------------------------------------- registration, spec
def test_tasks_register_and_import_no_mujoco() -> None:
    assert PENDULUM in gym.registry and REACHER in gym.registry
    assert gym.registry[PENDULUM].max_episode_steps == 200
    envs_pkg.register_tasks()  # idempotent
    code = "import envactor, envactor.envs, sys; print('mujoco' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_task_spec() -> None:
    spec = task_spec(PENDULUM)
    assert spec["expert"] == "pendulum_expert" and spec["action_dim"] == 1
    assert spec["observation"] == {STATE: {"shape": [3], "dtype": "float32"}}
    assert spec["control_hz"] == 20.0 and spec["max_episode_steps"] == 200
    assert task_spec(REACHER)["observation"][STATE]["shape"] == [10]
    with pytest.raises(KeyError, match="did you mean 'envactor/PendulumSwingUp-v0'"):
        task_spec("envactor/PendulumSwingup-v0")


def test_expert_yaml_builds() -> None:
    pol = expert(PENDULUM)
    assert isinstance(pol, PendulumExpert) and pol.action_shape == (1, 1)
    assert len(pol.components) == 0 and not pol.trainable
    with pytest.raises(Exception, match="action_dim must be 1"):
        expert(PENDULUM, "policy.params.action_dim=2")


# ---------------------------------------------------------------------- pendulum env
def test_pendulum_reset_step_and_noise() -> None:
    env = gym.make(PENDULUM)
    obs, info = env.reset(seed=3)
    theta = math.atan2(obs[1], obs[0])
    assert obs.dtype == np.float32 and obs.shape == (3,)
    assert abs(abs(theta) - math.pi) <= 0.05 + 1e-6 and abs(obs[2]) <= 0.05
    assert info == {"success": False, "upright_steps": 0, "swing_direction": 0}
    # no noise: the same seed and actions give the same trajectory; noise changes it
    a = [env.step(np.array([1.0]))[0] for _ in range(5)]
    env.reset(seed=3)
    assert np.array_equal(a[-1], [env.step(np.array([1.0]))[0] for _ in range(5)][-1])
    noisy = gym.make(PENDULUM, action_noise_std=0.5)
    noisy.reset(seed=3)
    b = [noisy.step(np.array([1.0]))[0] for _ in range(5)]
    assert not np.allclose(a[-1], b[-1])
    with pytest.raises(ValueError, match="shape \\(1,\\)"):
        env.step(np.zeros(2))


def test_pendulum_success_needs_last_30_upright() -> None:
    env = gym.make(PENDULUM, max_episode_steps=40)
    env.reset(seed=0, options={"state": (2 * math.pi, 0.0)})  # upright, reached ccw
    infos = [env.step(np.array([0.0]))[-1] for _ in range(40)]
    assert [i["success"] for i in infos].index(True) == 29  # the 30th upright step
    assert infos[-1]["swing_direction"] == 1 and infos[-1]["upright_steps"] == 40
    # upright for 35 steps, then forced to hang: the final step is not a success
    env.reset(seed=0, options={"state": (0.0, 0.0)})
    for _ in range(35):
        env.step(np.array([0.0]))
    env.unwrapped.state[:] = (math.pi, 0.0)  # type: ignore[attr-defined]
    *_, trunc, info = env.step(np.array([0.0]))
    for _ in range(4):
        *_, trunc, info = env.step(np.array([0.0]))
    assert trunc and not info["success"] and info["upright_steps"] == 0
    # the 0.3 rad band and a custom K: from 0.25 rad the pole falls out on the third step
    short = PendulumSwingUpEnv(hold_steps=2)
    short.reset(options={"state": (0.25, 0.0)})
    infos = [short.step(np.array([0.0]))[-1] for _ in range(3)]
    assert [i["upright_steps"] for i in infos] == [1, 2, 0]
    assert [i["success"] for i in infos] == [False, True, False]


# ---------------------------------------------------------------------- pendulum expert
def test_expert_laws_from_observation() -> None:
    pol = expert(PENDULUM, "policy.params.direction=ccw")
    assert pol.predict(obs_of(math.pi, 0.0))[0, 0, 0] == pytest.approx(2.0)  # push ccw
    mirrored = expert(PENDULUM, "policy.params.direction=cw")
    assert mirrored.predict(obs_of(math.pi, 0.0))[0, 0, 0] == pytest.approx(-2.0)
    # mid-swing both modes pump along the motion; near the top both balance (LQR)
    for pol_ in (pol, mirrored):
        assert pol_.predict(obs_of(2.0, -3.0))[0, 0, 0] == pytest.approx(-2.0)
        u = pol_.predict(obs_of(0.1, 0.2))[0, 0, 0]
        assert u == pytest.approx(-(10.31 * 0.1 + 2.49 * 0.2), abs=1e-4)


def test_expert_succeeds_both_directions_with_noise() -> None:
    pol = expert(PENDULUM)
    metrics, by_env, dirs = run_pendulum(pol, 20, noise=0.1)
    assert np.mean([m.success for m in metrics]) >= 0.9
    counts = {d: list(dirs.values()).count(d) for d in (-1, 1)}
    assert counts[-1] >= 4 and counts[1] >= 4, counts
    for e, d in dirs.items():  # the side it went over is the mode it committed to
        if by_env[e].success:
            assert pol.committed_direction(e) == d


def test_averaging_the_two_modes_fails() -> None:
    ccw, cw = (
        expert(PENDULUM, "policy.params.direction=ccw"),
        expert(PENDULUM, "policy.params.direction=cw"),
    )
    env = gym.make(PENDULUM, action_noise_std=0.1)
    successes = []
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            batch = {STATE: obs[None]}
            a = 0.5 * (ccw.predict(batch)[0, 0] + cw.predict(batch)[0, 0])
            obs, _, term, trunc, info = env.step(a)
            done = term or trunc
        successes.append(info["success"])
    assert not any(successes)


def test_expert_state_is_per_env_and_reset_per_env() -> None:
    pol = expert(PENDULUM)
    seeds: dict[Hashable, int] = {"a": 11, "b": 12, "c": 13}
    pol.set_env_seeds(seeds)
    rest = {STATE: np.repeat(obs_of(math.pi, 0.0)[STATE], 3, axis=0)}
    together = pol.predict(rest, env_ids=["a", "b", "c"])[:, 0, 0]
    alone = expert(PENDULUM)
    alone.set_env_seeds({"b": 12})
    assert alone.predict(obs_of(math.pi, 0.0), env_ids=["b"])[0, 0, 0] == together[1]
    assert [pol.committed_direction(e) for e in "abc"] == [int(np.sign(u)) for u in together]
    pol.reset(["a"])
    assert pol.committed_direction("a") is None
    assert pol.committed_direction("b") == int(np.sign(together[1]))
    pol.reset()
    assert all(pol.committed_direction(e) is None for e in "abc")


def test_expert_reproducible_and_chunked() -> None:
    runs = [
        [m.episode_return for m in VectorActor(expert(PENDULUM), "sync").run(
            make_vector_env(PENDULUM, 3, action_noise_std=0.1, max_episode_steps=60), 4, seed=s)]
        for s in (5, 5, 6)
    ]  # fmt: skip
    assert runs[0] == runs[1] and runs[0] != runs[2]
    # horizon > 1: the law rolled out on the nominal model, first action as with H = 1
    h8 = expert(PENDULUM, "policy.params.horizon=8", "policy.params.direction=ccw")
    chunk = h8.predict(obs_of(2.0, -3.0))[0, :, 0]
    assert chunk.shape == (8,) and chunk[0] == pytest.approx(-2.0)
    assert np.all(np.abs(chunk) <= 2.0)


# ---------------------------------------------------------------------- pendulum at 50 Hz
def test_pendulum50_registered_with_its_expert() -> None:
    assert gym.registry[PENDULUM50].max_episode_steps == 400
    spec = task_spec(PENDULUM50)
    assert spec["control_hz"] == 50.0 and spec["expert"] == "pendulum_expert"
    assert spec["expert_config"].endswith("pendulum_expert_50hz.yaml")
    assert task_spec(PENDULUM)["expert_config"].endswith("pendulum_expert.yaml")
    pol, pol20 = expert(PENDULUM50), expert(PENDULUM)
    assert pol.dt == pytest.approx(0.02) and pol.balance_gains == (11.11, 2.85)
    assert pol20.dt == pytest.approx(0.05) and pol20.balance_gains == (10.31, 2.49)
    with pytest.raises(Exception, match="needs its control period"):
        expert(PENDULUM50, "policy.params.control_hz=null")


def test_pendulum50_one_step_of_the_dynamics() -> None:
    # theta_dot' = theta_dot + (15 sin theta + 3 u) dt, theta' = theta + theta_dot' dt
    for env_id, dt, dot_worked in ((PENDULUM50, 0.02, 1.36279), (PENDULUM, 0.05, 1.90697)):
        env = gym.make(env_id)
        assert env.unwrapped.dt == dt  # type: ignore[attr-defined]
        env.reset(seed=0, options={"state": (2.0, 1.0)})
        obs, reward, *_ = env.step(np.array([1.5]))
        dot = 1.0 + (15 * math.sin(2.0) + 4.5) * dt
        theta = 2.0 + dot * dt
        np.testing.assert_allclose(obs, [math.cos(theta), math.sin(theta), dot], atol=1e-6)
        assert obs[2] == pytest.approx(dot_worked, abs=1e-5)
        assert reward == pytest.approx(-(2.0**2 + 0.1 * 1.0 + 0.001 * 1.5**2))


def test_pendulum50_success_is_the_last_1_5_seconds() -> None:
    env = gym.make(PENDULUM50, max_episode_steps=80)
    assert env.unwrapped.hold_steps == 75  # type: ignore[attr-defined]
    env.reset(seed=0, options={"state": (-2 * math.pi, 0.0)})  # upright, reached cw
    infos = [env.step(np.array([0.0]))[-1] for _ in range(80)]
    assert [i["success"] for i in infos].index(True) == 74  # 75 steps = 1.5 s
    assert infos[-1]["swing_direction"] == -1
    assert PendulumSwingUpEnv(dt=0.02, hold_time=0.1).hold_steps == 5
    assert PendulumSwingUpEnv(dt=0.025).hold_steps == 60
    with pytest.raises(ValueError, match="not both"):
        PendulumSwingUpEnv(hold_steps=3, hold_time=1.0)
    with pytest.raises(ValueError, match="dt must be in"):
        PendulumSwingUpEnv(dt=0.0)


def test_lqr_gains_worked_values() -> None:
    np.testing.assert_allclose(lqr_gains(0.05, decimals=None), (10.3077, 2.4931), atol=1e-4)
    np.testing.assert_allclose(lqr_gains(0.02, decimals=None), (11.1070, 2.8536), atol=1e-4)
    # dt -> 0: the continuous LQR (closed-loop s^2 + c1 s + c0 with c0 = sqrt(15^2 + 9 / 0.05)):
    # k_theta = (15 + c0) / 3, k_dot = sqrt(2 c0 + 30 + 0.9 / 0.05) / 3
    k_cont = ((15 + math.sqrt(405)) / 3, math.sqrt(2 * math.sqrt(405) + 48) / 3)
    np.testing.assert_allclose(lqr_gains(0.001, decimals=None), k_cont, atol=0.05)
    assert abs(lqr_gains(0.02, decimals=None)[0] - k_cont[0]) > 0.5  # dt matters


def test_expert50_chunk_is_the_law_rolled_out_at_dt() -> None:
    h8 = expert(PENDULUM50, "policy.params.horizon=8", "policy.params.direction=ccw")
    chunk = h8.predict(obs_of(0.1, 0.2))[0, :, 0]
    assert chunk[0] == pytest.approx(-(11.11 * 0.1 + 2.85 * 0.2), abs=1e-5)
    h1 = expert(PENDULUM50, "policy.params.direction=ccw")
    env = gym.make(PENDULUM50)
    obs, _ = env.reset(options={"state": (0.1, 0.2)})
    closed_loop = []
    for _ in range(8):
        closed_loop.append(h1.predict({STATE: obs[None]})[0, 0, 0])
        obs = env.step(np.array([closed_loop[-1]]))[0]
    np.testing.assert_allclose(chunk, closed_loop, atol=1e-4)
    h8_20 = expert(PENDULUM, "policy.params.horizon=8", "policy.params.direction=ccw")
    assert np.abs(h8_20.predict(obs_of(0.1, 0.2))[0, 1:, 0] - chunk[1:]).max() > 0.05


def test_expert50_succeeds_both_directions_with_noise() -> None:
    pol = expert(PENDULUM50)
    metrics, by_env, dirs = run_pendulum(pol, 16, noise=0.1, env_id=PENDULUM50)
    assert [m.length for m in metrics] == [400] * 16
    assert np.mean([m.success for m in metrics]) >= 0.9
    counts = {d: list(dirs.values()).count(d) for d in (-1, 1)}
    assert counts[-1] >= 3 and counts[1] >= 3, counts
    for e, d in dirs.items():
        if by_env[e].success:
            assert pol.committed_direction(e) == d


# ---------------------------------------------------------------------- reacher
def test_inverse_kinematics_worked_values() -> None:
    q = inverse_kinematics(np.array([[0.21, 0.0], [0.1, 0.11], [0.0, -0.15]]), 0.1, 0.11)
    np.testing.assert_allclose(q[0], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(q[1], [0.0, math.pi / 2], atol=1e-9)
    tip_x = 0.1 * np.cos(q[:, 0]) + 0.11 * np.cos(q[:, 0] + q[:, 1])
    tip_y = 0.1 * np.sin(q[:, 0]) + 0.11 * np.sin(q[:, 0] + q[:, 1])
    np.testing.assert_allclose([tip_x[2], tip_y[2]], [0.0, -0.15], atol=1e-9)
    assert q[2, 1] > 0  # the positive-elbow solution


def test_reacher_success_criterion_and_expert() -> None:
    pytest.importorskip("mujoco")
    env = gym.make(REACHER)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (10,) and "success" in info
    raw = env.unwrapped
    tip = raw.get_body_com("fingertip")[:2]  # type: ignore[attr-defined]
    qpos, qvel = raw.data.qpos.copy(), raw.data.qvel.copy() * 0  # type: ignore[attr-defined]
    for offset, ok in ((0.015, True), (0.025, False)):
        qpos[2:] = tip + np.array([offset, 0.0])
        raw.set_state(qpos, qvel)  # type: ignore[attr-defined]
        info = env.step(np.zeros(2))[-1]
        assert info["success"] is ok and info["distance"] == pytest.approx(offset, abs=2e-3)
    metrics = VectorActor(expert(REACHER), "sync").run(
        make_vector_env(REACHER, 5, action_noise_std=0.1), 10, seed=0
    )
    assert [m.length for m in metrics] == [50] * 10
    assert all(m.success for m in metrics)
