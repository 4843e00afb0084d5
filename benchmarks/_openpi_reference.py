"""A minimal reference server equivalent to openpi's ``WebsocketPolicyServer`` (for the
side-by-side benchmark in ``bench_server.py``).

This is NOT openpi's code (openpi's server is not on the package registry): it is written from
that server's observable behaviour. An asyncio ``websockets`` server with compression off and no
frame limit; on connect it sends one msgpack metadata frame; then each binary frame is unpacked
with the ndarray hook of ``openpi_client.msgpack_numpy``, passed to ``policy.infer(obs)``, the
reply gets ``server_timing`` (``infer_ms``, and ``prev_total_ms`` from the second call on), and
is packed and sent back. No validation, no batching, one connection = one sequential loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


class ConstantPolicy:
    """openpi-style policy: ``infer(obs)`` -> ``{"actions": <the same (H, A) array>}``."""

    def __init__(self, horizon: int, action_dim: int) -> None:
        self.actions = np.zeros((horizon, action_dim), np.float32)

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        return {"actions": self.actions}


async def serve_reference(
    policy: ConstantPolicy, metadata: Mapping[str, Any], ready: Callable[[int], None]
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
