"""``envactor run TASK --ckpt DIR --hz 50 --seconds 30``: the real-time controller on a simulated
robot, with its telemetry printed as a table (and written as JSON with ``--json OUT``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from envactor.runtime.realtime import EXECUTORS


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``envactor run``."""
    p.add_argument("task", help="gymnasium id, e.g. envactor/PendulumSwingUp-v0 or Pendulum-v1")
    p.add_argument(
        "--ckpt", required=True, help="checkpoint dir, policy YAML or registered policy name"
    )
    p.add_argument("--hz", type=float, default=50.0, help="control rate (default 50)")
    p.add_argument("--seconds", type=float, default=30.0, help="run length (default 30)")
    p.add_argument("--executor", default="rtc", choices=EXECUTORS)
    p.add_argument("--s-min", type=int, default=None, help="s_min (default: the policy's s)")
    p.add_argument("--delay-buffer", type=int, default=10, help="delays the forecast maxes over")
    p.add_argument("--max-delta", type=float, default=None, help="slew-rate limit per step")
    p.add_argument(
        "--max-obs-age", type=float, default=None, help="stale-observation limit in seconds"
    )
    p.add_argument("--inference-timeout", type=float, default=None, help="stall deadline (s)")
    p.add_argument("--safe-action", choices=["hold", "zeros"], default="hold")
    p.add_argument(
        "--sim-clock",
        choices=["thread", "controller"],
        default="thread",
        help="simulated robot stepped by its own physics thread or by each controller write",
    )
    p.add_argument("--max-episode-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--override", "-o", action="append", default=[], help="dotted key=value")
    p.add_argument("--json", metavar="OUT", default=None, help="write the telemetry as JSON")


def run_run(args: argparse.Namespace) -> int:
    """Build the policy and the simulated robot, run, report; 0 on a normal stop, 1 on a safe
    stop (the reason is in the table and the JSON)."""
    import gymnasium as gym

    import envactor.envs  # noqa: F401  (registers the embedded envactor/... tasks)
    from envactor.policy.build import build_policy
    from envactor.runtime.realtime import RealtimeController
    from envactor.runtime.realtime_robot import SimulatedRobot

    policy = build_policy(args.ckpt, device=args.device, overrides=args.override)
    env_kwargs: dict[str, Any] = {}
    if args.max_episode_steps:
        env_kwargs["max_episode_steps"] = args.max_episode_steps
    env = gym.make(args.task, **env_kwargs)
    robot = SimulatedRobot(env, args.hz, threaded=args.sim_clock == "thread", seed=args.seed)
    ctrl = RealtimeController(
        policy, robot, hz=args.hz, executor=args.executor, s_min=args.s_min,
        delay_buffer=args.delay_buffer, max_delta=args.max_delta,
        max_obs_age=args.max_obs_age if args.max_obs_age is not None else "auto",
        inference_timeout=args.inference_timeout, safe_action=args.safe_action,
    )  # fmt: skip
    try:
        tel = ctrl.run(args.seconds)
    finally:
        env.close()
    report = {
        "task": args.task,
        "policy": str(args.ckpt),
        **tel.to_dict(),
        "episodes": robot.episodes,
        "returns": robot.returns,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"envactor run {args.task}: {policy.name}")
    table.add_column("metric")
    table.add_column("value")
    for key, value in tel.rows():
        table.add_row(key, value)
    table.add_row("episodes finished", str(robot.episodes))
    Console().print(table)
    return 0 if tel.ok else 1
