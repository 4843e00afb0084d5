"""The vector actor over each kind of env batch: gymnasium's AsyncVectorEnv gives the episodes of
SyncVectorEnv and a dict of envs, with the policy call of asynchronous executors made while the
env processes step; an EnvBatch that only implements the by-id methods works too; and the array
path of every built-in executor is the path the actor takes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from envactor import build_policy
from envactor.normalize import Normalizer
from envactor.runtime.actor import EpisodeMetrics, VectorActor
from envactor.runtime.env_batch import DictEnvBatch, EnvBatch, StepResult, VectorEnvBatch
from envactor.runtime.executors import EXECUTORS, make_executor

LENGTHS = [13, 21, 17]


def policy() -> Any:
    torch.manual_seed(0)
    p = build_policy("mlp_chunk", overrides=["policy.params.action_norm=identity"])
    p.normalizer = Normalizer(
        {"observation.state": "mean_std", "action": "identity"},
        {"observation.state": {"mean": np.zeros(3), "std": np.ones(3)}},
    )
    return p


def fns() -> list[Any]:
    return [lambda n=n: gym.make("Pendulum-v1", max_episode_steps=n) for n in LENGTHS]


def facts(eps: list[EpisodeMetrics]) -> list[tuple[Any, ...]]:
    return [(m.episode, str(m.env_id), m.episode_return, m.length, m.jerk, m.held_steps,
             m.requests, m.truncated) for m in eps]  # fmt: skip


class Spy(VectorEnvBatch):
    """Records whether each policy call ran while the envs were stepping (send .. receive)."""

    def __init__(self, envs: gym.vector.VectorEnv) -> None:
        super().__init__(envs, lambda o: {"observation.state": np.asarray(o, np.float32)})
        self.stepping = False
        self.calls: list[bool] = []

    def send(self, rows: np.ndarray, actions: np.ndarray) -> None:
        super().send(rows, actions)
        self.stepping = True

    def receive(self) -> Any:
        out = super().receive()
        self.stepping = False
        return out


@pytest.mark.parametrize(("name", "delay"), [("naive_async", 2), ("temporal_ensemble", 1),
                                             ("sync", 0), ("rtc", 1)])  # fmt: skip
def test_async_vector_env_gives_the_sync_episodes_and_overlaps_inference(
    name: str, delay: int
) -> None:
    results = {}
    for kind in ("sync", "async", "dict"):
        p = policy()
        actor = VectorActor(p, name, delay=delay, n_action_steps=2)
        if kind == "dict":
            envs: Any = {k: fn() for k, fn in enumerate(fns())}
            results[kind] = facts(actor.run(envs, 7, seed=4))
            continue
        vec_cls = gym.vector.AsyncVectorEnv if kind == "async" else gym.vector.SyncVectorEnv
        vec = vec_cls(fns(), autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        batch = Spy(vec)
        predict = p.predict

        def spy(*a: Any, batch: Spy = batch, predict: Any = predict, **k: Any) -> Any:
            batch.calls.append(batch.stepping)
            return predict(*a, **k)

        p.predict = spy  # type: ignore[method-assign]
        try:
            results[kind] = facts(actor.run(batch, 7, seed=4))
        finally:
            vec.close()
        overlapped = sum(batch.calls)
        if kind == "sync" or delay == 0:
            assert overlapped == 0  # nothing to overlap with / every chunk needed at once
        else:  # every replan but the first chunk of each episode ran while the envs stepped
            assert batch.calls and overlapped >= len(batch.calls) - 7, batch.calls
    assert results["async"] == results["sync"] == results["dict"]
    assert len(results["sync"]) == 7


class ById(EnvBatch):
    """A batch that only implements the by-id methods (the array forms are the defaults)."""

    def __init__(self, envs: Mapping[Hashable, gym.Env]) -> None:
        self.inner = DictEnvBatch(envs, lambda o: {"observation.state": np.asarray(o, np.float32)})
        self.ids = list(envs)

    def reset(self, seeds: Mapping[Hashable, int]) -> dict[Hashable, dict[str, np.ndarray]]:
        return self.inner.reset(seeds)

    def step(self, actions: Mapping[Hashable, np.ndarray]) -> dict[Hashable, StepResult]:
        return self.inner.step(actions)


def test_an_env_batch_with_only_the_by_id_methods_runs() -> None:
    a = VectorActor(policy(), "blend", delay=1).run(ById({k: fn() for k, fn in enumerate(fns())}),
                                                    5, seed=2)  # fmt: skip
    b = VectorActor(policy(), "blend", delay=1).run({k: fn() for k, fn in enumerate(fns())}, 5,
                                                    seed=2)  # fmt: skip
    assert facts(a) == facts(b) and [m.length for m in a] == [13, 21, 17, 13, 17]


def test_vector_env_batch_by_id_and_by_position_agree() -> None:
    vec = gym.vector.SyncVectorEnv(fns(), autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    batch = VectorEnvBatch(vec, lambda o: {"observation.state": np.asarray(o, np.float32)})
    first = batch.reset({0: 5, 1: 6, 2: 7})
    o0, _ = gym.make("Pendulum-v1").reset(seed=6)
    np.testing.assert_array_equal(first[1]["observation.state"], o0)
    out = batch.step({2: np.array([0.5], np.float32), 0: np.array([-1.0], np.float32)})
    assert list(out) == [2, 0] and isinstance(out[2].reward, float)
    again = batch.reset_rows([1], [6])
    np.testing.assert_array_equal(again["observation.state"][0], o0)
    vec.close()


def test_builtins_take_the_array_path_plugins_with_per_env_rules_their_own() -> None:
    from envactor.runtime.executors.sync import SyncExecutor

    builtins = ("sync", "naive_async", "temporal_ensemble", "blend", "rtc", "rtc_identity",
                "rtc_trained")  # fmt: skip
    assert all(EXECUTORS.get(n).vectorized for n in builtins)

    class OwnCall(SyncExecutor):  # a different policy call, the same rules: still arrays
        def infer(self, batch: Any, env_ids: Any, request: Any) -> np.ndarray:
            return super().infer(batch, env_ids, request)

    class OwnRule(SyncExecutor):
        def _wants(self, st: Any) -> bool:
            return super()._wants(st)

    assert OwnCall.vectorized and not OwnRule.vectorized
    ex = OwnRule(policy())
    out = ex.act({"a": {"observation.state": np.zeros(3, np.float32)}})
    assert ex.episode_stats("a") == {"held_steps": 0, "requests": 1} and out["a"].shape == (1,)
    with pytest.raises(KeyError, match=r"missing keys \['observation.state'\]"):
        make_executor("sync", policy()).act_batch(["a"], {"state": np.zeros((1, 3))})
