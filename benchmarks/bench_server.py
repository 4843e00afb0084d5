"""Policy server: per-request latency for one client, and throughput of 8 concurrent clients with
cross-client batching on vs off (``max_batch=1``).

The server runs in its own process (spawned, as ``envactor serve`` would). Latency is measured
with the synchronous ``PolicyClient``; throughput with clients that are coroutines of this
process, each with its own connection, each sending its next request as soon as the previous
reply arrives (openpi clients are sequential). Policies: ``mlp`` (the small
mlp_chunk of the other benchmarks: transport-bound) and ``flow`` (flow matching, 5 Euler steps:
a forward pass that costs more than the transport, where batching should pay most).

Target: batching on / off throughput >= 2x with 8 clients on the flow policy.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_server.py [--policy mlp flow] [--seconds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import threading
import time
from typing import Any

import numpy as np

STATE = "observation.state"


def _build(name: str, device: str) -> Any:
    from _common import pendulum_policy

    return pendulum_policy("mlp_chunk" if name == "mlp" else "flow", device=device)


def _serve(name: str, device: str, max_batch: int, timeout_ms: float, port_q: Any) -> None:
    import torch

    from envactor.runtime.serving.server import PolicyServer

    torch.set_num_threads(1)
    policy = _build(name, device)
    policy.warmup(8)
    server = PolicyServer(policy, port=0, max_batch=max_batch, batch_timeout_ms=timeout_ms)
    server.start()
    port_q.put(server.port)
    threading.Event().wait()  # until the parent terminates this process


class Served:
    """A policy server in a child process for the duration of a ``with`` block."""

    def __init__(self, name: str, device: str, max_batch: int, timeout_ms: float) -> None:
        ctx = mp.get_context("spawn")
        self.port_q = ctx.Queue()
        self.proc = ctx.Process(
            target=_serve, args=(name, device, max_batch, timeout_ms, self.port_q), daemon=True
        )

    def __enter__(self) -> int:
        self.proc.start()
        port: int = self.port_q.get(timeout=120)
        return port

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.join(10)


def latency_ms(port: int, n: int) -> list[float]:
    """Round-trip times of ``n`` sequential requests from one client (after 20 warm-up ones)."""
    from envactor.runtime.serving.client import PolicyClient

    rng = np.random.default_rng(0)
    with PolicyClient(port=port) as client:
        out = []
        for i in range(n + 20):
            obs = {STATE: rng.normal(size=3).astype(np.float32)}
            t0 = time.perf_counter()
            client.infer(obs)
            if i >= 20:
                out.append((time.perf_counter() - t0) * 1e3)
    return out


def throughput(port: int, clients: int, seconds: float) -> tuple[float, float]:
    """(requests per second over all clients, mean server batch size).

    The clients are coroutines on one event loop (one connection each, sequential requests), so
    the load generator costs one thread instead of two per client.
    """
    import asyncio

    from websockets.asyncio.client import connect

    from envactor.runtime.serving.wire import packb, unpackb

    async def client(k: int, stop_at: list[float], counts: list[int], sizes: list[int]) -> None:
        payload = packb({STATE: np.full(3, 0.1 * k, np.float32)})
        async with connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as ws:
            await ws.recv()  # metadata
            await ws.send(payload)  # warm-up request
            await ws.recv()
            await started.wait()
            while time.perf_counter() < stop_at[0]:
                await ws.send(payload)
                reply = unpackb(await ws.recv(decode=False))
                counts[k] += 1
                sizes.append(int(reply["server_timing"]["batch_size"]))

    async def run() -> tuple[float, float]:
        counts, stop_at = [0] * clients, [float("inf")]
        sizes: list[int] = []
        tasks = [asyncio.create_task(client(k, stop_at, counts, sizes)) for k in range(clients)]
        await asyncio.sleep(0.5)  # every connection is open and warm
        t0 = time.perf_counter()
        stop_at[0] = t0 + seconds
        started.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        return sum(counts) / elapsed, statistics.fmean(sizes) if sizes else 0.0

    started = asyncio.Event()
    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--policy", nargs="+", default=["mlp", "flow"], choices=["mlp", "flow"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=300, help="latency samples per repeat")
    ap.add_argument("--seconds", type=float, default=2.0, help="per throughput measurement")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved on/off rounds (best)")
    ap.add_argument("--batch-timeout-ms", type=float, default=2.0)
    args = ap.parse_args()

    for name in args.policy:
        # both servers up at once; measurements interleaved so load changes hit both alike
        with (
            Served(name, args.device, 16, args.batch_timeout_ms) as port_on,
            Served(name, args.device, 1, args.batch_timeout_ms) as port_off,
        ):
            p50s, p99s, on, off, batch = [], [], 0.0, 0.0, 0.0
            for _ in range(args.repeats):
                lat = latency_ms(port_on, args.requests)
                p50s.append(statistics.median(lat))
                p99s.append(statistics.quantiles(lat, n=100)[98])
                rate, mean_batch = throughput(port_on, args.clients, args.seconds)
                if rate > on:
                    on, batch = rate, mean_batch
                off = max(off, throughput(port_off, args.clients, args.seconds)[0])
        print(
            f"{name:5s} 1 client: p50 {min(p50s):.2f} ms  p99 {min(p99s):.2f} ms  (best of "
            f"{args.repeats} x {args.requests} requests)"
        )
        print(
            f"{name:5s} {args.clients} clients: batching on {on:6.0f} req/s (mean batch "
            f"{batch:.1f})  off (max_batch=1) {off:6.0f} req/s  ratio on/off {on / off:.2f}x"
        )


if __name__ == "__main__":
    main()
