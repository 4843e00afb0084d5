"""Policy server under attack: a good client's latency (p50/p99) alone, then while another
client keeps sending 15 MB frames of nested integer lists (refused by the decode budget, decoded
off the event loop when large), and the server's memory after many short connections that each
send ``set_seed`` and an observation (per-connection state must be released on close).

Target: the good client's p99 stays under 50 ms with the attacker; memory stays flat.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_server_attack.py [--requests 500]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from typing import Any

import msgpack
import numpy as np

STATE = "observation.state"


def _percentiles(samples: list[float]) -> str:
    p50, p99 = np.percentile(samples, [50, 99])
    return f"p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   max {max(samples):6.2f} ms"


def _latencies(port: int, n: int) -> list[float]:
    from envactor.runtime.serving.client import PolicyClient

    out = []
    with PolicyClient(port=port) as client:
        for i in range(n):
            obs = {STATE: np.array([np.sin(i), np.cos(i), 0.1], np.float32)}
            t0 = time.perf_counter()
            client.infer(obs)
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def _attack(port: int, stop: Any, sent: Any) -> None:
    """The attacker (its own process, so its packing and sending do not share our GIL)."""
    from websockets.sync.client import connect

    from envactor.runtime.serving.client import _version_kwargs

    frame = msgpack.packb({STATE: [[1] * 65536] * 230})
    url = f"ws://127.0.0.1:{port}"
    with connect(url, compression=None, max_size=None, **_version_kwargs(connect)) as bad:
        bad.recv(timeout=10)  # metadata
        while not stop.is_set():
            bad.send(frame)
            bad.recv(timeout=30)  # the error
            sent.value += 1


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _soak(port: int, n: int) -> None:
    from envactor.runtime.serving.client import PolicyClient

    for i in range(n):
        with PolicyClient(port=port) as c:
            c.set_seed(i)
            c.observe({STATE: np.zeros(3, np.float32)})


def main() -> None:
    from _common import pendulum_policy

    from envactor.runtime.serving.server import PolicyServer

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=500, help="latency samples per phase")
    ap.add_argument("--connections", type=int, default=2000, help="short connections (soak)")
    args = ap.parse_args()
    policy = pendulum_policy("mlp_chunk", device="cpu")
    with PolicyServer(policy, port=0) as srv:
        _latencies(srv.port, 50)  # warm-up
        print(f"good client alone:          {_percentiles(_latencies(srv.port, args.requests))}")
        ctx = mp.get_context("spawn")
        stop, sent = ctx.Event(), ctx.Value("i", 0)
        attacker = ctx.Process(target=_attack, args=(srv.port, stop, sent), daemon=True)
        attacker.start()
        while sent.value < 1 and attacker.is_alive():
            time.sleep(0.05)
        with_attack = _latencies(srv.port, args.requests)
        stop.set()
        attacker.join(60)
        print(
            f"good client with attacker:  {_percentiles(with_attack)}   ({sent.value} bad frames)"
        )
        _soak(srv.port, 200)  # warm-up of allocator pools
        before = _rss_mib()
        _soak(srv.port, args.connections)
        after = _rss_mib()
        print(
            f"memory after {args.connections} connections with set_seed + observe: "
            f"{before:.1f} -> {after:.1f} MiB RSS (client and server in one process); "
            f"state tables {srv.state_sizes()}"
        )


if __name__ == "__main__":
    main()
