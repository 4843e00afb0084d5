"""``envactor run TASK --ckpt DIR --hz 50 --seconds 30``: the real-time controller on a simulated
robot, or on a LeRobot robot (``--robot TYPE`` / ``--robot-module MOD:CLASS``), with its
telemetry printed as a table (and written as JSON with ``--json OUT``). ``--dry-run`` never
writes an action, ``--record ROOT`` records the run as a LeRobot v3.0 dataset, ``--log DIR``
writes every step (CSV), the telemetry and a plot.

Exit codes: 0 when the run ended normally and kept its health limits, 1 when it ran but failed
(a safe stop, or a health limit passed; one line on stderr says why), 2 for a usage error
(raised while parsing, or by the handler for ``main()`` to print as one line).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from envactor.runtime.cli_args import OFF, number, or_off
from envactor.runtime.executors import EXECUTORS
from envactor.runtime.realtime.run_parts import AUTO, LIMIT_FLAGS

__all__ = ["LIMIT_FLAGS", "add_run_args", "run_run"]


def _auto_or_off(what: str) -> Callable[[str], float | str | None]:
    """An argparse type: a finite number > 0, ``auto`` (returned as is) or ``off`` (None);
    ``what`` names the number in the error."""

    def parse(text: str) -> float | str | None:
        word = text.strip().lower()
        if word in (AUTO, OFF):
            return AUTO if word == AUTO else None
        try:
            return number(gt=0)(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected {what}, {AUTO!r} or {OFF!r}, got {text!r}"
            ) from None

    return parse


_obs_age = _auto_or_off("seconds (a finite number > 0)")
"""``--max-obs-age``: seconds, ``auto`` (max(0.1 s, 5 periods)) or ``off`` (no check)."""
_max_delta = _auto_or_off("a finite number > 0")
"""``--max-delta``: action units per step, ``auto`` (robots: 10% of each dim's action range)
or ``off``."""


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``envactor run``."""
    positive = number(gt=0)
    p.add_argument(
        "task", nargs="?", default=None,
        help="gymnasium id of a simulated robot, e.g. envactor/PendulumSwingUp-v0 (or give "
        "--robot / --robot-module; default: none)",
    )  # fmt: skip
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
        "--max-delta", type=_max_delta, default=AUTO, metavar="DELTA|auto|off",
        help="slew-rate limit per step in action units; 'auto' is 10%% of each dim's action "
        "range on a robot and none on a simulated task (default: auto)",
    )  # fmt: skip
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
    r = p.add_argument_group(
        "robots (LeRobot's robot API; see docs/robots.md)",
        "--robot or --robot-module instead of TASK drives a LeRobot Robot; LeRobot must be "
        "installed",
    )
    r.add_argument(
        "--robot", metavar="TYPE", default=None,
        help="a LeRobot robot type, as LeRobot's --robot.type takes it (so101_follower, "
        "koch_follower, lekiwi, ...) (default: none)",
    )  # fmt: skip
    r.add_argument(
        "--robot-module", metavar="MODULE:CLASS", default=None,
        help="a LeRobot Robot subclass of your own: pkg.module:Class or path/file.py:Class "
        "(default: none)",
    )  # fmt: skip
    r.add_argument(
        "--robot-opt", metavar="KEY=VALUE", action="append", default=[],
        help="a field of the robot's config, as LeRobot's --robot.KEY=VALUE (port=/dev/ttyACM0, "
        "id=arm, cameras={...}); repeatable (default: none)",
    )  # fmt: skip
    r.add_argument(
        "--limit-margin", type=number(ge=0), default=0.1,
        help="robots: actions are clipped to the checkpoint's action stats [min, max] widened "
        "by this fraction of the range on each side (default 0.1)",
    )  # fmt: skip
    r.add_argument(
        "--dry-run", action="store_true",
        help="read observations and run the policy at the control rate, never write an action "
        "(its would-be actions go to --log; default: off)",
    )  # fmt: skip
    r.add_argument(
        "--record", metavar="ROOT", default=None,
        help="record every step as a LeRobot v3.0 dataset at ROOT (default: not recorded)",
    )  # fmt: skip
    r.add_argument(
        "--record-task", default="", metavar="TEXT",
        help="the task description stored with each recorded episode (default: empty)",
    )  # fmt: skip
    r.add_argument("--overwrite", action="store_true", help="replace an existing --record dataset")
    r.add_argument(
        "--log", metavar="DIR", default=None,
        help="write steps.csv, telemetry.json and actions.png to DIR (default: a --dry-run "
        "writes runs/dry-run-<time>; otherwise none)",
    )  # fmt: skip
    r.add_argument(
        "--episodes", type=number(int, ge=1), default=1,
        help="runs of --seconds each, recorded as that many episodes (default 1)",
    )  # fmt: skip
    r.add_argument(
        "--reset-seconds", type=number(ge=0), default=10.0,
        help="pause between episodes to reset the scene; the robot holds its last command "
        "(default 10)",
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


def run_run(args: argparse.Namespace) -> int:
    """Build the policy and the robot (simulated, or a LeRobot robot), run the session,
    report; 0 when every run ended normally within the health limits, 1 otherwise (the
    reason on stderr, in the table and in the JSON)."""
    from envactor.policy.build import build_policy
    from envactor.runtime.realtime.controller import RealtimeController
    from envactor.runtime.realtime.robot import DryRun, SimulatedRobot
    from envactor.runtime.realtime.run_parts import (
        check_sources,
        lerobot_robot,
        make_recorder,
        report,
    )
    from envactor.runtime.realtime.session import run_session
    from envactor.runtime.realtime.steplog import StepLog

    check_sources(args)
    if args.task:
        from envactor.envs import check_env_id  # importing envactor.envs registers its tasks

        check_env_id(args.task)
    limits = _limits(args)
    policy = build_policy(args.ckpt, device=args.device, overrides=args.override)
    horizon = policy.params.horizon
    if args.s_min is not None and args.s_min > horizon:
        raise ValueError(f"--s-min must be <= the policy's horizon H={horizon}, got {args.s_min}")
    log_dir = args.log
    if log_dir is None and args.dry_run:
        log_dir = f"runs/dry-run-{time.strftime('%Y%m%d-%H%M%S')}"
    with contextlib.ExitStack() as stack:
        if args.task:
            import gymnasium as gym

            env_kwargs: dict[str, Any] = {}
            if args.max_episode_steps:
                env_kwargs["max_episode_steps"] = args.max_episode_steps
            env = gym.make(args.task, **env_kwargs)
            stack.callback(env.close)
            robot: Any = SimulatedRobot(
                env, args.hz, threaded=args.sim_clock == "thread", seed=args.seed
            )
            max_delta = None if args.max_delta == AUTO else args.max_delta
        else:
            robot, max_delta = lerobot_robot(args, policy)
        sim = robot  # the robot itself (a dry run wraps it)
        if args.dry_run:
            robot = DryRun(robot)
        recorder = make_recorder(args, robot) if args.record else None
        if recorder is not None:
            stack.callback(recorder.abort)  # only if the session never starts (closed there)
        ctrl = RealtimeController(
            policy, robot, hz=args.hz, executor=args.executor, s_min=args.s_min,
            delay_buffer=args.delay_buffer, max_delta=max_delta,
            max_obs_age=args.max_obs_age,
            inference_timeout=args.inference_timeout, safe_action=args.safe_action,
            limits=limits,
        )  # fmt: skip
        names = getattr(robot, "action_names", None)
        log = StepLog(names, sent=not args.dry_run) if log_dir else None
        show = not args.no_progress and sys.stderr.isatty()
        with _progress(ctrl, args.seconds * args.episodes, show):
            result = run_session(
                ctrl, args.seconds, episodes=args.episodes, reset_seconds=args.reset_seconds,
                recorder=recorder, log=log, log_dir=log_dir,
                say=lambda line: print(line, file=sys.stderr),
            )  # fmt: skip
    return report(args, policy, sim, robot, result)
