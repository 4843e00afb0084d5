"""envactor's ``PolicyClient`` and ``RemotePolicy`` against an openpi-style server (loopback)."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from envactor import GuidanceRequest, Policy
from envactor.normalize import Normalizer
from envactor.policy.base import PolicyError
from envactor.runtime.actor import VectorActor
from envactor.runtime.serving.client import (
    PolicyClient,
    RemoteError,
    UnsupportedRequestError,
    is_envactor_metadata,
)
from envactor.runtime.serving.remote import RemotePolicy
from envactor.runtime.serving.server import PolicyServer
from envactor.runtime.serving.wire import packb, unpackb

S = "observation.state"
H, A = 4, 1
META = {"policy": "damping", "note": "openpi-style metadata: no protocol, no shapes"}


def damping(state: np.ndarray) -> np.ndarray:
    """The served policy: a damped swing-down chunk (H, A) from a Pendulum state (3,)."""
    base = -(2.0 * state[1] + 0.3 * state[2])
    return np.clip(base * (1.0 - 0.1 * np.arange(H)), -2.0, 2.0).astype(np.float32)[:, None]


class ReferenceServer:
    """A minimal server that imitates openpi's websocket policy server's observable behaviour
    (written for these tests from its documented protocol; not openpi's code): one binary
    metadata frame on connect, then each binary frame is an observation answered with
    ``{"actions", "server_timing"}``; an exception is sent as a text frame (the traceback) and
    the connection is closed with 1011. There are no control frames: every frame reaches the
    policy, which raises KeyError on a key it does not expect."""

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        self.metadata = dict(metadata)
        self.frames: list[dict[str, Any]] = []  # every frame received, decoded
        self.connections = 0
        self._lock = threading.Lock()
        self._server: Server = serve(self._handle, "127.0.0.1", 0, compression=None)
        self.port = int(self._server.socket.getsockname()[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @staticmethod
    def infer(obs: Mapping[str, Any]) -> dict[str, Any]:
        unexpected = sorted(set(obs) - {S})
        if unexpected:
            raise KeyError(f"unexpected observation keys {unexpected}")
        return {"actions": damping(np.asarray(obs[S])), "server_timing": {"infer_ms": 0.0}}

    def _handle(self, conn: ServerConnection) -> None:
        with self._lock:
            self.connections += 1
        conn.send(packb(self.metadata))
        while True:
            try:
                raw = conn.recv()
            except ConnectionClosed:
                return
            try:
                obs = unpackb(raw)
                with self._lock:
                    self.frames.append(obs)
                conn.send(packb(self.infer(obs)))
            except Exception:
                conn.send(traceback.format_exc())
                conn.close(1011, "internal error")
                return

    def keys_seen(self) -> list[list[str]]:
        with self._lock:
            return [sorted(f) for f in self.frames]

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


@contextmanager
def reference(metadata: Mapping[str, Any] = META) -> Iterator[ReferenceServer]:
    server = ReferenceServer(metadata)
    try:
        yield server
    finally:
        server.stop()


class Damping(Policy):
    """The served policy as a local envactor policy (for the expected episodes)."""

    trainable = False

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        x = obs[S]
        base = -(2.0 * x[:, 1] + 0.3 * x[:, 2])
        scale = 1.0 - 0.1 * torch.arange(H, dtype=x.dtype, device=x.device)
        return (base[:, None] * scale).clamp(-2.0, 2.0)[..., None]


def local_damping() -> Damping:
    modes = {S: "identity", "action": "identity"}
    feats = {S: {"shape": [3], "norm": "identity"}}
    return Damping({}, Normalizer(modes, {}), input_features=feats, action_dim=A,
                   action_norm="identity", horizon=H, n_action_steps=H)  # fmt: skip


def remote(port: int) -> RemotePolicy:
    return RemotePolicy(port=port, action_shape=(H, A), input_features={S: [3]}, timeout=5.0)


def state(x: float) -> np.ndarray:
    return np.array([np.cos(x), np.sin(x), 0.5 - x], dtype=np.float32)


def pendulums(n: int, steps: int = 20) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make("Pendulum-v1", max_episode_steps=steps) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )


# ---------------------------------------------------------------------------- PolicyClient
def test_client_reads_openpi_metadata_and_infers() -> None:
    with reference() as srv, PolicyClient(port=srv.port, timeout=5.0) as client:
        assert client.metadata == META and client.openpi_server
        reply = client.infer({S: state(0.3)})
        np.testing.assert_allclose(reply["actions"], damping(state(0.3)))
        assert reply["actions"].shape == (H, A) and "infer_ms" in reply["server_timing"]
    assert srv.keys_seen() == [[S]]


def test_client_sends_an_openpi_server_observations_only() -> None:
    with reference() as srv, PolicyClient(port=srv.port, timeout=5.0) as client:
        for name, reply in [
            ("episode_start", client.reset()),
            ("set_seed", client.set_seed(7)),
            ("episode_start", client.episode_start(task="swing", episode_id=3)),
            ("episode_end", client.episode_end(success=True)),
            ("observe", client.observe({S: state(0.1)})),
        ]:
            assert reply == {"ok": True, "ctrl": name, "sent": False}
        with pytest.raises(UnsupportedRequestError, match=r"openpi server.*prev_action=/guidance="):
            client.infer({S: state(0.1)}, prev_action=np.zeros((2, A), np.float32), est_delay=1)
        request = GuidanceRequest.build([np.zeros((2, A), np.float32)], [1], horizon=H)
        with pytest.raises(UnsupportedRequestError, match="plain observations only"):
            client.infer({S: state(0.1)}, guidance=request)
        client.infer({S: state(0.2)})
    assert srv.keys_seen() == [[S]]  # the one observation; no control frame, no guidance field
    assert srv.connections == 1


def test_observe_refused_when_the_openpi_metadata_declares_history() -> None:
    meta = {**META, "n_obs_steps": 2}
    with reference(meta) as srv, PolicyClient(port=srv.port, timeout=5.0) as client:
        with pytest.raises(UnsupportedRequestError, match=r"n_obs_steps=2.*no observe frame"):
            client.observe({S: state(0.1)})
        with pytest.raises(UnsupportedRequestError, match="n_obs_steps=2"):
            remote(srv.port)
    assert srv.frames == []


def test_text_frame_error_raises_runtime_error_and_the_next_call_reconnects() -> None:
    with reference() as srv, PolicyClient(port=srv.port, timeout=5.0) as client:
        with pytest.raises(RuntimeError) as info:
            client.infer({S: state(0.1), "prompt": "swing"})
        assert isinstance(info.value, RemoteError) and info.value.kind == "ServerError"
        text = str(info.value)
        assert f"ws://127.0.0.1:{srv.port}" in text and "text frame" in text
        assert "KeyError" in text and "unexpected observation keys ['prompt']" in text
        np.testing.assert_allclose(client.infer({S: state(0.4)})["actions"], damping(state(0.4)))
    assert srv.connections == 2  # the server closed after the error (1011); the client reconnected


def test_envactor_server_still_gets_control_frames() -> None:
    policy = local_damping()
    server = PolicyServer(policy, port=0).start()
    try:
        with PolicyClient(port=server.port, timeout=5.0) as client:
            assert is_envactor_metadata(client.metadata) and not client.openpi_server
            reply = client.set_seed(3)
            assert reply["ok"] is True and reply["ctrl"] == "set_seed" and "sent" not in reply
            assert client.reset()["ctrl"] == "episode_start" and "env_id" in client.reset()
    finally:
        server.stop()
    assert not is_envactor_metadata(META) and not is_envactor_metadata({"protocol": "other/1"})


# ---------------------------------------------------------------------------- RemotePolicy
def test_remote_policy_needs_the_shapes_from_an_openpi_server() -> None:
    with reference() as srv:
        with pytest.raises(ValueError, match=r"action_shape=\(H, A\), input_features=\{key: sh"):
            RemotePolicy(port=srv.port, timeout=5.0)
        with pytest.raises(ValueError, match=r"no 'input_features'.*pass input_features="):
            RemotePolicy(port=srv.port, action_shape=(H, A), timeout=5.0)
        with pytest.raises(ValueError, match=r"action_shape=: expected \[H, A\]"):
            RemotePolicy(port=srv.port, action_shape=(H,), input_features={S: [3]}, timeout=5.0)
        with remote(srv.port) as rp:
            assert rp.openpi_server and rp.action_shape == (H, A)
            assert rp.input_features[S].shape == (3,)
    server = PolicyServer(local_damping(), port=0).start()
    try:  # an envactor server's metadata wins; a disagreeing explicit shape is an error
        with pytest.raises(ValueError, match=r"action_shape=\(8, 1\) disagrees.*\(4, 1\)"):
            RemotePolicy(port=server.port, action_shape=(8, 1), timeout=5.0)
        with RemotePolicy(port=server.port, action_shape=(H, A), timeout=5.0) as rp:
            assert not rp.openpi_server and rp.action_shape == (H, A)
    finally:
        server.stop()


def test_remote_policy_drives_a_vector_actor_against_an_openpi_server() -> None:
    expected = VectorActor(local_damping(), "sync").run(pendulums(2), 3, seed=3)
    with reference() as srv:
        with remote(srv.port) as rp:
            episodes = VectorActor(rp, "sync").run(pendulums(2), 3, seed=3)
        keys = srv.keys_seen()
    assert [m.episode_return for m in episodes] == pytest.approx(
        [m.episode_return for m in expected], rel=1e-4
    )
    assert [m.requests for m in episodes] == [m.requests for m in expected]
    assert len(keys) == sum(m.requests for m in episodes) > 0
    assert all(k == [S] for k in keys)  # reset and seeds between episodes sent nothing
    assert srv.connections == 2  # one per env id


def test_guided_calls_blend_client_side_and_prefix_is_refused() -> None:
    rng = np.random.default_rng(0)
    rems = [rng.normal(size=(3, A)).astype(np.float32), rng.normal(size=(2, A)).astype(np.float32)]
    req = GuidanceRequest.build(rems, [1, 2], horizon=H)
    obs = {S: np.stack([state(0.2), state(-0.6)])}
    want = local_damping().guided_inference(obs, request=req, env_ids=["a", "b"])
    with reference() as srv, remote(srv.port) as rp:
        rp.set_env_seeds({"a": 1, "b": 2})
        got = rp.guided_inference(obs, request=req, env_ids=["a", "b"])
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(got[0, :1], rems[0][:1], atol=1e-6)  # the frozen d actions
        with pytest.raises(PolicyError, match=r"openpi server .* training-time RTC.*rtc_trained"):
            rp.guided_inference(obs, prev_chunk=rems, delay=[1, 2], env_ids=["a", "b"],
                                method="prefix")  # fmt: skip
        eps = VectorActor(rp, "rtc", delay=1).run(pendulums(2), 2, seed=5)
    local = VectorActor(local_damping(), "rtc", delay=1).run(pendulums(2), 2, seed=5)
    assert [m.episode_return for m in eps] == pytest.approx(
        [m.episode_return for m in local], rel=1e-4
    )
    assert all(k == [S] for k in srv.keys_seen())  # no prev_action/rtc fields were sent
