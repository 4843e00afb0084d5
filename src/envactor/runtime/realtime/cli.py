"""``envactor run TASK --ckpt DIR --hz 50 --seconds 30``: the real-time controller on a simulated
robot, with its telemetry printed as a table (and written as JSON with ``--json OUT``).

Exit codes: 0 when the run ended normally and kept its health limits, 1 when it ran but failed
(a safe stop, or a health limit passed; one line on stderr says why), 2 for a usage error
(raised while parsing, or by the handler for ``main()`` to print as one line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from envactor.runtime.cli_args import OFF, number, or_off
from envactor.runtime.executors import EXECUTORS

__all__ = ["LIMIT_FLAGS", "add_run_args", "run_run"]

LIMIT_FLAGS = {
    "max_held_fraction": "--max-held-fraction",
    "max_missed_chunks": "--max-missed-chunks",
    "max_missed_deadline_fraction": "--max-missed-deadline-fraction",
}
"""Health limit -> the ``envactor run`` flag that sets it."""


AUTO = "auto"
"""``--max-obs-age``'s default: the controller's own limit, max(0.1 s, 5 control periods)."""


def _obs_age(text: str) -> float | str | None:
    """``--max-obs-age``: seconds > 0, ``auto`` or ``off`` (None: no staleness check)."""
    word = text.strip().lower()
    if word in (AUTO, OFF):
        return AUTO if word == AUTO else None
    try:
        return number(gt=0)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected seconds (a finite number > 0), {AUTO!r} or {OFF!r}, got {text!r}"
        ) from None


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``envactor run``."""
    positive = number(gt=0)
    p.add_argument("task", help="gymnasium id, e.g. envactor/PendulumSwingUp-v0 or Pendulum-v1")
    p.add_argument(
        "--ckpt", required=True, help="checkpoint dir, policy YAML or registered policy name"
    )
    p.add_argument("--hz", type=positive, default=50.0, help="control rate (default 50)")
    p.add_argument("--seconds", type=positive, default=30.0, help="run length (default 30)")
    p.add_argument("--executor", default="rtc", choices=EXECUTORS.names(), help="default rtc")
    p.add_argument(
        "--s-min", type=number(int, ge=1), default=None, help="s_min (default: the policy's s)"
    )
    p.add_argument(
        "--delay-buffer", type=number(int, ge=1), default=10,
        help="delays the forecast maxes over (default 10)",
    )  # fmt: skip
    p.add_argument(
        "--max-delta", type=positive, default=None, help="slew-rate limit per step (default none)"
    )
    p.add_argument(
        "--max-obs-age", type=_obs_age, default=AUTO, metavar="SECONDS|auto|off",
        help="stale-observation limit in seconds; 'auto' is max(0.1 s, 5 control periods), "
        "'off' checks none (default: auto)",
    )  # fmt: skip
    p.add_argument(
        "--inference-timeout", type=positive, default=None,
        help="stall deadline in seconds (default max(1, 2 H periods))",
    )  # fmt: skip
    p.add_argument("--safe-action", choices=["hold", "zeros"], default="hold", help="default hold")
    p.add_argument(
        "--sim-clock",
        choices=["thread", "controller"],
        default="thread",
        help="simulated robot stepped by its own physics thread or by each controller write "
        "(default thread)",
    )
    p.add_argument(
        "--max-episode-steps", type=number(int, ge=1), default=None,
        help="episode length (default: the env's)",
    )  # fmt: skip
    p.add_argument("--seed", type=number(int, ge=0), default=0, help="default 0")
    p.add_argument("--device", default="cpu", help="default cpu")
    p.add_argument(
        "--override", "-o", action="append", default=[],
        help="dotted key=value; repeatable (default: none)",
    )  # fmt: skip
    p.add_argument(
        "--json", metavar="OUT", default=None,
        help="write the telemetry as JSON to OUT (default: not written)",
    )  # fmt: skip
    p.add_argument(
        "--no-progress", action="store_true", help="no progress line on stderr (default: shown "
        "when stderr is a terminal)",
    )  # fmt: skip
    g = p.add_argument_group(
        "health limits",
        "a run that passes one stops with exit code 1; 'off' turns one off (see docs/realtime.md)",
    )
    fraction = or_off(number(ge=0, le=1))
    g.add_argument(
        "--max-held-fraction", type=fraction, default=None,
        help="most of the steps that may hold the last action (default 0.2; 0.5 for sync)",
    )  # fmt: skip
    g.add_argument(
        "--max-missed-chunks", type=or_off(number(int, ge=0)), default=None,
        help="most chunks that may run out within --missed-chunk-window seconds (default 5)",
    )  # fmt: skip
    g.add_argument(
        "--missed-chunk-window", type=positive, default=None, help="seconds (default 10)"
    )
    g.add_argument(
        "--max-missed-deadline-fraction", type=fraction, default=None,
        help="most of the steps that may end after the next was due (default 0.2)",
    )  # fmt: skip
    g.add_argument(
        "--limit-grace", type=number(ge=0), default=None,
        help="seconds before the limits are checked at every step (default 1); a shorter "
        "run is judged at its end",
    )  # fmt: skip
    g.add_argument("--no-limits", action="store_true", help="check no health limit")


def _limits(args: argparse.Namespace) -> Any:
    """The ``HealthLimits`` the flags ask for (None with ``--no-limits``)."""
    from envactor.runtime.realtime.health import HealthLimits

    if args.no_limits:
        return None
    given = {
        "max_held_fraction": args.max_held_fraction,
        "max_missed_chunks": args.max_missed_chunks,
        "missed_chunk_window_s": args.missed_chunk_window,
        "max_missed_deadline_fraction": args.max_missed_deadline_fraction,
        "grace_s": args.limit_grace,
    }
    kw: dict[str, Any] = {k: (None if v == OFF else v) for k, v in given.items() if v is not None}
    return HealthLimits(**kw)


@contextlib.contextmanager
def _progress(ctrl: Any, seconds: float, enabled: bool, interval: float = 0.5) -> Iterator[None]:
    """A progress line on stderr (seconds elapsed / total, steps) while the run goes on,
    refreshed every ``interval`` seconds from its own thread."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=seconds, desc="run", leave=False, file=sys.stderr,
               bar_format="{desc} {n:.1f}/{total:.1f} s |{bar}| {postfix}")  # fmt: skip
    stop = threading.Event()
    t0 = time.monotonic()

    def update() -> None:
        while not stop.wait(interval):
            bar.n = min(time.monotonic() - t0, seconds)
            bar.set_postfix_str(f"{ctrl.telemetry.steps} steps", refresh=False)
            bar.refresh()

    thread = threading.Thread(target=update, name="envactor-run-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


def _why(tel: Any) -> str:
    """One line: why a run that is not ok failed."""
    if tel.limit is not None:
        flag = LIMIT_FLAGS.get(tel.limit["limit"], "")
        return (f"failed its health check: {tel.stop_reason}: {tel.error} "
                f"(set the limit with {flag}, or --no-limits)")  # fmt: skip
    return f"safe stop: {tel.stop_reason}: {tel.error}"


def run_run(args: argparse.Namespace) -> int:
    """Build the policy and the simulated robot, run, report; 0 on a normal stop within the
    health limits, 1 otherwise (the reason on stderr, in the table and in the JSON)."""
    import gymnasium as gym

    from envactor.envs import check_env_id  # importing envactor.envs registers its tasks
    from envactor.policy.build import build_policy
    from envactor.runtime.realtime.controller import RealtimeController
    from envactor.runtime.realtime.robot import SimulatedRobot

    check_env_id(args.task)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise FileNotFoundError(
            f"--json {args.json}: the folder {Path(args.json).parent} does not exist"
        )
    limits = _limits(args)
    policy = build_policy(args.ckpt, device=args.device, overrides=args.override)
    horizon = policy.params.horizon
    if args.s_min is not None and args.s_min > horizon:
        raise ValueError(f"--s-min must be <= the policy's horizon H={horizon}, got {args.s_min}")
    env_kwargs: dict[str, Any] = {}
    if args.max_episode_steps:
        env_kwargs["max_episode_steps"] = args.max_episode_steps
    env = gym.make(args.task, **env_kwargs)
    try:
        robot = SimulatedRobot(env, args.hz, threaded=args.sim_clock == "thread", seed=args.seed)
        ctrl = RealtimeController(
            policy, robot, hz=args.hz, executor=args.executor, s_min=args.s_min,
            delay_buffer=args.delay_buffer, max_delta=args.max_delta,
            max_obs_age=args.max_obs_age,
            inference_timeout=args.inference_timeout, safe_action=args.safe_action,
            limits=limits,
        )  # fmt: skip
        show = not args.no_progress and sys.stderr.isatty()
        with _progress(ctrl, args.seconds, show):
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
    from envactor.console import new_table, print_table

    table = new_table(
        f"envactor run {args.task}: {policy.name}", {"metric": "left", "value": "left"}
    )
    for key, value in tel.rows():
        table.add_row(key, value)
    table.add_row("episodes finished", str(robot.episodes))
    print_table(table)
    if tel.ok:
        return 0
    print(f"envactor run: {_why(tel)}", file=sys.stderr)
    return 1
