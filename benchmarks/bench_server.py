"""Policy server: per-call overhead next to openpi's own server, per-request latency for one
client, and throughput of 8 concurrent clients with cross-client batching on vs off.

Overhead (``--overhead``, on by default): the same official openpi client
(``openpi_client.websocket_client_policy.WebsocketClientPolicy``, which offers no compression
extension: every server below negotiates none) calls, interleaved in rounds (the order rotates
each round), envactor's ``PolicyServer`` and openpi's ``WebsocketPolicyServer``. openpi's server
is loaded from a checkout of openpi with ``--openpi-server path/to/openpi/src/openpi/serving/
websocket_policy_server.py``; without it, the equivalent minimal server in
``_openpi_reference.py`` (written from its behaviour) stands in and is labelled "reference".
Each server serves a pi0-sized chunk (50 x 14):

- ``envactor``: envactor's server, a policy whose chunk is a constant (identity normalization);
- ``openpi``: openpi's server, a policy whose ``infer`` returns a constant (the trivial policy);
- ``openpi+envactor policy``: openpi's server serving the same envactor policy as envactor's
  server does (its ``predict`` on the one observation), so the two servers serve one policy.

Overhead per call = round trip minus the ``infer_ms`` each server reports for its policy call
(envactor's includes the policy's (un)normalization and tensor conversions); median over all
calls, the best round's median, and the ratios envactor / openpi of both. Goal: envactor's
overhead at or below openpi's. ``--baseline-src DIR`` adds envactor's server from another
source tree (e.g. a checkout of an earlier commit's ``src``) to the same rounds: before/after
in one run.

Batching gain: requests/s of the ``flow`` policy with batching on, 8 clients vs 1 (goal >= 2.5x).

The servers run in their own processes (spawned, as ``envactor serve`` would). Latency is
measured with the synchronous ``PolicyClient``; throughput with clients that are coroutines of
this process, each with its own connection, each sending its next request as soon as the
previous reply arrives (openpi clients are sequential). Policies: ``mlp`` (the small mlp_chunk
of the other benchmarks: transport-bound) and ``flow`` (flow matching, 5 Euler steps: a forward
pass that costs more than the transport, where batching should pay most).

Target: batching on / off throughput >= 2x with 8 clients on the flow policy.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_server.py [--policy mlp flow] [--seconds 3]
    PYTHONPATH=src .venv/bin/python benchmarks/bench_server.py --policy  # overhead + gain only
        [--openpi-server FILE] [--baseline-src DIR] [--repeats 8] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import threading
import time
from typing import Any

import numpy as np

STATE = "observation.state"
HORIZON, ACTION_DIM = 50, 14  # a pi0-sized chunk for the overhead comparison
REFERENCE = "reference"  # openpi's server (or the minimal reference) with a constant policy
REFERENCE_POLICY = "reference+policy"  # the same server with envactor's constant policy


def _constant_policy() -> Any:
    """An envactor policy whose chunk is zeros (HORIZON, ACTION_DIM), identity normalization."""
    import torch

    from envactor.normalize import Normalizer
    from envactor.policy.base import Policy

    class Constant(Policy):
        trainable = False

        def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
            return torch.zeros(obs[STATE].shape[0], HORIZON, ACTION_DIM)

    modes = {STATE: "identity", "action": "identity"}
    return Constant({}, Normalizer(modes, {}), input_features={STATE: {"shape": [14],
                    "norm": "identity"}}, action_dim=ACTION_DIM, action_norm="identity",
                    horizon=HORIZON, n_action_steps=HORIZON)  # fmt: skip


def _build(name: str, device: str) -> Any:
    from _common import pendulum_policy

    if name == "const":
        return _constant_policy()
    return pendulum_policy("mlp_chunk" if name == "mlp" else "flow", device=device)


def _serve(
    name: str, device: str, max_batch: int, timeout_ms: float, port_q: Any, src: str | None = None
) -> None:
    """Child process: serve ``name`` (an envactor server of a benchmark policy, or one of the
    openpi servers ``REFERENCE``/``REFERENCE_POLICY``: ``src`` is then openpi's server file or
    None for the minimal reference); ``src`` for envactor: the source tree to import it from."""
    import sys

    import torch

    torch.set_num_threads(1)
    if name in (REFERENCE, REFERENCE_POLICY):
        from _openpi_reference import (
            ConstantPolicy,
            EnvactorPolicy,
            serve_openpi,
            serve_reference,
        )

        meta = {"policy": "constant", "action_shape": [HORIZON, ACTION_DIM]}
        policy: Any = ConstantPolicy(HORIZON, ACTION_DIM)
        if name == REFERENCE_POLICY:
            envactor_policy = _constant_policy()
            envactor_policy.warmup(8)
            policy = EnvactorPolicy(envactor_policy)
        if src is not None:
            serve_openpi(src, policy, meta, port_q.put)
        else:
            asyncio.run(serve_reference(policy, meta, port_q.put))
        return
    if src is not None:  # envactor from another source tree (before/after in one run)
        sys.path.insert(0, src)
        for mod in [m for m in sys.modules if m == "envactor" or m.startswith("envactor.")]:
            del sys.modules[mod]
    from envactor.runtime.serving.server import PolicyServer

    policy = _build(name, device)
    policy.warmup(8)
    server = PolicyServer(policy, port=0, max_batch=max_batch, batch_timeout_ms=timeout_ms)
    server.start()
    port_q.put(server.port)
    threading.Event().wait()  # until the parent terminates this process


class Served:
    """A policy server in a child process for the duration of a ``with`` block."""

    def __init__(
        self, name: str, device: str, max_batch: int, timeout_ms: float, src: str | None = None
    ) -> None:
        ctx = mp.get_context("spawn")
        self.port_q = ctx.Queue()
        self.proc = ctx.Process(
            target=_serve,
            args=(name, device, max_batch, timeout_ms, self.port_q, src),
            daemon=True,
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


def _openpi_client(port: int) -> Any:
    import warnings

    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    with warnings.catch_warnings():  # openpi's client opens its socket outside a `with`
        warnings.simplefilter("ignore", DeprecationWarning)
        return WebsocketClientPolicy(host="127.0.0.1", port=port)


def negotiated_extensions(port: int) -> str:
    """The WebSocket extensions the server accepted for openpi's client (none: no compression)."""
    client = _openpi_client(port)
    try:
        return str(client._ws.response.headers.get("Sec-WebSocket-Extensions") or "none")
    finally:
        client._ws.close()  # openpi's client has no close()


def openpi_overhead_ms(port: int, n: int) -> list[float]:
    """Round trip minus the server's reported ``infer_ms`` of ``n`` sequential calls of the
    official openpi client (after 20 warm-up calls)."""
    rng = np.random.default_rng(0)
    client = _openpi_client(port)
    out = []
    try:
        for i in range(n + 20):
            obs = {STATE: rng.normal(size=14).astype(np.float32)}
            t0 = time.perf_counter()
            reply = client.infer(obs)
            rtt = (time.perf_counter() - t0) * 1e3
            if i >= 20:
                out.append(rtt - float(reply["server_timing"]["infer_ms"]))
    finally:
        client._ws.close()  # openpi's client has no close()
    return out


def guided_ms(port: int, n: int) -> list[float]:
    """Round trips of ``n`` real-time-chunking requests (a remainder and a delay) from
    envactor's client (after 5 warm-up ones)."""
    from envactor.runtime.serving.client import PolicyClient

    obs = {STATE: np.full(14, 0.1, np.float32)}
    with PolicyClient(port=port) as client:
        remainder = client.infer(obs)["actions"][HORIZON // 2 :]
        out = []
        for i in range(n + 5):
            t0 = time.perf_counter()
            client.infer(obs, prev_action=remainder, est_delay=2)
            if i >= 5:
                out.append((time.perf_counter() - t0) * 1e3)
    return out


def overhead(args: argparse.Namespace) -> None:
    """Print each server's per-call overhead (openpi's client) and the ratios envactor/openpi."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):  # fmt: skip
        os.environ.pop(name, None)  # loopback must not go through a proxy
    theirs = "openpi" if args.openpi_server else "reference"
    servers = {
        "envactor": Served("const", "cpu", 16, args.batch_timeout_ms),
        theirs: Served(REFERENCE, "cpu", 1, 0.0, args.openpi_server),
        f"{theirs}+envactor policy": Served(REFERENCE_POLICY, "cpu", 1, 0.0, args.openpi_server),
    }
    if args.baseline_src:
        servers["envactor (baseline)"] = Served(
            "const", "cpu", 16, args.batch_timeout_ms, args.baseline_src
        )
    with contextlib.ExitStack() as stack:
        ports = {k: stack.enter_context(s) for k, s in servers.items()}
        for k, port in ports.items():
            print(f"{k}: extensions negotiated with openpi's client: {negotiated_extensions(port)}")
        names = list(ports)
        calls: dict[str, list[float]] = {k: [] for k in names}
        rounds: dict[str, list[float]] = {k: [] for k in names}
        guided: dict[str, list[float]] = {k: [] for k in names if k.startswith("envactor")}
        for r in range(args.repeats):  # interleaved, so load changes hit every server alike
            for k in names[r % len(names) :] + names[: r % len(names)]:
                got = openpi_overhead_ms(ports[k], args.requests)
                calls[k] += got
                rounds[k].append(statistics.median(got))
                if k in guided:
                    guided[k] += guided_ms(ports[k], 20)
    stats = {k: (statistics.median(calls[k]), min(rounds[k])) for k in names}
    for k in names:
        p90 = statistics.quantiles(calls[k], n=10)[8]
        print(f"overhead {k:24s}: median {stats[k][0]:.3f} ms  best round {stats[k][1]:.3f} ms  "
              f"p90 {p90:.3f} ms  ({len(calls[k])} calls in {args.repeats} rounds)")  # fmt: skip
    for k, got in guided.items():
        print(f"guided round trip {k:19s}: median {statistics.median(got):.3f} ms  (envactor's "
              f"client, prev_action + est_delay, {len(got)} requests)")  # fmt: skip
    for k in names[1:]:
        goal = " (goal <= 1.00x)" if k == theirs else ""
        print(f"overhead ratio envactor/{k}: median {stats['envactor'][0] / stats[k][0]:.2f}x  "
              f"best round {stats['envactor'][1] / stats[k][1]:.2f}x{goal}")  # fmt: skip


def batching_gain(args: argparse.Namespace) -> None:
    """Print the flow policy's throughput with batching on at 1 vs ``--clients`` clients."""
    one, many, batch = 0.0, 0.0, 0.0
    with Served("flow", args.device, 16, args.batch_timeout_ms) as port:
        for _ in range(args.repeats):
            one = max(one, throughput(port, 1, args.seconds)[0])
            rate, mean_batch = throughput(port, args.clients, args.seconds)
            if rate > many:
                many, batch = rate, mean_batch
    print(f"batching flow: 1 client {one:6.0f} req/s  {args.clients} clients {many:6.0f} req/s "
          f"(mean batch {batch:.1f})  gain {many / one:.2f}x (goal >= 2.5x)")  # fmt: skip


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
    ap.add_argument("--policy", nargs="*", default=["mlp", "flow"], choices=["mlp", "flow"])
    ap.add_argument(
        "--no-overhead",
        dest="overhead",
        action="store_false",
        help="skip the openpi-client overhead comparison and the batching gain",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=300, help="latency samples per repeat")
    ap.add_argument("--seconds", type=float, default=2.0, help="per throughput measurement")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (best, median)")
    ap.add_argument("--batch-timeout-ms", type=float, default=2.0)
    ap.add_argument(
        "--openpi-server",
        metavar="FILE",
        help="openpi's src/openpi/serving/websocket_policy_server.py (a checkout of openpi): "
        "compare against openpi's own server instead of the minimal reference",
    )
    ap.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="also run envactor's server imported from this source tree (before/after)",
    )
    args = ap.parse_args()

    if args.overhead:
        overhead(args)
        batching_gain(args)

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
