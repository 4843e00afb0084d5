"""The openpi side of the side-by-side benchmark in ``bench_server.py``: openpi's own
``WebsocketPolicyServer`` loaded from a checkout of openpi, or a minimal equivalent of it.

openpi's server is not on the package registry (only its client is). Given the path of its
``src/openpi/serving/websocket_policy_server.py`` (from a checkout of
github.com/Physical-Intelligence/openpi; the file imports only ``openpi_client`` and
``websockets``, both in envactor's dev environment), ``serve_openpi`` loads that file as it is
and runs it. Without it, ``serve_reference`` stands in: written from that server's observable
behaviour, not from its code. An asyncio ``websockets`` server with compression off and no frame
limit; on connect it sends one msgpack metadata frame; then each binary frame is unpacked with
the ndarray hook of ``openpi_client.msgpack_numpy``, passed to ``policy.infer(obs)``, the reply
gets ``server_timing`` (``infer_ms``, and ``prev_total_ms`` from the second call on), and is
packed and sent back. No validation, no batching, one connection = one sequential loop.

Policies in openpi's interface (``infer(obs) -> dict``, a new dict per call: the server adds
``server_timing`` to it): ``ConstantPolicy`` returns a constant chunk (the trivial policy), and
``EnvactorPolicy`` runs an envactor policy's ``predict`` on the one observation (how an envactor
policy would be served with openpi's server), so both servers can serve the same policy.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


class ConstantPolicy:
    """openpi-style policy: ``infer(obs)`` -> ``{"actions": <the same (H, A) array>}``."""

    def __init__(self, horizon: int, action_dim: int) -> None:
        self.actions = np.zeros((horizon, action_dim), np.float32)

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        return {"actions": self.actions}


class EnvactorPolicy:
    """An envactor ``Policy`` in openpi's interface: the declared features of the one
    observation, as a batch of one (writable copies, as envactor's server makes), through
    ``predict``; the reply is that env's chunk."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.keys = list(policy.input_features)

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        batch = {k: np.asarray(obs[k])[None].copy() for k in self.keys}
        return {"actions": self.policy.predict(batch, env_ids=[0])[0]}


async def serve_reference(
    policy: Any, metadata: Mapping[str, Any], ready: Callable[[int], None]
) -> None:
    """Serve ``policy`` on a free loopback port forever; ``ready(port)`` once listening."""
    from openpi_client import msgpack_numpy
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def handler(ws: ServerConnection) -> None:
        packer = msgpack_numpy.Packer()
        await ws.send(packer.pack(dict(metadata)))
        prev_total: float | None = None
        while True:
            try:
                start = time.monotonic()
                obs = msgpack_numpy.unpackb(await ws.recv())
                t0 = time.monotonic()
                action = dict(policy.infer(obs))
                infer_s = time.monotonic() - t0
                action["server_timing"] = {"infer_ms": infer_s * 1000}
                if prev_total is not None:
                    action["server_timing"]["prev_total_ms"] = prev_total * 1000
                await ws.send(packer.pack(action))
                prev_total = time.monotonic() - start
            except ConnectionClosed:
                return

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as srv:
        ready(int(next(iter(srv.sockets)).getsockname()[1]))
        await asyncio.Future()  # forever


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(port: int, timeout: float = 60.0) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def serve_openpi(
    server_file: str, policy: Any, metadata: Mapping[str, Any], ready: Callable[[int], None]
) -> None:
    """Run openpi's own ``WebsocketPolicyServer`` (loaded from ``server_file``, openpi's
    ``websocket_policy_server.py``) on a free loopback port forever; ``ready(port)`` once its
    health check answers."""
    path = Path(server_file)
    spec = importlib.util.spec_from_file_location("openpi_websocket_policy_server", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load openpi's server from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    port = _free_port()
    server = module.WebsocketPolicyServer(policy, host="127.0.0.1", port=port, metadata=metadata)
    threading.Thread(target=lambda: (_wait_healthy(port), ready(port)), daemon=True).start()
    server.serve_forever()
