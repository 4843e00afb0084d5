"""Policy server and client over real sockets on 127.0.0.1 (ephemeral ports, bounded loops)."""

from __future__ import annotations

import argparse
import http.client
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np
import pytest
import torch
from serving_util import STATS, S, mlp_policy, serving, state
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from envactor import build_policy
from envactor.chunking import GuidanceRequest
from envactor.normalize import Normalizer
from envactor.policy.base import Policy
from envactor.policy.policies.pid import PIDPolicy
from envactor.runtime.actor import VectorActor
from envactor.runtime.serving.cli import add_serve_args, run_serve
from envactor.runtime.serving.client import (
    AuthenticationError,
    PolicyClient,
    RemoteError,
    ServerUnavailableError,
)
from envactor.runtime.serving.remote import RemotePolicy
from envactor.runtime.serving.server import (
    CLIENT_HEADER,
    PROTOCOL,
    PolicyServer,
)
from envactor.runtime.serving.wire import packb, unpackb


def flow_policy() -> Policy:
    torch.manual_seed(0)
    p = build_policy("flow")
    p.normalizer = Normalizer({S: "mean_std", "action": "min_max"}, STATS)
    return p


ENVACTOR = {CLIENT_HEADER: PROTOCOL}


def local(policy: Policy, st: np.ndarray) -> np.ndarray:
    return policy.predict({S: st[None]})[0]


def spy(policy: Policy, name: str, log: list[int]) -> None:
    """Record the batch size of every ``policy.<name>`` call (one entry per forward pass)."""
    inner = getattr(policy, name)

    def wrapper(batch: Any, *args: Any, **kwargs: Any) -> Any:
        log.append(len(batch[S]))
        return inner(batch, *args, **kwargs)

    setattr(policy, name, wrapper)


def in_threads(fns: Sequence[Callable[[], Any]]) -> list[Any]:
    out: list[Any] = [None] * len(fns)

    def run(i: int) -> None:
        out[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


# ---------------------------------------------------------------------------- protocol
def test_metadata_frame_and_plain_infer_match_local_predict() -> None:
    policy = mlp_policy("policy.params.control_hz=50")
    policy.weight_version = 7
    with serving(policy) as srv, PolicyClient(port=srv.port) as a, PolicyClient(port=srv.port) as b:
        meta = a.metadata
        assert meta["policy"] == "mlp_chunk" and meta["protocol"] == "envactor-ws/1"
        assert meta["input_features"] == {S: {"shape": [3], "dtype": "float32"}}
        assert meta["action_shape"] == [8, 1] and meta["n_action_steps"] == 4
        assert meta["control_hz"] == 50.0 and meta["weight_version"] == 7
        assert meta["can_guide"] is False and {meta["env_id"], b.metadata["env_id"]} == {0, 1}
        reply = a.infer({S: state(0.3), "prompt": "swing up"})  # extra keys are ignored
        assert reply["actions"].shape == (8, 1) and reply["actions"].dtype == np.float32
        np.testing.assert_allclose(
            reply["actions"], local(policy, state(0.3)), rtol=1e-5, atol=1e-6
        )
        assert reply["weight_version"] == 7
        timing = reply["server_timing"]
        assert timing["batch_size"] == 1 and timing["infer_ms"] > 0 and timing["queue_ms"] >= 0
        # float64 and python lists are accepted for float features
        r64 = b.infer({S: [0.3, 0.2, 1.0]})
        np.testing.assert_allclose(r64["actions"], local(policy, state(0.3)), rtol=1e-5, atol=1e-6)


def test_openpi_style_client_bytes_unchanged() -> None:
    """A client that packs with bytes keys by hand (openpi's msgpack_numpy) works unchanged."""
    policy = mlp_policy()
    st = state(-0.4)
    obs = {S: {b"__ndarray__": True, b"data": st.tobytes(), b"dtype": "<f4", b"shape": [3]},
           "prompt": "hello"}  # fmt: skip
    with serving(policy) as srv, connect(srv.url, compression=None, proxy=None) as ws:
        meta = msgpack.unpackb(ws.recv(timeout=5))
        assert meta["action_shape"] == [8, 1]
        ws.send(msgpack.packb(obs, use_bin_type=True))
        reply = msgpack.unpackb(ws.recv(timeout=5))
    arr = reply["actions"]
    assert arr[b"dtype"] == "<f4" and arr[b"shape"] == [8, 1]
    actions = np.ndarray(buffer=arr[b"data"], dtype=arr[b"dtype"], shape=arr[b"shape"])
    np.testing.assert_allclose(actions, local(policy, st), rtol=1e-5, atol=1e-6)


def test_healthz_and_api_key() -> None:
    with serving(mlp_policy(), api_key="s3cret") as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"OK\n"
        with pytest.raises(AuthenticationError, match=r"HTTP 401 \(no API key given\)"):
            PolicyClient(port=srv.port)
        with pytest.raises(AuthenticationError, match=r"HTTP 401 \(wrong API key\)"):
            PolicyClient(port=srv.port, api_key="s3cre")
        headers = {"Authorization": "Api-Key nope"}
        with pytest.raises(InvalidStatus) as err:
            connect(srv.url, additional_headers=headers, proxy=None)
        assert err.value.response.status_code == 401
        with PolicyClient(port=srv.port, api_key="s3cret") as ok:
            assert ok.infer({S: state(0.0)})["actions"].shape == (8, 1)
        assert srv.stats["forward_passes"] == 1


# ---------------------------------------------------------------------------- batching
def test_concurrent_clients_share_one_forward_pass() -> None:
    policy = mlp_policy()
    calls: list[int] = []
    spy(policy, "predict", calls)
    xs = [0.1, -0.5, 0.9, 1.7]
    want = [local(policy, state(x)) for x in xs]
    calls.clear()
    # a long window: the batch starts when all 4 connected clients are waiting
    with serving(policy, max_batch=8, batch_timeout_ms=3000) as srv:
        clients = [PolicyClient(port=srv.port) for _ in xs]
        replies = in_threads([partial(c.infer, {S: state(x)}) for c, x in zip(clients, xs)])
        for c in clients:
            c.close()
    assert calls == [4]  # ONE forward pass for the four clients
    for reply, w in zip(replies, want):
        np.testing.assert_allclose(
            reply["actions"], w, rtol=1e-5, atol=1e-6
        )  # each got its own answer
        assert reply["server_timing"]["batch_size"] == 4


def test_batching_off_and_mixed_groups() -> None:
    policy = mlp_policy()
    plain: list[int] = []
    guided: list[int] = []
    spy(policy, "predict", plain)
    spy(policy, "guided_inference", guided)
    prev = np.full((4, 1), 0.5, np.float32)
    with serving(policy, max_batch=1) as srv:
        clients = [PolicyClient(port=srv.port) for _ in range(3)]
        in_threads([partial(c.infer, {S: state(0.2)}) for c in clients])
        assert plain == [1, 1, 1]
    plain.clear()
    with serving(policy, max_batch=8, batch_timeout_ms=3000) as srv:
        clients = [PolicyClient(port=srv.port) for _ in range(4)]
        jobs = [partial(c.infer, {S: state(0.2)}) for c in clients[:2]]
        jobs += [partial(c.infer, {S: state(0.2)}, prev_action=prev, est_delay=1)
                 for c in clients[2:]]  # fmt: skip
        replies = in_threads(jobs)
    assert plain == [2] and guided == [2]  # plain and guided requests grouped separately
    np.testing.assert_allclose(
        replies[2]["actions"][0], prev[0], rtol=1e-5, atol=1e-6
    )  # d = 1 frozen


def test_a_failing_row_fails_only_its_client() -> None:
    policy = mlp_policy()
    inner = policy.predict
    calls: list[int] = []

    def picky(batch: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(batch[S]))
        if np.any(batch[S][:, 0] == 99.0):
            raise ValueError("state 99 is cursed")
        return inner(batch, *args, **kwargs)

    setattr(policy, "predict", picky)  # noqa: B010 - a spy on the instance
    with serving(policy, max_batch=8, batch_timeout_ms=3000) as srv:
        clients = [PolicyClient(port=srv.port) for _ in range(3)]

        def ask(c: PolicyClient, x: float) -> Any:
            try:
                return c.infer({S: state(x)})
            except RemoteError as exc:
                return exc

        out = in_threads([partial(ask, c, x) for c, x in zip(clients, [0.1, 99.0, 0.3])])
    assert calls == [3, 1, 1, 1]  # the batch failed, then each row alone
    assert isinstance(out[1], RemoteError) and out[1].kind == "InferenceError"
    assert "ValueError: state 99 is cursed" in out[1].message
    np.testing.assert_allclose(
        out[0]["actions"], inner({S: state(0.1)[None]})[0], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        out[2]["actions"], inner({S: state(0.3)[None]})[0], rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------------------- robustness
def _obj_frame() -> bytes:
    arr = {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}
    return msgpack.packb({S: arr}, use_bin_type=True)


BAD_FRAMES: list[tuple[Any, str, str]] = [
    (b"\xc1\x00garbage", "DecodeError", "could not decode the frame as msgpack"),
    ("hello", "ProtocolError", "expected a binary frame (msgpack), got a text frame"),
    (packb({S: np.zeros(4, np.float32)}), "ObservationError",
     "observation['observation.state']: expected shape (3,), got (4,)"),
    (_obj_frame(), "DecodeError", "dtype '|O' is not allowed on the wire"),
    (packb({"prompt": "x"}), "ObservationError", "missing keys ['observation.state']"),
    (packb({S: np.array([np.nan, 0, 0], np.float32)}), "ObservationError", "NaN or inf"),
    (packb({S: np.zeros(3, bool)}), "ObservationError", "got bool"),
    (packb([1, 2, 3]), "RequestError", "expected a msgpack map (an observation dict), got list"),
    (packb({S: state(0), "prev_action": np.zeros((9, 1), np.float32)}), "RequestError",
     "prev_action: expected shape (L<=8, 1), got (9, 1)"),
    (packb({S: state(0), "prev_action": np.zeros((2, 1), np.float32), "est_delay": -1}),
     "RequestError", "est_delay: expected 0 <= est_delay <= 8, got -1"),
    (packb({S: state(0), "prev_action": np.zeros((2, 1), np.float32),
            "rtc": {"schedule": "cubic"}}), "RequestError", "rtc['schedule']: expected one of"),
    (packb({"__ctrl__": "explode"}), "ProtocolError", "unknown control frame 'explode'"),
    # finite as sent, inf once cast to float32: refused before the policy sees it
    (packb({S: np.array([1e300, 0, 0])}), "ObservationError",
     "observation['observation.state']: expected |values| <= 3.403e+38 (the float32 the policy "
     "computes in), got 1e+300, which would become inf"),
    (packb({S: state(0), "prev_action": np.array([[1e300], [0.0]])}), "ObservationError",
     "prev_action: expected |values| <= 3.403e+38"),
    # finite float32 input whose actions come out NaN: an error, never an answer
    (packb({S: np.array([3e38, 0, 0], np.float32)}), "InferenceError",
     "the policy returned non-finite actions (8 of 8 values NaN or inf) for env"),
    (packb({S: state(0), "prev_action": np.zeros((2, 1), np.float32),
            "rtc": {"max_guidance_weight": 1e6}}), "RequestError",
     "rtc['max_guidance_weight']: expected a number in [0, 100], got 1000000.0"),
    (packb({S: state(0), "prev_action": np.zeros((2, 1), np.float32),
            "rtc": {"max_guidance_weight": 100.5}}), "RequestError", "[0, 100], got 100.5"),
]  # fmt: skip


def send_bad_frames(url: str, ok_state: np.ndarray, ok_actions: np.ndarray) -> None:
    """Every bad frame gets its typed error reply on one envactor connection, which then still
    works, until an oversized frame makes websockets close it (1009)."""
    with connect(url, compression=None, proxy=None, additional_headers=ENVACTOR) as bad:
        bad.recv(timeout=5)  # metadata
        for frame, kind, message in BAD_FRAMES:
            bad.send(frame)
            err = unpackb(bad.recv(timeout=5, decode=False))["error"]
            assert err["type"] == kind and message in err["message"], (err, message)
        bad.send(packb({S: ok_state}))
        reply = unpackb(bad.recv(timeout=5, decode=False))
        np.testing.assert_allclose(reply["actions"], ok_actions, rtol=1e-5, atol=1e-6)
        bad.send(b"\0" * (65 * 1024))  # over max_size
        with pytest.raises(ConnectionClosed) as closed:
            bad.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_bad_clients_never_disturb_a_good_one() -> None:
    policy = mlp_policy()
    xs = np.linspace(-1, 1, 200)
    want = policy.predict({S: np.stack([state(x) for x in xs])})
    done = threading.Event()
    results: list[bool] = []
    with serving(policy, max_size=64 * 1024) as srv, PolicyClient(port=srv.port) as good:

        def good_loop() -> None:
            for i, x in enumerate(xs):
                if done.is_set():
                    return
                reply = good.infer({S: state(x)})
                results.append(np.allclose(reply["actions"], want[i], rtol=1e-5, atol=1e-6))

        thread = threading.Thread(target=good_loop)
        thread.start()
        try:
            send_bad_frames(srv.url, state(xs[0]), want[0])
        finally:
            done.set()
            thread.join(10)
        assert results and all(results)
        reply = good.infer({S: state(xs[-1])})  # and the server is still serving
        np.testing.assert_allclose(reply["actions"], want[-1], rtol=1e-5, atol=1e-6)


def test_errors_are_text_frames_for_other_clients_and_the_connection_stays() -> None:
    """A client without envactor's header (openpi's) gets each error as one text line
    ``"<type>: <message>"``, and its next request on the same connection is answered."""
    policy = mlp_policy()
    with serving(policy) as srv, connect(srv.url, compression=None, proxy=None) as ws:
        ws.recv(timeout=5)  # metadata
        for frame, kind, message in BAD_FRAMES:
            ws.send(frame)
            text = ws.recv(timeout=5)
            assert isinstance(text, str) and text.startswith(f"{kind}: "), text
            assert message in text and "\n" not in text, (text, message)
        ws.send(packb({S: state(0.2)}))
        reply = unpackb(ws.recv(timeout=5, decode=False))
    np.testing.assert_allclose(reply["actions"], local(policy, state(0.2)), rtol=1e-5, atol=1e-6)


def test_a_wrong_protocol_header_gets_text_errors() -> None:
    with serving(mlp_policy()) as srv:
        headers = {CLIENT_HEADER: "envactor-ws/0"}
        with connect(srv.url, compression=None, proxy=None, additional_headers=headers) as ws:
            ws.recv(timeout=5)
            ws.send(packb({"prompt": "x"}))
            assert ws.recv(timeout=5).startswith("ObservationError: observation is missing keys")


def test_non_finite_actions_fail_only_their_row_and_guidance_weight_is_bounded() -> None:
    policy = flow_policy()
    prev = np.full((4, 1), 0.5, np.float32)
    with serving(policy, max_batch=8, batch_timeout_ms=3000) as srv:
        clients = [PolicyClient(port=srv.port) for _ in range(2)]

        def ask(c: PolicyClient, st: np.ndarray) -> Any:
            try:
                return c.infer({S: st})
            except RemoteError as exc:
                return exc

        huge = np.array([3e38, 0, 0], np.float32)
        out = in_threads([partial(ask, clients[0], state(0.2)), partial(ask, clients[1], huge)])
        assert out[0]["server_timing"]["batch_size"] == 2  # the rows shared a forward pass
        assert np.isfinite(out[0]["actions"]).all()
        assert isinstance(out[1], RemoteError) and out[1].kind == "InferenceError"
        assert "non-finite actions" in out[1].message
        top = clients[0].infer(  # the largest weight allowed gives an answer
            {S: state(0.2)}, prev_action=prev, est_delay=1, rtc={"max_guidance_weight": 100}
        )
        assert top["actions"].shape == (8, 1) and np.isfinite(top["actions"]).all()
        # refused before it is sent (the server refuses raw frames the same way, above)
        with pytest.raises(ValueError, match=r"in \[0, 100\], got 1000000.0"):
            clients[0].infer(
                {S: state(0.2)}, prev_action=prev, est_delay=1, rtc={"max_guidance_weight": 1e6}
            )
        for c in clients:
            c.close()


# ---------------------------------------------------------------------------- state and RTC
def test_episode_control_frames_reset_only_that_client() -> None:
    pid = PIDPolicy(input_features={S: {"shape": [3], "norm": "identity"}}, action_dim=1,
                    kp=0.0, ki=1.0, dt=1.0)  # fmt: skip  # action = running sum of errors
    obs = {S: np.array([-1.0, 0.0, 0.0], np.float32)}  # error 1 per step
    with serving(pid) as srv:
        a, b = PolicyClient(port=srv.port), PolicyClient(port=srv.port)
        assert [float(a.infer(obs)["actions"][0, 0]) for _ in range(3)] == [1.0, 2.0, 3.0]
        assert float(b.infer(obs)["actions"][0, 0]) == 1.0
        reply = a.episode_start(experiment="exp", task="swing", episode_id=4)
        assert reply == {"ok": True, "ctrl": "episode_start", "env_id": a.metadata["env_id"]}
        assert float(a.infer(obs)["actions"][0, 0]) == 1.0  # a's integrator was reset
        assert float(b.infer(obs)["actions"][0, 0]) == 2.0  # b's was not
        assert a.episode_end(success=True)["ok"] is True
        assert float(a.infer(obs)["actions"][0, 0]) == 1.0
        assert srv.stats["forward_passes"] == 7  # control frames are not observations
        b_id = b.metadata["env_id"]
        b.close()  # closing a connection forgets its env state
        for _ in range(200):
            if b_id not in pid._state:
                break
            time.sleep(0.01)
        assert b_id not in pid._state
        a.close()


def test_rtc_request_runs_guided_inference_like_local() -> None:
    policy = flow_policy()
    st = state(0.4)
    prev = np.linspace(-1, 1, 5, dtype=np.float32)[:, None]
    rtc = {"schedule": "linear", "jacobian": "identity", "max_guidance_weight": 2.0}
    with serving(policy) as srv, PolicyClient(port=srv.port) as c:
        c.set_seed(11)
        remote = c.infer({S: st}, prev_action=prev, est_delay=2)
        policy.set_env_seeds({"ref": 11})
        want = policy.guided_inference({S: st[None]}, prev_chunk=[prev], delay=2, env_ids=["ref"])
        np.testing.assert_allclose(remote["actions"], want[0], atol=1e-5)
        c.set_seed(11)
        remote2 = c.infer({S: st}, prev_action=prev, est_delay=1, executed=3, rtc=rtc)
        policy.set_env_seeds({"ref": 11})
        want2 = policy.guided_inference(
            {S: st[None]}, min_num_actions_executed=3, prev_chunk=[prev], delay=1,
            env_ids=["ref"], schedule="linear", jacobian="identity", max_guidance_weight=2.0,
        )  # fmt: skip
        np.testing.assert_allclose(remote2["actions"], want2[0], atol=1e-5)
        assert np.abs(remote2["actions"] - remote["actions"]).max() > 1e-4  # options were used
        c.set_seed(11)
        plain = c.infer({S: st})["actions"]
        policy.set_env_seeds({"ref": 11})
        np.testing.assert_allclose(
            plain, policy.predict({S: st[None]}, env_ids=["ref"])[0], atol=1e-5
        )
        assert np.abs(plain - remote["actions"]).max() > 1e-3  # guidance changed the chunk


# ---------------------------------------------------------------------------- client
def test_client_reconnects_after_restart_and_reports_a_gone_server() -> None:
    policy = mlp_policy()
    first = PolicyServer(policy, port=0).start()
    port = first.port
    client = PolicyClient(port=port, retries=30, backoff_s=0.02, max_backoff_s=0.2)
    want = local(policy, state(0.1))
    np.testing.assert_allclose(client.infer({S: state(0.1)})["actions"], want, rtol=1e-5, atol=1e-6)
    first.stop()
    second = PolicyServer(policy, port=port).start()
    try:
        np.testing.assert_allclose(
            client.infer({S: state(0.1)})["actions"], want, rtol=1e-5, atol=1e-6
        )
    finally:
        second.stop()
    client.retries = 3
    gone = rf"no policy server answered at ws://127.0.0.1:{port}: 3 attempt"
    with pytest.raises(ServerUnavailableError, match=gone):
        client.infer({S: state(0.1)})
    with pytest.raises(ServerUnavailableError, match="ConnectionRefusedError"):
        PolicyClient(port=port, retries=2, backoff_s=0.01)


def test_connection_limit_and_busy_port() -> None:
    with serving(mlp_policy(), max_connections=1) as srv, PolicyClient(port=srv.port):
        with pytest.raises(ServerUnavailableError, match="HTTP 503"):
            PolicyClient(port=srv.port, retries=2, backoff_s=0.01)
        with pytest.raises(RuntimeError, match=rf"could not start on 127.0.0.1:{srv.port}"):
            PolicyServer(mlp_policy(), port=srv.port).start()


# ---------------------------------------------------------------------------- RemotePolicy
def test_remote_policy_sends_the_guidance_request_itself() -> None:
    import envactor.runtime as runtime_pkg

    sources = Path(runtime_pkg.__file__).parent.parent.rglob("*.py")
    assert not [p.name for p in sources if "recover_guidance" in p.read_text()]  # no inverse search
    policy = flow_policy()
    seen: list[GuidanceRequest] = []
    inner = policy.guided_inference

    def recording(batch: Any, **kw: Any) -> np.ndarray:
        seen.append(kw["request"])
        return inner(batch, **kw)

    policy.guided_inference = recording  # type: ignore[method-assign,assignment]
    rng = np.random.default_rng(0)
    rems = [rng.normal(size=(5, 1)).astype(np.float32), rng.normal(size=(3, 1)).astype(np.float32)]
    req = GuidanceRequest.build(rems, [2, 1], horizon=8, executed=[3, 6], schedule="linear",
                                beta=2.0, jacobian="identity")  # fmt: skip
    obs = {S: np.stack([state(0.1), state(0.3)])}
    with (
        serving(policy, max_batch=8, batch_timeout_ms=200) as srv,
        RemotePolicy(port=srv.port) as remote,
    ):
        remote.set_env_seeds({"a": 1, "b": 2})
        out = remote.guided_inference(obs, request=req, env_ids=["a", "b"])
    rows = sorted(
        (g.rows([i]) for g in seen for i in range(g.batch_size)), key=lambda r: -r.delay[0]
    )
    assert [(r.delay, r.executed, r.settings) for r in rows] == [
        ((2,), (3,), ("linear", 2.0, "identity", "guided")),
        ((1,), (6,), ("linear", 2.0, "identity", "guided")),
    ]
    for row, rem, w in zip(rows, rems, req.weights):
        np.testing.assert_array_equal(row.remainder[0], rem)
        np.testing.assert_array_equal(row.weights[0], w)  # the server's mask is the local one
    policy.guided_inference = inner  # type: ignore[method-assign]
    policy.set_env_seeds({"x": 1, "y": 2})
    local = policy.guided_inference(obs, request=req, env_ids=["x", "y"])
    np.testing.assert_allclose(out, local, atol=1e-5)


def pendulums(n: int, steps: int = 30) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make("Pendulum-v1", max_episode_steps=steps) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )


@pytest.mark.parametrize(("make", "executor", "delay"),
                         [(mlp_policy, "sync", 0), (mlp_policy, "rtc", 1), (flow_policy, "rtc", 2)],
                         ids=["mlp-sync", "mlp-blend", "flow-rtc"])  # fmt: skip
def test_remote_policy_drives_vector_actor_like_local(
    make: Callable[[], Policy], executor: str, delay: int
) -> None:
    policy = make()
    eps_local = VectorActor(policy, executor, delay=delay).run(pendulums(2), 4, seed=3)
    with serving(policy, max_batch=8, batch_timeout_ms=50) as srv:
        with RemotePolicy(port=srv.port) as remote:
            assert remote.action_shape == (8, 1) and remote.can_guide()
            eps_remote = VectorActor(remote, executor, delay=delay).run(pendulums(2), 4, seed=3)
        batched = srv.stats["requests"] > srv.stats["forward_passes"]
    assert [m.episode_return for m in eps_remote] == pytest.approx(
        [m.episode_return for m in eps_local], rel=1e-4
    )
    assert [m.requests for m in eps_remote] == [m.requests for m in eps_local]
    assert batched  # the two envs' rows met in one forward pass on the server


def test_remote_policy_surfaces_observation_errors() -> None:
    with serving(mlp_policy()) as srv, RemotePolicy(port=srv.port) as remote:
        with pytest.raises(ValueError, match=r"expected shape \(B, 3\)"):
            remote.predict({S: np.zeros((2, 4), np.float32)})  # caught locally by the spec
        with pytest.raises(ValueError, match="NaN or inf"):
            remote.predict({S: np.full((1, 3), np.nan, np.float32)})  # refused by the server


# ---------------------------------------------------------------------------- CLI hooks
def test_serve_args_and_run_serve(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from envactor import save_policy

    monkeypatch.delenv("ENVACTOR_API_KEY", raising=False)
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    args = parser.parse_args(["ckpt"])
    assert (args.host, args.port, args.api_key, args.max_batch) == ("127.0.0.1", 8000, None, 16)
    monkeypatch.setenv("ENVACTOR_API_KEY", "k1")
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    ckpt = save_policy(mlp_policy(), tmp_path / "ckpt")
    args = parser.parse_args([str(ckpt), "--port", "0", "--no-warmup"])
    assert args.api_key == "k1"

    async def fake_serve(self: PolicyServer, ready: Callable[[], None] | None = None) -> None:
        assert self.max_batch == 16 and self._keys == [b"Api-Key k1"]
        assert ready is not None
        ready()

    monkeypatch.setattr(PolicyServer, "serve", fake_serve)
    assert run_serve(args) == 0
    assert "envactor serve: mlp_chunk (weights v0) on ws://127.0.0.1:0 (API key required" in (
        capsys.readouterr().err
    )
