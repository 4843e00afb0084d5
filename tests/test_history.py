"""Observation history (``n_obs_steps > 1``): per env, per mode view, every step, in training
windows too. The test policy's chunk reads two frames: step 0 is ``obs[t] - obs[t-1]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn

from envactor import Policy
from envactor.policy import ObservationError, PolicyParams
from envactor.policy.contract import check_policy_class
from envactor.policy.history import ObsHistory
from envactor.policy.hooks import ContractError
from envactor.runtime.actor import VectorActor

STATE = "observation.state"


class HistParams(PolicyParams):
    n_obs_steps: int = Field(default=1, ge=1)


class DiffPolicy(Policy):
    """Chunk step 0 = ``x[t] - x[t-1]``, step h > 0 = ``x[t] + h`` (times a trainable gain);
    records every history ``_chunk`` saw with its env ids."""

    Params = HistParams
    required_components = ("gain",)

    def __init__(self, components: Any = None, normalizer: Any = None, **params: Any) -> None:
        super().__init__(components, normalizer, **params)
        self.seen: list[tuple[list[Any], torch.Tensor]] = []

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        x = obs[STATE]
        self.seen.append((list(env_ids), x.detach().clone()))
        cur = x[:, -1] if x.dim() == 3 else x
        prev = x[:, -2] if x.dim() == 3 else x
        steps = [cur - prev] + [cur + h for h in range(1, self.params.horizon)]
        gain = self.components["gain"].weight.reshape(())
        return gain * torch.stack(steps, 1)

    def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        err = (self._chunk(batch, []) - batch["action"]).pow(2).mean(-1)
        keep = (~batch["action_is_pad"].bool()).float()
        return {"loss": (err * keep).sum() / keep.sum()}


def make(n_obs: int = 2, horizon: int = 2, s: int = 1) -> DiffPolicy:
    gain = nn.Linear(1, 1, bias=False)
    nn.init.ones_(gain.weight)
    return DiffPolicy(
        {"gain": gain},
        None,
        input_features={STATE: {"shape": [2], "norm": "identity"}},
        action_dim=2,
        action_norm="identity",
        horizon=horizon,
        n_action_steps=s,
        n_obs_steps=n_obs,
    )


def frame(*rows: float) -> dict[str, np.ndarray]:
    """One observation per row: ``[v, -v]``."""
    v = np.asarray(rows, np.float32)
    return {STATE: np.stack([v, -v], 1)}


def test_contract_accepts_a_history_policy_and_keeps_observe() -> None:
    check_policy_class("diff", DiffPolicy)
    assert make(3).n_obs_steps == 3 and make(1).n_obs_steps == 1

    with pytest.raises(ContractError, match=r"overrides public method\(s\) \['observe'\]"):

        class Sneaky(DiffPolicy):
            def observe(self, obs: Any, *, env_ids: Any = None) -> None:
                pass


def test_obs_history_pads_with_the_first_frame_and_resets_per_env() -> None:
    h = ObsHistory(3)
    h.push(["a", "b"], {"x": torch.tensor([1.0, 10.0])})
    assert h.stack(["b", "a"])["x"].tolist() == [[10, 10, 10], [1, 1, 1]]
    h.push(["a"], {"x": torch.tensor([2.0])})
    h.push(["a"], {"x": torch.tensor([3.0])})
    h.push(["a"], {"x": torch.tensor([4.0])})
    assert h.stack(["a"])["x"].tolist() == [[2, 3, 4]]
    h.reset(["a"])
    assert "a" not in h and "b" in h
    with pytest.raises(KeyError, match="no observation history"):
        h.stack(["a"])


def test_history_rows_are_copies_of_the_callers_buffer() -> None:
    p = make(2)
    buf = frame(1.0)
    p.predict(buf, env_ids=["e"])
    buf[STATE][:] = 99.0  # a vector env reuses its observation buffer in place
    out = p.predict(frame(3.0), env_ids=["e"])
    np.testing.assert_array_equal(out[0, 0], [2.0, -2.0])


def test_predict_hands_chunk_the_last_n_frames_per_env() -> None:
    p = make(2)
    out = p.predict(frame(1.0, 5.0), env_ids=["a", "b"])
    np.testing.assert_array_equal(out[:, 0], [[0, 0], [0, 0]])  # padded: x[t] - x[t] = 0
    assert p.seen[-1][1].shape == (2, 2, 2)
    out = p.predict(frame(7.0), env_ids=["b"])  # only b steps
    np.testing.assert_array_equal(out[0, 0], [2.0, -2.0])
    out = p.predict(frame(4.0, 8.0), env_ids=["a", "b"])
    np.testing.assert_array_equal(out[:, 0], [[3, -3], [1, -1]])
    np.testing.assert_array_equal(out[:, 1], [[5, -3], [9, -7]])  # x[t] + 1
    p.reset(["a"])
    out = p.predict(frame(0.0, 10.0), env_ids=["a", "b"])
    np.testing.assert_array_equal(out[:, 0], [[0, 0], [2, -2]])  # a restarted, b kept going
    p.reset()
    out = p.predict(frame(50.0), env_ids=["b"])
    np.testing.assert_array_equal(out[0, 0], [0, 0])


def test_n_obs_steps_one_keeps_flat_observations_and_no_history() -> None:
    p = make(1)
    p.observe(frame(1.0), env_ids=[0])
    out = p.predict(frame(2.0), env_ids=[0])
    assert p.seen[-1][1].shape == (1, 2) and 0 not in p._history
    np.testing.assert_array_equal(out[0, 1], [3.0, -1.0])


def test_select_action_records_every_step_not_only_replans() -> None:
    p = make(2, horizon=2, s=2)  # replans at t = 0, 2, 4: its history must hold t-1 and t
    values = [0.0, 1.0, 3.0, 6.0, 10.0, 15.0]
    actions = [p.select_action(frame(v), env_ids=["e"])[0, 0] for v in values]
    # t=0: chunk [x0 - x0, x0 + 1] ; t=2: [x2 - x1, x2 + 1] ; t=4: [x4 - x3, x4 + 1]
    assert actions == [0.0, 1.0, 2.0, 4.0, 4.0, 11.0]
    assert [ids for ids, _ in p.seen] == [["e"]] * 3
    assert p.seen[1][1][0, :, 0].tolist() == [1.0, 3.0]


def test_observe_then_guided_inference_use_the_history() -> None:
    p = make(3, horizon=3)
    p.observe(frame(1.0), env_ids=[0])
    p.observe(frame(2.0), env_ids=[0])
    out = p.guided_inference(
        frame(4.0), prev_chunk=np.zeros((1, 2, 2), np.float32), delay=0, env_ids=[0]
    )
    assert p.seen[-1][1][0, :, 0].tolist() == [1.0, 2.0, 4.0]
    assert out.shape == (1, 3, 2)


def test_mode_views_keep_their_own_histories() -> None:
    p = make(2)
    p.eval_mode.forward({0: {STATE: np.array([1.0, -1.0], np.float32)}})
    p.collect_mode.forward({0: {STATE: np.array([100.0, -100.0], np.float32)}})
    p.collect_mode.reset([0])
    a = p.eval_mode.forward({0: {STATE: np.array([3.0, -3.0], np.float32)}})
    np.testing.assert_array_equal(a[0], [2.0, -2.0])  # eval's env 0 kept its frame 1.0
    p.select_action(frame(7.0), env_ids=[0])
    assert p._history.stack([0])[STATE][0, :, 0].tolist() == [7.0, 7.0]  # its own history
    p.reset()  # all state, every view's included
    a = p.eval_mode.forward({0: {STATE: np.array([9.0, -9.0], np.float32)}})
    np.testing.assert_array_equal(a[0], [0.0, 0.0])


def test_warmup_hands_a_full_history() -> None:
    p = make(3)
    p.warmup(batch_size=2)
    assert p.seen[-1][1].shape == (2, 3, 2)
    assert not p._history._frames  # warmup leaves no history behind


class CounterEnv(gym.Env):  # type: ignore[type-arg]
    """``observation.state = [t, seed]`` at step t of an episode of ``length`` steps."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)
        self.t, self.marker = 0, 0.0

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.marker], np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        self.t, self.marker = 0, float(seed or 0)
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return self._obs(), 0.0, False, self.t >= self.length, {}


@pytest.mark.parametrize(
    ("executor", "kwargs"),
    [
        ("sync", {}),
        ("sync", {"delay": 2}),
        ("naive_async", {"delay": 1}),
        ("temporal_ensemble", {"delay": 1}),
        ("blend", {"delay": 1}),
    ],
)
def test_vector_actor_histories_hold_every_step(executor: str, kwargs: dict[str, Any]) -> None:
    p = make(3, horizon=4, s=3)
    envs = {e: CounterEnv(length=9 + 2 * e) for e in range(3)}
    eps = VectorActor(p, executor, **kwargs).run(envs, 5, seed=100, record=True)
    assert len(eps) == 5 and len(p.seen) > 5
    for ids, hist in p.seen:
        for row, env in enumerate(ids):
            t, seed = hist[row, -1, 0].item(), hist[row, -1, 1].item()
            want = [[max(t - k, 0.0), seed] for k in (2, 1, 0)]
            assert hist[row].tolist() == want, (executor, env, hist[row].tolist())
    if executor == "sync" and not kwargs:  # chunk at t = 0, 3, 6, ...: step 0 = x[t] - x[t-1]
        acts = eps[0].trajectory["action"][:, 0]  # type: ignore[index]
        assert acts[:7].tolist() == [0.0, 1.0, 2.0, 1.0, 4.0, 5.0, 1.0]


def windows_root(tmp_path: Path) -> Path:
    """Two episodes (lengths 3 and 4); state = [10 * episode + frame, 0], action = state."""
    pytest.importorskip("pyarrow")
    from envactor.data import DatasetWriter

    root = tmp_path / "w"
    feats = {key: {"shape": [2], "dtype": "float32"} for key in (STATE, "action")}
    with DatasetWriter(root, feats, fps=5) as w:
        for e, n in enumerate((3, 4)):
            v = 10 * e + np.arange(n, dtype=np.float32)
            state = np.stack([v, np.zeros_like(v)], 1)
            w.add_episode({STATE: state, "action": state})
    return root


def test_windows_give_the_same_history_as_the_acting_boundary(tmp_path: Path) -> None:
    from envactor.data import ChunkWindows

    win = ChunkWindows(windows_root(tmp_path), horizon=2, n_obs_steps=3)
    b = win.batch([0, 1, 2, 3, 4, 6])
    assert b[STATE].shape == (6, 3, 2)
    assert b[STATE][:, :, 0].tolist() == [
        [0, 0, 0], [0, 0, 1], [0, 1, 2], [10, 10, 10], [10, 10, 11], [11, 12, 13]
    ]  # fmt: skip
    assert ChunkWindows(windows_root(tmp_path / "x"), horizon=2).batch([4])[STATE].shape == (1, 2)
    p = make(3, horizon=2)  # the boundary after the same episode: identical histories
    for t in range(3):
        p.observe({STATE: win.batch([3 + t])[STATE][:, -1]}, env_ids=["ep1"])
    np.testing.assert_array_equal(p._history.stack(["ep1"])[STATE].numpy(), win.batch([5])[STATE])


def test_learn_mode_takes_history_windows(tmp_path: Path) -> None:
    from envactor.data import ChunkWindows

    win = ChunkWindows(windows_root(tmp_path), horizon=2, n_obs_steps=2)
    p = make(2, horizon=2)
    batch = win.batch(np.arange(len(win)))
    loss = p.forward(batch)["loss"]
    # chunk step 0 = x[t] - x[t-1] (0 at episode start), step 1 = x[t] + 1; targets a[t], a[t+1]
    s = batch[STATE][:, -1]
    pred = np.stack([s - batch[STATE][:, 0], s + 1], 1)
    keep = ~batch["action_is_pad"]
    want = (((pred - batch["action"]) ** 2).mean(-1) * keep).sum() / keep.sum()
    assert loss.item() == pytest.approx(float(want), rel=1e-6)
    loss.backward()
    assert p.components["gain"].weight.grad is not None
    flat = dict(batch, **{STATE: batch[STATE][:, -1]})
    with pytest.raises(ObservationError, match=r"n_obs_steps=2"):
        p.forward(flat)
