"""The official openpi client (``openpi-client`` package, unchanged) against ``envactor serve``.

Real sockets on 127.0.0.1, ephemeral ports. ``openpi_client.action_chunk_broker`` imports
``tree`` (dm-tree) for one ``map_structure`` over the reply dict; where dm-tree is not installed
a minimal stand-in for that one function is provided, the broker's own code runs as shipped.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch
from serving_util import S, serving, state
from websockets.exceptions import InvalidStatus

from envactor import build_policy
from envactor.normalize import Normalizer
from envactor.policy.base import Policy
from envactor.policy.policies.pid import PIDPolicy
from envactor.runtime.serving.server import DEFAULT_MAX_SIZE

pytest.importorskip("openpi_client")
from openpi_client.websocket_client_policy import WebsocketClientPolicy

CAMS = [f"observation.images.cam{i}" for i in range(3)]
FULL_HD = (1080, 1920, 3)
pytestmark = pytest.mark.filterwarnings(  # openpi's client keeps connect()'s socket outside `with`
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """openpi's client lets websockets read proxy settings; loopback must not go through one."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def broker_class(monkeypatch: pytest.MonkeyPatch) -> Any:
    """openpi's ``ActionChunkBroker`` (with a stand-in ``tree`` module where dm-tree is absent;
    it is in ``sys.modules`` for this test only)."""
    try:
        import tree  # noqa: F401
    except ImportError:
        shim = types.ModuleType("tree")
        shim.__spec__ = importlib.machinery.ModuleSpec("tree", None)

        def map_structure(fn: Any, value: Any) -> Any:
            if isinstance(value, dict):
                return {k: map_structure(fn, v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return type(value)(map_structure(fn, v) for v in value)
            return fn(value)

        shim.map_structure = map_structure  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "tree", shim)
    from openpi_client.action_chunk_broker import ActionChunkBroker

    return ActionChunkBroker


def mlp_policy() -> Policy:
    torch.manual_seed(0)
    p = build_policy("mlp_chunk")
    stats = {S: {"mean": np.zeros(3), "std": np.ones(3)},
             "action": {"min": np.array([-2.0]), "max": np.array([2.0])}}  # fmt: skip
    p.normalizer = Normalizer({S: "mean_std", "action": "min_max"}, stats)
    return p


def integrator(**features: dict[str, Any]) -> PIDPolicy:
    """action = running sum of (0 - state[0]) per connection; extra features are ignored."""
    return PIDPolicy(input_features={S: {"shape": [3], "norm": "identity"}, **features},
                     action_dim=1, kp=0.0, ki=1.0, dt=1.0, horizon=4)  # fmt: skip


def close(client: WebsocketClientPolicy) -> None:
    client._ws.close()  # openpi's client has no close(); its socket is the attribute _ws


def test_openpi_infer_and_metadata() -> None:
    policy = mlp_policy()
    with serving(policy) as srv:
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        meta = client.get_server_metadata()
        assert meta["protocol"] == "envactor-ws/1" and meta["action_shape"] == [8, 1]
        assert meta["input_features"] == {S: {"shape": [3], "dtype": "float32"}}
        reply = client.infer({S: state(0.3), "prompt": "swing up"})
        want = policy.predict({S: state(0.3)[None]})[0]
        assert reply["actions"].shape == (8, 1) and reply["actions"].dtype == np.float32
        np.testing.assert_allclose(reply["actions"], want, rtol=1e-5, atol=1e-6)
        assert reply["server_timing"]["batch_size"] == 1
        close(client)


def test_openpi_api_key_accepted_and_refused() -> None:
    with serving(mlp_policy(), api_key="s3cret") as srv:
        for key in (None, "wrong"):
            with pytest.raises(InvalidStatus) as err:
                WebsocketClientPolicy("127.0.0.1", srv.port, api_key=key)
            assert err.value.response.status_code == 401
        client = WebsocketClientPolicy("127.0.0.1", srv.port, api_key="s3cret")
        assert client.infer({S: state(0.0)})["actions"].shape == (8, 1)
        close(client)


def test_openpi_error_raises_client_side_and_the_next_call_works() -> None:
    policy = mlp_policy()
    with serving(policy) as srv:
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        with pytest.raises(RuntimeError) as err:
            client.infer({S: np.zeros(4, np.float32)})
        assert str(err.value) == (
            "Error in inference server:\nObservationError: observation['observation.state']: "
            "expected shape (3,), got (4,)"
        )
        with pytest.raises(RuntimeError, match="ObservationError: observation is missing keys"):
            client.infer({"prompt": "no state"})
        reply = client.infer({S: state(0.1)})  # same socket: the connection stayed open
        want = policy.predict({S: state(0.1)[None]})[0]
        np.testing.assert_allclose(reply["actions"], want, rtol=1e-5, atol=1e-6)
        assert srv.stats["connections"] == 1
        close(client)


def test_openpi_action_chunk_broker_steps_through_each_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker_cls = broker_class(monkeypatch)
    with serving(integrator()) as srv:
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        broker = broker_cls(client, action_horizon=2)
        obs = {S: np.array([-1.0, 0.0, 0.0], np.float32)}  # error 1 per inference
        steps = [broker.infer(obs) for _ in range(6)]
        assert [s["actions"].shape for s in steps] == [(1,)] * 6
        # one inference every 2 steps: the integrator reads 1, 1, 2, 2, 3, 3
        assert [float(s["actions"][0]) for s in steps] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
        assert srv.stats["forward_passes"] == 3
        broker.reset()  # openpi's reset sends nothing: the server's state goes on
        assert float(broker.infer(obs)["actions"][0]) == 4.0
        close(client)


def test_openpi_episode_boundary_is_a_new_connection() -> None:
    """openpi's client never sends control frames: per-connection state continues within one
    connection (reset() is local), and a new connection starts fresh."""
    pid = integrator()
    obs = {S: np.array([-1.0, 0.0, 0.0], np.float32)}
    with serving(pid) as srv:
        first = WebsocketClientPolicy("127.0.0.1", srv.port)
        assert [float(first.infer(obs)["actions"][0, 0]) for _ in range(2)] == [1.0, 2.0]
        first.reset()
        assert float(first.infer(obs)["actions"][0, 0]) == 3.0
        close(first)
        second = WebsocketClientPolicy("127.0.0.1", srv.port)
        assert float(second.infer(obs)["actions"][0, 0]) == 1.0  # fresh state
        close(second)


def test_openpi_three_1080p_cameras_fit_the_default_frame_limit() -> None:
    cams = {k: {"shape": list(FULL_HD), "dtype": "uint8", "norm": "image"} for k in CAMS}
    rng = np.random.default_rng(0)
    obs: dict[str, Any] = {k: rng.integers(0, 256, FULL_HD, dtype=np.uint8) for k in CAMS}
    obs[S] = np.array([-0.5, 0.0, 0.0], np.float32)
    size = sum(v.nbytes for v in obs.values())
    assert size > 17.7 * 2**20 and 3 * size <= DEFAULT_MAX_SIZE  # 17.8 MiB, with margin
    with serving(integrator(**cams)) as srv:  # the default max_size
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        reply = client.infer(obs)
        np.testing.assert_array_equal(reply["actions"], np.full((4, 1), 0.5, np.float32))
        bad = dict(obs, **{CAMS[1]: obs[CAMS[1]][:540]})  # half a camera: refused, not closed
        with pytest.raises(RuntimeError, match=r"cam1'\]: expected shape \(1080, 1920, 3\)"):
            client.infer(bad)
        assert float(client.infer(obs)["actions"][0, 0]) == 1.0
        close(client)
