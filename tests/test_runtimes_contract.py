"""Every runtime asks a policy for chunks the same way: one executor registry drives the vector
actor, the real-time controller and the policy server; a policy defined outside the package
gets training-time RTC (``_prefix_chunk``), EMA and normalization for free; ``n_obs_steps = 2``
works end to end (train, save, eval, serve, real time)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from envactor import GuidanceRequest, Policy, build_policy, save_policy
from envactor.normalize import Normalizer
from envactor.registry import COMPONENT_REGISTRY, POLICY_REGISTRY
from envactor.runtime.actor import VectorActor
from envactor.runtime.executors import EXECUTORS, ChunkExecutor, EnvState, make_executor
from envactor.runtime.realtime.clock import VirtualClock
from envactor.runtime.realtime.controller import HELD, RealtimeController
from envactor.runtime.realtime.robot import SimulatedRobot
from envactor.runtime.serving.client import PolicyClient, RemoteError
from envactor.runtime.serving.remote import RemotePolicy
from envactor.runtime.serving.server import PolicyServer
from envactor.runtime.serving.wire import packb

STATE = "observation.state"
H, A = 4, 1


class CommitPolicy(Policy):
    """A third-party-style policy: a linear chunk and training-time RTC by writing the committed
    actions in. Records what each ``_prefix_chunk`` call saw: its (normalized) prefix, the
    request, the weights it ran with and the acting context."""

    required_components = ("net",)

    def __init__(self, components: Any = None, normalizer: Any = None, **params: Any) -> None:
        super().__init__(components, normalizer, **params)
        self.seen: list[dict[str, Any]] = []

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        return self.components["net"](obs[STATE]).view(-1, *self.action_shape)

    def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": (self._chunk(batch, []) - batch["action"]).pow(2).mean()}

    def _prefix_chunk(
        self, obs: dict[str, torch.Tensor], env_ids: Any, request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        self.seen.append({
            "prefix": prefix.clone(), "request": request, "training": self.training,
            "inference": torch.is_inference_mode_enabled(),
            "weight": float(self.components["net"].weight.sum()),
        })  # fmt: skip
        keep = request.committed_like(prefix)[..., None]
        return torch.where(keep, prefix, self._chunk(obs, env_ids))


STATS = {STATE: {"mean": np.array([1.0, -1.0, 0.5]), "std": np.array([2.0, 0.5, 1.0])},
         "action": {"mean": np.array([3.0]), "std": np.array([4.0])}}  # fmt: skip


def commit_policy() -> CommitPolicy:
    torch.manual_seed(0)
    p = CommitPolicy(
        {"net": nn.Linear(3, H * A)}, Normalizer({STATE: "mean_std", "action": "mean_std"}, STATS),
        input_features={STATE: {"shape": [3]}}, action_dim=A, horizon=H, n_action_steps=2,
        ema_decay=0.5,
    )  # fmt: skip
    p.update()  # EMA shadow = w0
    with torch.no_grad():
        p.components["net"].weight.add_(1.0)  # training weights w0 + 1
    p.update()  # EMA = w0 + 0.5
    return p


class Wide(gym.Env):  # type: ignore[type-arg]
    """observation.state = [t, 0, 0] at step t; any action."""

    def __init__(self, dim: int = 3) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.action_space = gym.spaces.Box(-1e6, 1e6, (A,), np.float32)
        self.t = 0

    def _obs(self) -> np.ndarray:
        out = np.zeros(self.observation_space.shape, np.float32)
        out[0] = self.t
        return out

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 12, {}


def controller(policy: Policy, executor: str, dim: int = 3, **kw: Any) -> RealtimeController:
    clock = VirtualClock()
    robot = SimulatedRobot(Wide(dim), 50.0, clock=clock)
    return RealtimeController(policy, robot, hz=50.0, executor=executor, clock=clock,
                              warmup=False, limits=None, **kw)  # fmt: skip


def test_external_prefix_policy_gets_rtc_trained_ema_and_normalization() -> None:
    p = commit_policy()
    ex = make_executor("rtc_trained", p, delay=1)
    obs = {"e": {STATE: np.array([0.5, -0.5, 2.0], np.float32)}}
    acts = [ex.act(obs)["e"] for _ in range(5)]  # chunk 1 at t=0, chunk 2 asked at t=2
    call = p.seen[0]
    assert not call["training"] and call["inference"]  # eval() + inference mode, for free
    p.predict({STATE: np.zeros((1, 3), np.float32)})
    w_ema = float(p.components["net"].weight.detach().sum())
    p.forward({STATE: np.zeros((1, 3), np.float32), "action": np.zeros((1, H, A), np.float32)})
    w_train = float(p.components["net"].weight.detach().sum())
    assert call["weight"] == pytest.approx(w_ema) and w_train == pytest.approx(w_ema + 6.0)
    request = call["request"]
    assert request.method == "prefix" and request.delay == (1,) and request.executed == (2,)
    remainder = request.remainder[0]  # raw units: the chunk's last two actions
    want = (remainder - 3.0) / 4.0  # the hook's prefix is normalized (mean 3, std 4)
    torch.testing.assert_close(call["prefix"][0, :2], torch.from_numpy(want))
    np.testing.assert_allclose(acts[2], remainder[0], rtol=1e-6)  # ran while chunk 2 computed
    free = p.predict({STATE: obs["e"][STATE][None]})[0]  # EMA weights, unnormalized
    np.testing.assert_allclose(acts[3], free[1], rtol=1e-5)  # chunk 2 from index d = 1
    chunk2 = p.guided_inference(
        {STATE: obs["e"][STATE][None]}, request=request.replace(delay=(2,))
    )  # the committed actions come back in action units
    np.testing.assert_allclose(chunk2[0, :2], remainder, rtol=1e-6)


def test_external_prefix_policy_in_real_time_and_on_the_server() -> None:
    p = commit_policy()
    tel = controller(p, "rtc_trained").run(max_steps=10)
    assert tel.steps == 10 and len(p.seen) == len(tel.chunks) - 1 >= 2
    assert {c["request"].method for c in p.seen} == {"prefix"}
    with PolicyServer(p, port=0) as srv, PolicyClient(port=srv.port) as client:
        assert client.metadata["can_prefix"] and "rtc_trained" in client.metadata["executors"]
        rem = np.array([[10.0], [11.0], [12.0]], np.float32)
        st = np.array([0.0, 1.0, 2.0], np.float32)
        out = client.infer({STATE: st}, prev_action=rem, est_delay=2,
                           rtc={"executor": "rtc_trained"})["actions"]  # fmt: skip
        np.testing.assert_allclose(out[:2], rem[:2], rtol=1e-6)
        assert p.seen[-1]["request"].settings[3] == "prefix"
        free = p.predict({STATE: st[None]})[0]
        np.testing.assert_allclose(out[2:], free[2:], rtol=1e-5)


# ---------------------------------------------------------------------------- plugin executor
class Scripted(Policy):
    """Call n of an env returns ``100 n + i``."""

    trainable = False

    def __init__(self, **params: Any) -> None:
        super().__init__(None, None, **params)
        self.n: dict[Any, int] = {}

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        rows = []
        for e in env_ids:
            self.n[e] = self.n.get(e, 0) + 1
            rows.append(100.0 * self.n[e] + torch.arange(self.params.horizon, dtype=torch.float32))
        return torch.stack(rows)[..., None]

    def _reset(self, env_ids: Any) -> None:
        self.n.clear() if env_ids is None else [self.n.pop(e, None) for e in env_ids]


def scripted(h: int = 8, s: int = 2) -> Scripted:
    return Scripted(input_features={STATE: {"shape": [3], "norm": "identity"}}, action_dim=A,
                    action_norm="identity", horizon=h, n_action_steps=s)  # fmt: skip


class HalfChunk(ChunkExecutor):
    """A plugin's executor: replans when half the chunk ran (whatever s), blends, and logs
    every policy call it makes."""

    name = "half_chunk"
    method = "blend"
    calls: ClassVar[list[str]] = []

    def _wants(self, st: EnvState) -> bool:
        return not st.pending and (st.chunk is None or st.idx >= self.horizon // 2)

    def infer(self, batch: Any, env_ids: Any, request: GuidanceRequest | None) -> np.ndarray:
        HalfChunk.calls.append("plain" if request is None or request.is_empty else "blend")
        return super().infer(batch, env_ids, request)


@pytest.fixture
def half_chunk() -> Iterator[type[HalfChunk]]:
    EXECUTORS.register("half_chunk")(HalfChunk)
    HalfChunk.calls.clear()
    try:
        yield HalfChunk
    finally:
        EXECUTORS._items.pop("half_chunk", None)


def test_one_executor_registry_drives_all_three_runtimes(half_chunk: type[HalfChunk]) -> None:
    envs = {0: gym.wrappers.TimeLimit(Wide(), 9)}
    eps = VectorActor(scripted(), "half_chunk").run(envs, 1, seed=0)
    assert eps[0].requests == 3 and half_chunk.calls == ["plain", "blend", "blend"]  # t=0, 4, 8
    half_chunk.calls.clear()
    ctrl = controller(scripted(), "half_chunk")  # s_min = 2 is the policy's; the rule says 4
    tel = ctrl.run(max_steps=12)
    assert [c.snapshot_step for c in tel.chunks][:3] == [0, 4, 8]
    assert half_chunk.calls[:3] == ["plain", "blend", "blend"]
    half_chunk.calls.clear()
    policy = scripted()
    with PolicyServer(policy, port=0) as srv, PolicyClient(port=srv.port) as client:
        rem = np.full((4, 1), 7.0, np.float32)
        out = client.infer({STATE: np.zeros(3, np.float32)}, prev_action=rem, est_delay=1,
                           rtc={"executor": "half_chunk"})["actions"]  # fmt: skip
        assert half_chunk.calls == ["blend"] and out[0, 0] == pytest.approx(7.0)
        bad = {STATE: np.zeros(3, np.float32), "prev_action": rem, "rtc": {"executor": "nope"}}
        with pytest.raises(RemoteError, match=r"rtc\['executor'\]: expected one of .*half_chunk"):
            client._call(packb(bad))


def test_real_time_temporal_ensemble_averages_the_live_chunks() -> None:
    ctrl = controller(scripted(h=4, s=1), "temporal_ensemble")
    tel = ctrl.run(max_steps=8)
    m = ctrl.rules.m  # type: ignore[attr-defined]
    for t, action in enumerate(ctrl.executed[:, 0]):  # each live chunk's action for step t
        live = [(c.chunk, c.snapshot_step) for c in tel.chunks
                if c.swap_step <= t < c.snapshot_step + 4]  # fmt: skip
        preds = [100.0 * (k + 1) + (t - t0) for k, t0 in live]
        w = np.exp(-m * np.arange(len(preds)))
        assert action == pytest.approx(np.dot(w, preds) / w.sum(), rel=1e-6)
    assert len(tel.chunks) >= 8 and HELD not in ctrl.sources  # one request per step


# ---------------------------------------------------------------------------- n_obs_steps = 2
@POLICY_REGISTRY.register("test_two_frames")
class TwoFrames(Policy):
    """step 0 of the chunk = ``x[t] - x[t-1]`` times a gain, step h > 0 = ``x[t] + h``; records
    every history ``_chunk`` saw."""

    required_components = ("gain",)

    def __init__(self, components: Any = None, normalizer: Any = None, **params: Any) -> None:
        super().__init__(components, normalizer, **params)
        self.seen: list[torch.Tensor] = []

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        x = obs[STATE][..., :1]  # (B, 2, 1)
        self.seen.append(x[..., 0].detach().clone())
        g = self.components["gain"](torch.ones(1, 1, device=x.device)).reshape(())
        steps = [g * (x[:, 1] - x[:, 0])] + [x[:, 1] + h for h in range(1, self.params.horizon)]
        return torch.stack(steps, 1)

    def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": (self._chunk(batch, [])[:, 0] - batch["action"][:, 0]).pow(2).mean()}


def two_frames(gain: float = 1.0) -> TwoFrames:
    """A built-from-config TwoFrames (so it saves as a checkpoint); gain = weight + bias."""
    spec = {"type": "mlp", "in_dim": 1, "out_dim": 1, "hidden_dims": []}
    params = {
        "input_features": {STATE: {"shape": [3], "norm": "identity"}},
        "action_dim": A,
        "action_norm": "identity",
        "horizon": H,
        "n_action_steps": 3,
        "n_obs_steps": 2,
    }
    mlp = COMPONENT_REGISTRY.get("mlp")(1, 1, hidden_dims=[])
    with torch.no_grad():
        for t in mlp.parameters():
            t.zero_()
        next(mlp.parameters()).fill_(gain)  # the weight
    policy = TwoFrames({"gain": mlp}, None, **params)
    policy.config = {
        "model": {"components": {"gain": spec}},
        "policy": {"type": "test_two_frames", "params": params},
    }
    return policy


def trained_two_frames(tmp_path: Path) -> Path:
    """Train the gain on windows whose action 0 is twice the frame difference; save it."""
    pytest.importorskip("pyarrow")
    from envactor.data import ChunkWindows, DatasetWriter

    root = tmp_path / "data"
    feats = {
        STATE: {"shape": [3], "dtype": "float32"},
        "action": {"shape": [A], "dtype": "float32"},
    }
    with DatasetWriter(root, feats, fps=10) as w:
        x = np.cumsum(np.arange(10, dtype=np.float32))
        state = np.stack([x, np.zeros(10), np.zeros(10)], 1).astype(np.float32)
        action = 2.0 * np.diff(x, prepend=x[0])[:, None]
        w.add_episode({STATE: state, "action": action.astype(np.float32)})
    windows = ChunkWindows(root, horizon=H, n_obs_steps=2)
    policy = two_frames(gain=0.0)
    policy.learn_mode.init(lr=0.05, weight_decay=0.0)
    batch = windows.batch(np.arange(len(windows)))
    assert batch[STATE].shape == (10, 2, 3)
    for _ in range(200):
        policy.learn_mode.forward(batch)
    gain = policy.components["gain"](torch.ones(1, 1)).item()
    assert gain == pytest.approx(2.0, abs=1e-2)
    return save_policy(policy, tmp_path / "ckpt")


def test_n_obs_steps_two_end_to_end(tmp_path: Path) -> None:
    ckpt = trained_two_frames(tmp_path)
    local = build_policy(ckpt)
    assert local.n_obs_steps == 2
    envs = {e: gym.wrappers.TimeLimit(Wide(), 10) for e in range(2)}
    eps_local = VectorActor(local, "sync").run(envs, 2, seed=0, record=True)
    acts = eps_local[0].trajectory["action"][:, 0]  # type: ignore[index]
    # chunks at t = 0, 3, 6, 9 (s = 3): step 0 is 2 (x[t] - x[t-1]) = 2, 0 at the padded start
    np.testing.assert_allclose(acts[[0, 3, 6, 9]], [0.0, 2.0, 2.0, 2.0], atol=1e-2)
    server_policy = build_policy(ckpt)
    with PolicyServer(server_policy, port=0) as srv:
        with RemotePolicy(port=srv.port) as remote:  # sends every step (observe frames)
            assert remote.n_obs_steps == 2 and remote.remote_metadata["n_obs_steps"] == 2
            eps_remote = VectorActor(remote, "sync").run(envs, 2, seed=0, record=True)
        for a, b in zip(eps_local, eps_remote):
            np.testing.assert_allclose(a.trajectory["action"], b.trajectory["action"], atol=1e-5)  # type: ignore[index]
        diffs = {float(d) for h in server_policy.seen for d in h[:, 1] - h[:, 0]}
        assert diffs == {0.0, 1.0}  # the server's histories hold consecutive steps
        with PolicyClient(port=srv.port) as openpi_like:  # never observes: still works
            outs = [openpi_like.infer({STATE: np.array([t, 0, 0], np.float32)})["actions"]
                    for t in (0, 3, 6)]  # fmt: skip
        np.testing.assert_allclose([o[0, 0] for o in outs], [0.0, 6.0, 6.0], atol=3e-2)
        with PolicyClient(port=srv.port) as robot:  # observes the steps it does not infer
            robot.infer({STATE: np.zeros(3, np.float32)})
            for t in (1, 2):
                assert robot.observe({STATE: np.array([t, 0, 0], np.float32)})["ok"]
            out = robot.infer({STATE: np.array([3, 0, 0], np.float32)})["actions"]
        assert out[0, 0] == pytest.approx(2.0, abs=3e-2)  # 2 (x[3] - x[2]), not 2 (x[3] - x[0])


def test_real_time_loop_observes_every_tick() -> None:
    policy = two_frames()
    tel = controller(policy, "naive_async").run(max_steps=20)
    assert tel.steps == 20 and len(policy.seen) == len(tel.chunks) >= 4
    first, *later = policy.seen
    assert first[0].tolist() == [0.0, 0.0]  # padded with the first frame
    for hist in later:  # the frame before the snapshot's is the tick just before it
        assert float(hist[0, 1] - hist[0, 0]) == 1.0
    assert controller(scripted(), "naive_async")._board.frames is None  # n_obs_steps 1: none


class TwoFramesPrefix(TwoFrames):
    """TwoFrames with training-time RTC: the committed actions written over its chunk."""

    def _prefix_chunk(
        self, obs: dict[str, torch.Tensor], env_ids: Any, request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        keep = request.committed_like(prefix)[..., None]
        return torch.where(keep, prefix, self._chunk(obs, env_ids))


def test_the_prefix_method_sees_the_observation_history() -> None:
    policy = two_frames(gain=1.0)
    policy.__class__ = TwoFramesPrefix
    for t in (1.0, 2.0):
        policy.observe({STATE: np.array([[t, 0, 0]], np.float32)}, env_ids=["e"])
    out = policy.guided_inference(
        {STATE: np.array([[5.0, 0, 0]], np.float32)}, prev_chunk=[np.full((2, 1), 9.0)],
        delay=1, env_ids=["e"], method="prefix",
    )  # fmt: skip
    assert policy.seen[-1].tolist() == [[2.0, 5.0]]  # the history, not the frame alone
    np.testing.assert_allclose(out[0, :, 0], [9.0, 6.0, 7.0, 8.0])  # committed, then x + h
