"""Real-time controller under inference load: control-period jitter, deadlines, latency, delays.

Runs :class:`RealtimeController` at ``--hz`` for ``--seconds`` on a simulated Pendulum (threaded
physics clock) with a policy that costs real time per chunk, and prints one row per
configuration:

- ``idle``: the control loop timing alone (a policy that costs nothing), the floor;
- ``thread``: the controller as shipped (inference thread, GIL switch interval as configured);
- ``thread-5ms``: the same with Python's default 5 ms GIL switch interval;
- ``process-floor``: the same sleep-to-grid control loop in a child process while this process
  runs one inference every s_min periods (the controller's inference duty): the jitter a
  process split (control and inference in separate interpreters, no GIL shared) could reach.

Policies: ``flow`` (flow matching, guided RTC sampling with the true VJP: about 10-35 ms per
chunk on a small CPU), ``mlp`` (mlp_chunk, ~1 ms) and ``burn`` (a Python busy loop of
``--burn-ms`` per chunk that holds the GIL the whole time: the worst case for threads).
Configurations run interleaved ``--repeats`` times so machine load hits them alike.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_realtime.py [--hz 50] [--seconds 5]
        [--repeats 3] [--policy flow|mlp|burn] [--executor rtc] [--torch-threads N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from _common import pendulum_policy

from envactor import Policy
from envactor.runtime.realtime.controller import RealtimeController
from envactor.runtime.realtime.robot import SimulatedRobot
from envactor.runtime.realtime.telemetry import percentiles_ms

STATE = "observation.state"


class Burn(Policy):
    """Zero chunks after ``burn_ms`` of pure-Python work (holds the GIL throughout)."""

    trainable = False

    def __init__(self, burn_ms: float, **params: Any) -> None:
        super().__init__(None, None, **params)
        self.burn_s = burn_ms / 1e3

    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: Any) -> torch.Tensor:
        end = time.perf_counter() + self.burn_s
        x = 0
        while time.perf_counter() < end:
            x += 1
        return torch.zeros(len(env_ids), *self.action_shape)


def make_policy(kind: str, burn_ms: float) -> Policy:
    if kind == "burn":
        return Burn(
            burn_ms,
            input_features={STATE: {"shape": [3], "norm": "identity"}},
            action_dim=1, horizon=8, n_action_steps=4, action_norm="identity",
        )  # fmt: skip
    return pendulum_policy("flow" if kind == "flow" else "mlp_chunk")


def run_controller(
    policy: Policy, hz: float, seconds: float, executor: str, switch_interval: float | None
) -> dict[str, Any]:
    robot = SimulatedRobot(gym.make("Pendulum-v1"), hz, threaded=True)
    # limits=None: the health limits would stop a run whose policy is slow on purpose (burn)
    ctrl = RealtimeController(
        policy, robot, hz=hz, executor=executor, switch_interval=switch_interval,
        max_obs_age=None, limits=None,
    )  # fmt: skip
    tel = ctrl.run(seconds).to_dict()
    if tel["stop_reason"] != "duration":  # a safe stop: its row would describe a shorter run
        print(f"warning: a run stopped early ({tel['stop_reason']}: {tel['error']})")
    return tel


def _grid_loop(hz: float, seconds: float, out: Any, ready: Any) -> None:
    """Child process: sleep to a fixed grid and record lateness (the control loop's timing)."""
    ready.set()
    period, origin = 1.0 / hz, time.monotonic()
    late = []
    for k in range(int(seconds * hz)):
        scheduled = origin + k * period
        now = time.monotonic()
        if now < scheduled:
            time.sleep(scheduled - now)
            now = time.monotonic()
        late.append(now - scheduled)
    out.put(late)


def process_floor(policy: Policy, hz: float, seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q, ready = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_grid_loop, args=(hz, seconds, q, ready))
    obs = {STATE: np.zeros((1, 3), np.float32)}
    s = policy.params.n_action_steps
    prev = [np.zeros((policy.params.horizon - s, 1), np.float32)]
    child.start()
    ready.wait()  # the child has imported everything: measure from its first period
    lat = []
    next_t = time.monotonic()
    while child.is_alive() and q.empty():
        t0 = time.monotonic()
        policy.guided_inference(obs, prev_chunk=prev, delay=[1])
        lat.append(time.monotonic() - t0)
        next_t += s / hz
        time.sleep(max(0.0, next_t - time.monotonic()))
    late = q.get()
    child.join()
    return {"jitter_ms": percentiles_ms(late), "inference_ms": percentiles_ms(lat)}


def _fmt(p: dict[str, float | None]) -> str:
    return "/".join("-" if v is None else f"{v:.2f}" for v in p.values())


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median p99 jitter (so one row is one real run, not a blend)."""
    return sorted(runs, key=lambda d: d["jitter_ms"]["p99"])[len(runs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hz", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=5.0, help="per run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per config")
    ap.add_argument("--policy", choices=["flow", "mlp", "burn"], default="flow")
    ap.add_argument("--burn-ms", type=float, default=30.0)
    ap.add_argument("--executor", default="rtc")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    policy = make_policy(args.policy, args.burn_ms)
    configs: list[tuple[str, Policy, float | None]] = [
        ("idle", make_policy("burn", 0.0), 0.001),
        ("thread", policy, 0.001),
        ("thread-5ms", policy, None),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in configs}
    runs["process-floor"] = []
    for _ in range(args.repeats):  # interleaved, so machine load hits every config alike
        for name, pol, si in configs:
            runs[name].append(run_controller(pol, args.hz, args.seconds, args.executor, si))
        runs["process-floor"].append(process_floor(policy, args.hz, args.seconds))
    print(
        f"{args.policy} policy, {args.executor}, {args.hz:g} Hz, {args.seconds:g} s x "
        f"{args.repeats} runs per config (row = the run with the median p99 jitter), "
        f"torch threads {torch.get_num_threads()}"
    )
    head = (
        f"{'config':<14} {'jitter ms p50/p99/max':>22} {'missed':>6} {'infer ms p50/p99/max':>22}"
    )
    print(head + f" {'switches':>8} {'d fcst/act':>10} {'held':>5}")
    for name, _, _ in configs:
        d = _median_row(runs[name])
        dl = d["delay"]
        fa = f"{dl['forecast_mean'] or 0:.2f}/{dl['actual_mean'] or 0:.2f}"
        print(
            f"{name:<14} {_fmt(d['jitter_ms']):>22} {d['missed_deadlines']:>6} "
            f"{_fmt(d['inference_ms']):>22} {d['chunk_switches']:>8} {fa:>10} {d['held_steps']:>5}"
        )
    pf = _median_row(runs["process-floor"])
    print(
        f"{'process-floor':<14} {_fmt(pf['jitter_ms']):>22} {'-':>6} {_fmt(pf['inference_ms']):>22}"
    )
    p99 = {name: [r["jitter_ms"]["p99"] for r in rs] for name, rs in runs.items()}
    print("p99 jitter of every run (ms):", {k: [round(v, 2) for v in vs] for k, vs in p99.items()})


if __name__ == "__main__":
    main()
