"""``n_obs_steps = 2`` end to end for the built-in flow policy: demonstrations collected on the
pendulum, training windows with history, a checkpoint that keeps it, acting with per-env
histories in the vector actor, and an expert with history labelling an episode step by step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")

from envactor import build_policy, evaluate
from envactor.distributed.worker import label_episode
from envactor.policy import Policy
from envactor.policy.base import PolicyError
from envactor.policy.policies.flow import FlowPolicy
from envactor.runtime.collect import collect
from envactor.train import train

TASK = "envactor/PendulumSwingUp-v0"
S = "observation.state"
SMALL = [
    "model.components.encoder.hidden_dims=[32]",
    "model.components.encoder.out_dim=32",
    "model.components.velocity.hidden_dims=[32]",
    "model.components.velocity.time_dim=16",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[tuple[int, ...]]]:
    """flow with n_obs_steps=2 trained 6 steps on 4 pendulum episodes; the observation shapes
    its loss saw."""
    root = tmp_path_factory.mktemp("history_train")
    collect(TASK, episodes=4, out=root / "demos", num_envs=4, progress=False)
    seen: list[tuple[int, ...]] = []
    loss = FlowPolicy._loss

    def spy(self: FlowPolicy, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append(tuple(batch[S].shape))
        return loss(self, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FlowPolicy, "_loss", spy)
        res = train("flow", root / "demos", out_dir=root / "run", steps=6, batch_size=16,
                    warmup_steps=1, save_every=6, progress=False,
                    overrides=["policy.params.n_obs_steps=2", *SMALL])  # fmt: skip
    return res, seen


def test_training_windows_carry_the_history_and_the_encoder_reads_it(
    trained: tuple[Any, list[tuple[int, ...]]],
) -> None:
    res, seen = trained
    assert seen == [(16, 2, 3)] * 6  # (B, n_obs_steps, state)
    assert res.policy.n_obs_steps == 2
    assert res.policy.components["encoder"].in_dim == 6  # 2 frames x 3 features, flattened
    loaded = build_policy(res.checkpoint)
    assert loaded.n_obs_steps == 2 and loaded.config["policy"]["params"]["n_obs_steps"] == 2


def test_each_env_acts_on_its_own_history(trained: tuple[Any, list[tuple[int, ...]]]) -> None:
    policy: Policy = build_policy(trained[0].checkpoint)
    now = np.array([[-1.0, 0.0, 0.0]], np.float32)
    before = {"a": np.array([[-1.0, 0.0, 0.0]], np.float32),
              "b": np.array([[0.0, 1.0, 3.0]], np.float32),
              "c": np.array([[-1.0, 0.0, 0.0]], np.float32)}  # fmt: skip
    policy.set_env_seeds(dict.fromkeys(before, 7))  # the same noise for every env
    for env, obs in before.items():
        policy.observe({S: obs}, env_ids=[env])
    chunks = policy.predict({S: np.repeat(now, 3, 0)}, env_ids=list(before))
    np.testing.assert_allclose(chunks[0], chunks[2], rtol=0, atol=1e-6)  # same history
    assert np.abs(chunks[0] - chunks[1]).max() > 1e-4  # only the previous frame differs
    policy.reset(["a"])  # a fresh env: its first frame fills both slots
    policy.set_env_seeds({"a": 7})
    again = policy.predict({S: now}, env_ids=["a"])
    np.testing.assert_allclose(again[0], chunks[0], rtol=0, atol=1e-6)


def test_vector_actor_eval_with_history_does_not_depend_on_the_number_of_envs(
    trained: tuple[Any, list[tuple[int, ...]]],
) -> None:
    ckpt = trained[0].checkpoint
    kw: dict[str, Any] = {"num_episodes": 3, "seed": 5, "env_kwargs": {"max_episode_steps": 25}}
    one = evaluate(ckpt, TASK, num_envs=1, executor="naive_async", delay=1, **kw)
    three = evaluate(ckpt, TASK, num_envs=3, executor="naive_async", delay=1, **kw)
    assert [m.length for m in one.episodes] == [25, 25, 25]
    got = sorted((m.episode, m.episode_return) for m in three.episodes)
    want = sorted((m.episode, m.episode_return) for m in one.episodes)
    np.testing.assert_allclose([r for _, r in got], [r for _, r in want], rtol=1e-4)
    assert len({round(r, 3) for _, r in want}) == 3  # three different episodes


def test_history_needs_an_encoder_sized_for_it() -> None:
    with pytest.raises(PolicyError, match=r"in_dim is 3, expected 6 \(sum of input_features "
                                          r"sizes x policy.params.n_obs_steps=2\)"):  # fmt: skip
        build_policy("flow", overrides=["policy.params.n_obs_steps=2"])
    with pytest.raises(Exception, match=r"n_obs_steps.*greater than 0"):
        build_policy("flow", overrides=["policy.params.n_obs_steps=0"])


def test_an_expert_with_history_labels_an_episode_step_by_step() -> None:
    torch.manual_seed(0)
    expert = build_policy("mlp_chunk", overrides=[
        "policy.params.n_obs_steps=2", "model.components.net.in_dim=6",
        f"policy.params.input_features={{{S}: {{shape: [3], norm: identity}}}}",
        "policy.params.action_norm=identity"])  # fmt: skip
    states = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    labels = label_episode(expert, {S: states, "action": np.zeros((5, 1), np.float32)}, 3)
    assert labels.shape == (5, 1)
    want = []
    for t in range(5):  # the deterministic expert on the window (state t-1, state t)
        expert.reset(["x"])
        expert.observe({S: states[max(t - 1, 0)][None]}, env_ids=["x"])
        want.append(expert.predict({S: states[t][None]}, env_ids=["x"])[0, 0])
    np.testing.assert_allclose(labels, np.stack(want), rtol=0, atol=1e-6)
    assert len({round(float(v), 5) for v in labels[:, 0]}) == 5  # not one window for all rows
