"""The policy server against hostile or careless clients: lock-out, leaks, stalls.

Loopback only (127.0.0.1, ephemeral ports); every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import threading
import time
from contextlib import ExitStack
from typing import Any

import msgpack
import numpy as np
import pytest
from serving_util import S, mlp_policy, serving
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from envactor.runtime.serving.cli import add_serve_args, api_keys
from envactor.runtime.serving.client import PolicyClient, ServerUnavailableError, _version_kwargs
from envactor.runtime.serving.requests import decode_frame
from envactor.runtime.serving.server import (
    CLIENT_HEADER,
    IDLE_CLOSE_CODE,
    OFFLOAD_BYTES,
    PROTOCOL,
    PolicyServer,
    default_per_key,
)
from envactor.runtime.serving.wire import WireError, packb, unpackb

ENVACTOR = {CLIENT_HEADER: PROTOCOL}


def ws(
    port: int, key: str | None = None, headers: dict[str, str] | None = None
) -> ClientConnection:
    """A raw connection that has read the metadata frame."""
    headers = dict(headers or {})
    if key is not None:
        headers["Authorization"] = f"Api-Key {key}"
    conn = connect(
        f"ws://127.0.0.1:{port}",
        additional_headers=headers,
        open_timeout=5,
        compression=None,
        **_version_kwargs(connect),
    )
    meta = unpackb(conn.recv(timeout=5))
    assert "env_id" in meta
    return conn


def infer(conn: ClientConnection, x: float = 0.1) -> np.ndarray:
    conn.send(packb({S: np.array([x, 0.0, 1.0], np.float32)}))
    reply = unpackb(conn.recv(timeout=10))
    actions: np.ndarray = reply["actions"]
    return actions


# ---------------------------------------------------------------------------- 9: lock-out
def test_per_key_connection_limit_refuses_one_key_not_the_others() -> None:
    with (
        serving(mlp_policy(), api_key=["alpha", "beta"], max_connections_per_key=2) as srv,
        ExitStack() as stack,
    ):
        a1, a2 = (stack.enter_context(ws(srv.port, "alpha")) for _ in range(2))
        with pytest.raises(InvalidStatus) as refused:
            ws(srv.port, "alpha")
        assert refused.value.response.status_code == 429
        body = refused.value.response.body.decode()
        assert "API key #1 is at its limit of 2 open connections" in body
        assert "--max-connections-per-key" in body and "alpha" not in body  # key never echoed
        b1 = stack.enter_context(ws(srv.port, "beta"))  # another key still connects
        assert infer(b1).shape == (8, 1) and infer(a2).shape == (8, 1)
        assert srv.stats["connections"] == 3
        a1.close()
        deadline = time.monotonic() + 5
        while srv.stats["connections"] > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        a3 = stack.enter_context(ws(srv.port, "alpha"))  # the same key after closing one
        assert infer(a3).shape == (8, 1)
        with pytest.raises(InvalidStatus) as wrong:
            ws(srv.port, "gamma")
        assert wrong.value.response.status_code == 401


def test_overall_limit_still_applies_across_keys() -> None:
    with (
        serving(mlp_policy(), api_key=["alpha", "beta"], max_connections=2) as srv,
        ExitStack() as stack,
    ):
        assert srv.max_connections_per_key == 1  # a quarter, at least one
        stack.enter_context(ws(srv.port, "alpha"))
        stack.enter_context(ws(srv.port, "beta"))
        with pytest.raises(InvalidStatus) as refused:
            ws(srv.port, "beta")
        assert refused.value.response.status_code == 503
        assert b"limit of 2 connections" in refused.value.response.body


def test_idle_connection_is_closed_while_an_active_one_is_not() -> None:
    with (
        serving(mlp_policy(), idle_timeout_s=0.3) as srv,
        ws(srv.port) as idle,
        ws(srv.port) as busy,
    ):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.2:  # four timeouts long; a frame every 50 ms
            assert infer(busy).shape == (8, 1)
            time.sleep(0.05)
        with pytest.raises(ConnectionClosed) as closed:
            idle.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == IDLE_CLOSE_CODE
        assert "idle for 0.3 s without a frame (--idle-timeout-s)" in closed.value.rcvd.reason
        assert infer(busy).shape == (8, 1)  # the active one is still served
        assert srv.stats["connections"] == 1


def test_envactor_client_reconnects_after_an_idle_close() -> None:
    with serving(mlp_policy(), idle_timeout_s=0.2) as srv, PolicyClient(port=srv.port) as client:
        first = client.metadata["env_id"]
        time.sleep(0.6)  # the server closes the idle connection meanwhile
        reply = client.infer({S: np.array([0.1, 0.0, 1.0], np.float32)})
        assert reply["actions"].shape == (8, 1)
        assert client.metadata["env_id"] != first  # a new connection, a new env id


def test_limit_defaults_and_flags() -> None:
    assert default_per_key(256) == 64 and default_per_key(3) == 1
    srv = PolicyServer(mlp_policy(), port=0)
    assert (srv.max_connections, srv.max_connections_per_key, srv.idle_timeout_s) == (
        256,
        64,
        300.0,
    )
    assert PolicyServer(mlp_policy(), idle_timeout_s=0).idle_timeout_s is None
    with pytest.raises(ValueError, match="max_connections_per_key must be >= 1, got 0"):
        PolicyServer(mlp_policy(), max_connections_per_key=0)
    with pytest.raises(ValueError, match="api_key must be a non-empty string"):
        PolicyServer(mlp_policy(), api_key=["ok", ""])
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    args = parser.parse_args(
        ["ckpt", "--max-connections-per-key", "5", "--idle-timeout-s", "2.5", "--api-key", "a, b"]
    )
    assert (args.max_connections, args.max_connections_per_key, args.idle_timeout_s) == (
        256,
        5,
        2.5,
    )
    assert api_keys(args.api_key) == ["a", "b"] and api_keys("") is None


def test_envactor_client_sees_the_per_key_refusal() -> None:
    with (
        serving(mlp_policy(), api_key="k", max_connections_per_key=1) as srv,
        PolicyClient(port=srv.port, api_key="k") as first,
    ):
        with pytest.raises(ServerUnavailableError, match="HTTP 429"):
            PolicyClient(port=srv.port, api_key="k", retries=1, backoff_s=0.01)
        reply = first.infer({S: np.array([0.1, 0.0, 1.0], np.float32)})
        assert reply["actions"].shape == (8, 1)


# ---------------------------------------------------------------------------- 8: leak
def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_per_connection_state_is_released_on_disconnect() -> None:
    policy = mlp_policy("policy.params.n_obs_steps=2", "model.components.net.in_dim=6")
    assert policy.n_obs_steps == 2
    obs = {S: np.array([0.1, 0.0, 1.0], np.float32)}
    with serving(policy) as srv:
        before = srv.state_sizes()
        assert before == {
            "connections": 0,
            "keys": 0,
            "policy_queues": 0,
            "policy_history": 0,
            "policy_rngs": 0,
            "executor_envs": 0,
        }
        with ws(srv.port) as probe:  # an open connection does hold state (the test can fail)
            probe.send(packb({"__ctrl__": "set_seed", "seed": 1}))
            assert unpackb(probe.recv(timeout=10))["ok"] is True
            probe.send(packb({"__ctrl__": "observe", **obs}))
            assert unpackb(probe.recv(timeout=10))["ok"] is True
            sizes = srv.state_sizes()
            assert (sizes["connections"], sizes["policy_rngs"], sizes["policy_history"]) == (
                1,
                1,
                1,
            )
        for i in range(300):
            with ws(srv.port) as conn:
                conn.send(packb({"__ctrl__": "set_seed", "seed": i}))
                assert unpackb(conn.recv(timeout=10))["ok"] is True
                conn.send(packb({"__ctrl__": "observe", **obs}))
                assert unpackb(conn.recv(timeout=10))["ok"] is True
                if i % 10 == 0:
                    assert infer(conn).shape == (8, 1)
        assert wait_for(lambda: srv.state_sizes() == before), srv.state_sizes()
        assert len(policy._rngs) == 0 and srv.stats["connections"] == 0


def test_keyed_connections_release_their_key_slot() -> None:
    with serving(mlp_policy(), api_key=["a", "b"], max_connections_per_key=1) as srv:
        for _ in range(20):  # one slot per key, taken and given back twenty times
            with ws(srv.port, "a"), ws(srv.port, "b"):
                assert srv.state_sizes()["keys"] == 2
            assert wait_for(lambda: srv.state_sizes()["connections"] == 0)
        assert srv.state_sizes()["keys"] == 0


# ---------------------------------------------------------------------------- 7: stall
def nested_ints_frame() -> bytes:
    """~15 MB of small integers as nested lists (the frame that stalled the event loop)."""
    return msgpack.packb({S: [[1] * 65536] * 230})


def test_decode_budget_refuses_nested_lists_and_keeps_arrays() -> None:
    frame = nested_ints_frame()
    assert len(frame) > 15e6
    with pytest.raises(WireError, match=r"more than 524288 list/map entries; expected numpy"):
        decode_frame(frame)
    with pytest.raises(WireError, match="more than 10 list/map entries"):
        decode_frame(msgpack.packb([[1, 2]] * 4), max_items=10)
    image = np.arange(256 * 256 * 3, dtype=np.int64).reshape(256, 256, 3) % 251
    as_lists = decode_frame(msgpack.packb({"img": image.tolist()}))  # 262,401 entries fit
    np.testing.assert_array_equal(np.asarray(as_lists["img"]), image)
    big = np.zeros((3, 1080, 1920, 3), np.uint8)  # arrays cost one entry whatever their size
    out = decode_frame(packb({"cams": big, "shape": [1, 2], "x": np.float32(1)}))
    assert out["cams"].shape == big.shape and out["shape"] == [1, 2] and out["x"] == 1.0
    with pytest.raises(WireError, match="extension type 5"):
        decode_frame(msgpack.packb(msgpack.ExtType(5, b"x")))


def test_nested_list_frames_are_refused_off_the_loop_while_others_are_served() -> None:
    policy = mlp_policy()
    with serving(policy) as srv:
        threads: list[tuple[int, str]] = []
        parse = srv._parse

        def recording(message: bytes, *args: Any) -> Any:
            threads.append((len(message), threading.current_thread().name))
            return parse(message, *args)

        srv._parse = recording  # type: ignore[method-assign]
        frame = nested_ints_frame()
        errors: list[str] = []

        def attack() -> None:
            with ws(srv.port, headers=ENVACTOR) as bad:
                for _ in range(4):
                    bad.send(frame)
                    errors.append(unpackb(bad.recv(timeout=30))["error"]["message"])
                assert infer(bad).shape == (8, 1)  # its connection still serves it

        attacker = threading.Thread(target=attack)
        with ws(srv.port) as good:
            attacker.start()
            answers = [infer(good, 0.01 * i) for i in range(40)]
            attacker.join(60)
        assert not attacker.is_alive() and len(errors) == 4
        assert all("more than 524288 list/map entries" in e for e in errors)
        assert len(answers) == 40 and all(a.shape == (8, 1) for a in answers)
        big = [name for size, name in threads if size > OFFLOAD_BYTES]
        small = [name for size, name in threads if size <= OFFLOAD_BYTES]
        assert len(big) == 4 and all(n.startswith("envactor-decode") for n in big)
        assert len(small) == 41 and set(small) == {"envactor-server"}  # the loop's thread
