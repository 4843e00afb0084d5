"""The pieces of ``envactor run`` around the session: the flag checks, the LeRobot robot and
its safety limits, the recorder, and the report (table, JSON, exit code)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AUTO", "LIMIT_FLAGS", "check_sources", "lerobot_robot", "make_recorder", "report"]

AUTO = "auto"
"""``--max-obs-age``'s and ``--max-delta``'s default: the controller's own choice."""

LIMIT_FLAGS = {
    "max_held_fraction": "--max-held-fraction",
    "max_missed_chunks": "--max-missed-chunks",
    "max_missed_deadline_fraction": "--max-missed-deadline-fraction",
}
"""Health limit -> the ``envactor run`` flag that sets it."""


def check_sources(args: argparse.Namespace) -> None:
    """Exactly one of TASK, --robot, --robot-module; flags that need one of them."""
    given = [f for f, v in (("TASK", args.task), ("--robot", args.robot),
                            ("--robot-module", args.robot_module)) if v]  # fmt: skip
    if len(given) != 1:
        raise ValueError(
            "give one of TASK (a simulated robot), --robot TYPE or --robot-module MODULE:CLASS"
            + (f"; got {' and '.join(given)}" if given else "")
        )
    if args.robot_opt and args.task:
        raise ValueError("--robot-opt configures a --robot / --robot-module robot, not a TASK")
    if args.record and args.dry_run:
        raise ValueError(
            "--record with --dry-run: a dry run sends no action, so the dataset would pair "
            "observations with actions that never ran; record a live run, and use --log for a "
            "dry run's would-be actions"
        )
    if args.record and float(args.hz) != int(args.hz):
        raise ValueError(f"--record needs an integer --hz (LeRobot datasets), got {args.hz:g}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise FileNotFoundError(
            f"--json {args.json}: the folder {Path(args.json).parent} does not exist"
        )


def lerobot_robot(args: argparse.Namespace, policy: Any) -> tuple[Any, Any]:
    """The LeRobot robot adapter (not connected, checked against the policy) and its
    ``max_delta``; prints the limits it took and the robot features the policy ignores."""
    from envactor.interop.lerobot.robot import LeRobotRobot, check_robot_fits
    from envactor.interop.lerobot.robot_config import make_robot
    from envactor.runtime.realtime.safety import auto_max_delta, limits_from_stats

    stats = policy.normalizer.stats.get("action", {}) if policy.normalizer is not None else {}
    limits = limits_from_stats(stats, args.limit_margin)
    robot = LeRobotRobot(make_robot(args.robot, args.robot_module, args.robot_opt))
    unused = check_robot_fits(policy, robot)  # before the limits: a mismatch names both sides
    delta = args.max_delta
    if limits is None:
        print(
            "envactor run: warning: the checkpoint has no action stats (min/max or q01/q99): "
            "actions are not clipped (only the robot's own limits apply)",
            file=sys.stderr,
        )
        delta = None if delta == AUTO else delta
    else:
        low, high, which = limits
        robot.set_limits(low, high)
        print(f"action limits: {which} of the checkpoint's actions +/- {args.limit_margin:g} "
              f"of the range: low {np.round(low, 4).tolist()}, "
              f"high {np.round(high, 4).tolist()}")  # fmt: skip
        delta = auto_max_delta(low, high) if delta == AUTO else delta
    if unused:
        print(f"robot features the policy does not read (recorded, not used): {unused}")
    return robot, delta


def make_recorder(args: argparse.Namespace, robot: Any) -> Any:
    """The ``--record`` dataset recorder for ``robot``: a LeRobot robot's own features (its
    motor names), else the features of one observation read now."""
    from envactor.data.format import Feature
    from envactor.runtime.realtime.recorder import DatasetRecorder, observation_features

    features = getattr(robot, "features", None)
    if callable(features):  # a LeRobot robot: with its motor names
        obs, action = features(), robot.action_feature()
    else:
        obs = observation_features(robot.read())
        action = Feature(tuple(robot.action_space.shape or (1,)), "float32")
    return DatasetRecorder(
        args.record, obs, action, int(args.hz), task=args.record_task,
        robot_type=getattr(robot, "robot_type", None) or args.task, overwrite=args.overwrite,
    )  # fmt: skip


def _why(tel: Any) -> str:
    """One line: why a run that is not ok failed."""
    if tel.limit is not None:
        flag = LIMIT_FLAGS.get(tel.limit["limit"], "")
        return (f"failed its health check: {tel.stop_reason}: {tel.error} "
                f"(set the limit with {flag}, or --no-limits)")  # fmt: skip
    return f"safe stop: {tel.stop_reason}: {tel.error}"


def report(args: argparse.Namespace, policy: Any, sim: Any, robot: Any, result: Any) -> int:
    """Print the table (and the JSON); the exit code."""
    from envactor.console import new_table, print_table

    if not result.runs:
        why = result.interrupted or result.error or "no run started"
        print(f"envactor run: the session ended before its first run: {why}", file=sys.stderr)
        return 1
    tel = result.runs[-1]
    finished = getattr(sim, "episodes", len(result.runs))
    summary = {
        "task": args.task or args.robot or args.robot_module,
        "policy": str(args.ckpt),
        **tel.to_dict(),
        "episodes": finished,
        "returns": list(getattr(sim, "returns", [])),
        "runs": [t.to_dict() for t in result.runs],
        "dry_run": bool(args.dry_run),
        "dataset": str(result.dataset) if result.dataset else None,
        "log": [str(f) for f in result.log_files],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    dry = " (DRY RUN)" if args.dry_run else ""
    title = f"envactor run {summary['task']}: {policy.name}{dry}"
    table = new_table(title, {"metric": "left", "value": "left"})
    for key, value in tel.rows():
        table.add_row(key, value)
    if args.task:
        table.add_row("episodes finished", str(finished))
    if len(result.runs) > 1 or args.episodes > 1:
        why = f" (ended by {result.interrupted})" if result.interrupted else ""
        table.add_row("runs", f"{len(result.runs)} of {args.episodes}{why}")
    if args.dry_run:
        table.add_row("actions sent", f"none (dry run: {robot.would_be} would-be actions)")
    if result.dataset is not None:
        table.add_row("recorded", str(result.dataset))
    if result.log_files:
        table.add_row("log", str(Path(result.log_files[0]).parent))
    print_table(table)
    if result.ok:
        return 0
    if result.error:
        print(f"envactor run: {result.error}", file=sys.stderr)
    if not tel.ok:
        print(f"envactor run: {_why(tel)}", file=sys.stderr)
    return 1
