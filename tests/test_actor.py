"""VectorActor and evaluate over real gymnasium envs (Pendulum-v1)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from envactor import build_policy, evaluate
from envactor.cli import main
from envactor.runtime.actor import VectorActor, action_jerk


def small_policy():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    p = build_policy("mlp_chunk", overrides=["policy.params.action_norm=identity"])
    from envactor.normalize import Normalizer

    p.normalizer = Normalizer(
        {"observation.state": "mean_std", "action": "identity"},
        {"observation.state": {"mean": np.zeros(3), "std": np.ones(3)}},
    )
    return p


def pendulums(n: int, steps: int = 30) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make("Pendulum-v1", max_episode_steps=steps) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )


def test_action_jerk_worked_value() -> None:
    a = np.array([[0.0], [1.0], [4.0], [9.0]])  # second differences: 2, 2
    assert action_jerk(a) == pytest.approx(4.0)
    assert action_jerk(a[:2]) == 0.0


def test_eight_pendulums_stable_ids_through_resets() -> None:
    policy = small_policy()
    ids = [f"arm-{k}" for k in range(8)]
    envs = {e: gym.make("Pendulum-v1", max_episode_steps=20 + 5 * k) for k, e in enumerate(ids)}
    actor = VectorActor(policy, "sync")
    seen: list[list[object]] = []
    inner = actor.executor.act

    def spy(obs):  # type: ignore[no-untyped-def]
        seen.append(list(obs))
        return inner(obs)

    actor.executor.act = spy  # type: ignore[method-assign]
    eps = actor.run(envs, num_episodes=20, seed=3)
    assert [m.episode for m in eps] == list(range(20))
    assert {m.env_id for m in eps} == set(ids)
    for m in eps:  # each env kept its own episode length through resets
        assert m.length == 20 + 5 * ids.index(m.env_id)
        assert m.seed == 3 + m.episode and m.success is None
        assert m.requests == -(-m.length // 4)  # ceil(length / s), s = 4
    assert all(set(s) <= set(ids) for s in seen)
    assert seen[0] == ids


def test_same_seed_same_metrics_whatever_the_batch() -> None:
    policy = small_policy()
    runs = []
    for n in (1, 3, 8):
        eps = VectorActor(policy, "naive_async", delay=1).run(pendulums(n), 8, seed=11)
        runs.append([(m.seed, round(m.episode_return, 3), m.length) for m in eps])
    assert runs[0] == runs[1] == runs[2]
    eps = VectorActor(policy, "naive_async", delay=1).run(pendulums(2), 8, seed=12)
    assert [round(m.episode_return, 3) for m in eps] != [r[1] for r in runs[0]]


def test_collect_mode_noise_is_per_episode_seeded() -> None:
    policy = small_policy()
    a = VectorActor(policy, "sync", explore=True).run(pendulums(1), 4, seed=5)
    b = VectorActor(policy, "sync", explore=True).run(pendulums(4), 4, seed=5)
    c = VectorActor(policy, "sync", explore=False).run(pendulums(4), 4, seed=5)
    assert [m.episode_return for m in a] == pytest.approx([m.episode_return for m in b], abs=1e-3)
    assert [m.episode_return for m in a] != pytest.approx([m.episode_return for m in c], abs=1e-3)


def test_async_vector_env_same_as_sync() -> None:
    policy = small_policy()
    sync = evaluate(policy, "Pendulum-v1", num_envs=2, num_episodes=4, seed=1,
                    env_kwargs={"max_episode_steps": 25})  # fmt: skip
    asyn = evaluate(policy, "Pendulum-v1", num_envs=2, num_episodes=4, seed=1,
                    vectorization="async", env_kwargs={"max_episode_steps": 25})  # fmt: skip
    assert sync.summary()["return_mean"] == pytest.approx(asyn.summary()["return_mean"], abs=1e-3)
    assert sync.summary()["episodes"] == 4


def test_sync_executor_reports_held_steps() -> None:
    policy = small_policy()
    res = evaluate(policy, "Pendulum-v1", num_envs=2, num_episodes=2, executor="sync", delay=2,
                   env_kwargs={"max_episode_steps": 25})  # fmt: skip
    # 25 steps, s = 4: replans at local steps 4, 10, 16, 22 each hold 2 steps -> 8 held steps
    assert [m.held_steps for m in res.episodes] == [8, 8]


def test_eval_cli_json(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from envactor.policy.build import save_policy

    policy = small_policy()
    ckpt = save_policy(policy, tmp_path / "ckpt")
    rc = main(["eval", str(ckpt), "--env", "Pendulum-v1", "--num-envs", "2", "--episodes", "2",
               "--executor", "blend", "--delay", "1", "--max-episode-steps", "20", "--json",
               "--no-progress"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["executor"] == "blend" and out["summary"]["delay"] == 1
    assert len(out["episodes"]) == 2 and out["episodes"][0]["length"] == 20


def test_record_pairs_each_observation_with_its_action() -> None:
    policy = small_policy()
    eps = VectorActor(policy, "sync").run(pendulums(2, steps=12), 3, seed=2, record=True)
    for m in eps:
        traj = m.trajectory
        assert traj is not None
        assert traj["observation.state"].shape == (12, 3) and traj["action"].shape == (12, 1)
        assert traj["reward"].sum() == pytest.approx(m.episode_return, rel=1e-5)
        # the first action of each chunk is what the policy predicts from that observation
        first = policy.predict({"observation.state": traj["observation.state"][:1]})[0, 0]
        np.testing.assert_allclose(traj["action"][0], first, rtol=1e-5)
        env = gym.make("Pendulum-v1")
        o0, _ = env.reset(seed=m.seed)
        np.testing.assert_allclose(traj["observation.state"][0], o0, rtol=1e-6)
