"""Bidirectional decoding (``bid``) and what it needs of the policy contract: N samples per env
in one call (``predict(num_samples=N)``), reproducible per env, and ``env_seed``."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from envactor import Policy, build_policy, evaluate, save_policy
from envactor.normalize import Normalizer
from envactor.policy.base import PolicyError
from envactor.runtime import make_executor
from envactor.runtime.executors.bid import BIDExecutor, weak_seed
from envactor.runtime.realtime.clock import VirtualClock
from envactor.runtime.realtime.controller import RealtimeController
from envactor.runtime.realtime.robot import SimulatedRobot

S = "observation.state"
H, A = 8, 1
TASK = "envactor/PendulumSwingUp-v0"
IDENTITY = {"input_features": {S: {"shape": [1], "norm": "identity"}}, "action_dim": A,
            "action_norm": "identity", "horizon": H, "n_action_steps": 2}  # fmt: skip


class Noise(Policy):
    """Every chunk is the env's noise draw (B, H, A): shows which draw each row got."""

    trainable = False

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        return self._randn(env_ids, *self.action_shape)


class Levels(Policy):
    """Row k of env e (counted since its reset) is the constant ``levels[k % len(levels)]``."""

    trainable = False

    def __init__(self, levels: list[float], **params: Any) -> None:
        super().__init__(None, None, **params)
        self.levels, self.seen = levels, {}

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        rows = []
        for e in env_ids:
            k = self.seen.get(e, 0)
            self.seen[e] = k + 1
            rows.append(torch.full(self.action_shape, self.levels[k % len(self.levels)]))
        return torch.stack(rows)

    def _reset(self, env_ids: Any) -> None:
        for e in list(self.seen) if env_ids is None else env_ids:
            self.seen.pop(e, None)


def obs_of(n: int) -> dict[str, np.ndarray]:
    return {S: np.zeros((n, 1), np.float32)}


def draws(seed: int, n: int) -> np.ndarray:
    """The first n (H, A) standard normal draws of a generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return np.stack([torch.randn((H, A), generator=gen).numpy() for _ in range(n)])


# ---------------------------------------------------------------------------- the contract
def test_num_samples_draw_each_envs_noise_in_turn() -> None:
    policy = Noise(None, None, **IDENTITY)
    policy.set_env_seeds({"a": 11, "b": 22})
    out = policy.predict(obs_of(2), env_ids=["a", "b"], num_samples=3)
    assert out.shape == (2, 3, H, A)
    np.testing.assert_array_equal(out[0], draws(11, 3))  # a's 1st, 2nd and 3rd draw
    np.testing.assert_array_equal(out[1], draws(22, 3))
    assert np.abs(out[0, 0] - out[0, 1]).max() > 0.1  # independent samples
    # sample j of env b is the same whatever else is in the batch
    policy.set_env_seeds({"b": 22})
    np.testing.assert_array_equal(policy.predict(obs_of(1), env_ids=["b"], num_samples=3)[0],
                                  out[1])  # fmt: skip
    assert policy.env_seed("b") == 22 and policy.env_seed("never") is None
    # num_samples=1 is the plain (B, H, A) call
    assert policy.predict(obs_of(2), env_ids=["a", "b"], num_samples=1).shape == (2, H, A)


@pytest.mark.parametrize("bad", [0, -2, True, 2.0, "3"])
def test_num_samples_must_be_a_positive_integer(bad: object) -> None:
    policy = Noise(None, None, **IDENTITY)
    with pytest.raises((TypeError, ValueError), match="num_samples must be an integer >= 1"):
        policy.predict(obs_of(1), num_samples=bad)  # type: ignore[arg-type]


class History(Policy):
    """n_obs_steps = 2: every action of a chunk is (older frame) * 10 + (newer frame)."""

    trainable = False

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        x = obs[S][:, :, 0]  # (B, 2)
        return (10 * x[:, 0] + x[:, 1])[:, None, None].expand(-1, H, A)


def test_num_samples_enters_the_observation_in_the_history_once() -> None:
    policy = History(None, None, **{**IDENTITY, "n_obs_steps": 2})
    for t in (1.0, 2.0):
        out = policy.predict({S: np.array([[t]], np.float32)}, env_ids=["a"], num_samples=4)
    assert out.shape == (1, 4, H, A)
    assert (out == 12.0).all()  # frames [1, 2]: not [2, 2], which 4 pushes would leave


# ---------------------------------------------------------------------------- the selection
def test_backward_coherence_picks_the_candidate_closest_to_the_remainder() -> None:
    policy = Levels([0.0, 0.3, 1.0], **IDENTITY)
    ex = make_executor("bid", policy, delay=2, num_samples=3, mode_size=1)
    request = ex.guidance([np.full((6, A), 0.6, np.float32)], [2])
    # L_B = |c - 0.6| (constant chunks, W normalized): 0.6, 0.3, 0.4 -> the 0.3 chunk
    np.testing.assert_allclose(ex.infer(obs_of(1), ["e"], request)[0], 0.3)


def test_forward_contrast_steers_away_from_the_weak_policy() -> None:
    strong = Levels([0.0, 0.3, 1.0], **IDENTITY)
    weak = Levels([0.3], **IDENTITY)  # the weak policy's samples sit at 0.3
    ex = make_executor("bid", strong, delay=2, num_samples=3, mode_size=1, weak=weak)
    request = ex.guidance([np.full((6, A), 0.6, np.float32)], [2])
    # L_B = 0.6, 0.3, 0.4; A+ = the most coherent other candidate, A- = {0.3}:
    # c = 0.0: +|0 - 0.3| - |0 - 0.3| = 0      -> 0.6
    # c = 0.3: +|0.3 - 1| - 0         = 0.7    -> 1.0
    # c = 1.0: +|1 - 0.3| - |1 - 0.3| = 0      -> 0.4  (the pick)
    np.testing.assert_allclose(ex.infer(obs_of(1), ["e"], request)[0], 1.0)


def test_bid_with_one_sample_is_naive_async() -> None:
    def run(name: str, **kw: Any) -> list[float]:
        policy = Levels([0.0, 5.0, 1.0, 7.0], **IDENTITY)
        ex = make_executor(name, policy, delay=1, **kw)
        return [float(ex.act({"e": {S: np.zeros(1, np.float32)}})["e"][0]) for _ in range(9)]

    assert run("bid", num_samples=1) == run("naive_async")
    # with 4 candidates the chunk closest to the remainder (here always the 0.0 one) wins
    assert run("bid", num_samples=4, mode_size=2) == [0.0] * 9


def test_every_candidate_non_finite_is_an_error() -> None:
    policy = Levels([float("nan")], **IDENTITY)
    ex = make_executor("bid", policy, delay=1, num_samples=2, mode_size=1)
    request = ex.guidance([np.zeros((4, A), np.float32)], [1])
    with pytest.raises(PolicyError, match=r"bid: every candidate chunk is non-finite .*\['e'\]"):
        ex.infer(obs_of(1), ["e"], request)


def test_bad_settings_are_refused() -> None:
    policy = Levels([0.0], **IDENTITY)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1, got 0"):
        BIDExecutor(policy, num_samples=0)
    with pytest.raises(ValueError, match="mode_size K must be <= num_samples N=4, got 5"):
        BIDExecutor(policy, num_samples=4, mode_size=5)
    other = Levels([0.0], **{**IDENTITY, "horizon": 4})
    with pytest.raises(ValueError, match=r"chunk shape \(8, 1\); got \['observation.state'\] "):
        BIDExecutor(policy, weak=other)


# ---------------------------------------------------------------------------- real envs
STATS = {S: {"mean": np.zeros(3), "std": np.ones(3)},
         "action": {"min": np.array([-2.0]), "max": np.array([2.0])}}  # fmt: skip
SMALL = [
    "model.components.encoder.hidden_dims=[32]",
    "model.components.encoder.out_dim=32",
    "model.components.velocity.hidden_dims=[32]",
    "model.components.velocity.time_dim=16",
]


def flow(seed: int) -> Policy:
    torch.manual_seed(seed)
    policy = build_policy("flow", overrides=SMALL)
    policy.normalizer = Normalizer({S: "mean_std", "action": "min_max"}, STATS)
    return policy


@pytest.fixture(scope="module")
def weak_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_policy(flow(1), tmp_path_factory.mktemp("weak") / "ckpt")


def test_bid_results_do_not_depend_on_num_envs(weak_dir: Path) -> None:
    """Each env's candidates (strong and weak) are seeded per episode: 1 env or 3 in a batch
    give the same episodes."""
    runs = []
    for num_envs in (1, 3):
        settings = {"num_samples": 4, "mode_size": 2, "weak": weak_dir}
        r = evaluate(flow(0), TASK, num_envs=num_envs, num_episodes=3, executor="bid", delay=2,
                     n_action_steps=2, seed=5, env_kwargs={"max_episode_steps": 20},
                     executor_kwargs=settings)  # fmt: skip
        runs.append([(m.episode_return, m.jerk) for m in r.episodes])
    assert runs[0] == runs[1]
    plain = evaluate(flow(0), TASK, num_envs=3, num_episodes=3, executor="naive_async", delay=2,
                     n_action_steps=2, seed=5, env_kwargs={"max_episode_steps": 20})  # fmt: skip
    assert [m.episode_return for m in plain.episodes] != [r for r, _ in runs[1]]


def test_weak_policy_is_seeded_from_the_strong_one_per_episode(weak_dir: Path) -> None:
    strong = flow(0)
    ex = make_executor("bid", strong, delay=1, num_samples=2, mode_size=1, weak=weak_dir)
    assert isinstance(ex, BIDExecutor) and ex.weak is not None
    ids: list[Hashable] = ["a", "b"]
    obs = {S: np.zeros((2, 3), np.float32)}
    request = ex.guidance([np.zeros((6, 1), np.float32)] * 2, [1, 1])
    strong.set_env_seeds({"a": 3, "b": 4})
    first = ex.infer(obs, ids, request)
    assert ex.weak.env_seed("a") == weak_seed(3) and ex.weak.env_seed("b") == weak_seed(4)
    assert weak_seed(3) != 3
    ex.reset(["a"])  # a new episode of a, seeded as before: the same candidates again
    strong.set_env_seeds({"a": 3})
    again = ex.infer({S: obs[S][:1]}, ["a"], request.rows([0]))
    np.testing.assert_allclose(again[0], first[0], atol=1e-5)  # batch of 1 vs 2: rounding


def test_bid_in_the_realtime_controller() -> None:
    import gymnasium as gym

    clock = VirtualClock()
    robot = SimulatedRobot(gym.make(TASK), 20.0, clock=clock)
    ctl = RealtimeController(flow(0), robot, hz=20.0, executor="bid", clock=clock, warmup=True,
                             limits=None)  # fmt: skip
    tel = ctl.run(max_steps=20)
    assert tel.ok and len(ctl.actions) == 20 and np.isfinite(np.stack(ctl.actions)).all()
