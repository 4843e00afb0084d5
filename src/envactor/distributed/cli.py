"""``envactor train-online TASK --workers N``: DAgger on Ray rollout workers (see dagger.py).

Every flag is checked while parsing (a bad executor, size, rate or ``--sync-every`` is a
one-line error naming the flag), and the rest (task, ``--init``, ``--n-action-steps`` against
``--horizon``) before Ray starts or anything is trained or written.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from envactor.distributed.dagger import OnlineSettings, check_executor, train_online
from envactor.runtime.cli_args import number

__all__ = ["add_online_args", "run_online"]

_FLAGS = (
    "iterations",
    "episodes_per_iter",
    "eval_episodes",
    "train_steps",
    "init_demos",
    "init_steps",
    "num_envs",
    "batch_size",
    "lr",
    "executor",
    "sync_every",
    "horizon",
    "n_action_steps",
    "action_noise_std",
)


def _executor(text: str) -> str:
    try:
        check_executor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _sync_every(text: str) -> str:
    from envactor.distributed.broadcast import parse_sync_every

    try:
        parse_sync_every(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("sync_every: ")) from None
    return text


_TYPES: dict[str, Callable[[str], Any]] = {
    "iterations": number(int, ge=0),
    "num_envs": number(int, ge=1),
    "eval_episodes": number(int, ge=1),
    "episodes_per_iter": number(int, ge=1),
    "lr": number(gt=0),
    "action_noise_std": number(ge=0),
    "executor": _executor,
    "sync_every": _sync_every,
}
"""Flag types (a bad value is a one-line usage error naming the flag); any other int flag of
``_FLAGS`` is an int >= 1, any other float flag a finite number."""


def add_online_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``envactor train-online``."""
    defaults = OnlineSettings()
    kinds = {f.name: f.type for f in fields(OnlineSettings)}
    p.add_argument("task", nargs="?", default=defaults.task, help=f"default {defaults.task}")
    p.add_argument(
        "--workers",
        type=number(int, ge=0),
        default=defaults.workers,
        help=f"Ray rollout workers; 0 runs the same loop in this process, no Ray "
        f"(default {defaults.workers})",
    )
    p.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster ('auto' or host:port); default: start a local one",
    )
    p.add_argument("--out", default=str(defaults.out), help=f"default {defaults.out}")
    p.add_argument(
        "--init",
        default=None,
        help="starting checkpoint; default: behaviour cloning on --init-demos episodes",
    )
    p.add_argument(
        "--init-data",
        default=None,
        metavar="DIR",
        help="start from behaviour cloning on this dataset (e.g. an `envactor run --record` "
        "recording) instead of --init-demos expert episodes; it also starts the aggregate "
        "(default: none)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/state.json (last checkpoint and weight version)",
    )
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute)")
    p.add_argument(
        "--seed", type=number(int, ge=0), default=defaults.seed, help=f"default {defaults.seed}"
    )
    p.add_argument(
        "--threads", type=number(int, ge=1), default=1,
        help="torch intra-op threads (learner; default 1)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name in _FLAGS:
        default_types: dict[str, Callable[[str], Any]] = {
            "int": number(int, ge=1), "float": number(), "str": str,
        }  # fmt: skip
        kind = _TYPES.get(name) or default_types[str(kinds[name])]
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"default {getattr(defaults, name)}",
        )


def run_online(args: argparse.Namespace) -> int:
    """Build ``OnlineSettings`` from the arguments and run ``train_online``."""
    import torch

    torch.set_num_threads(args.threads)
    kw: dict[str, Any] = {
        "task": args.task, "workers": args.workers, "address": args.address,
        "out": Path(args.out), "seed": args.seed, "resume": args.resume,
        "init": None if args.init is None else Path(args.init),
        "init_data": None if args.init_data is None else Path(args.init_data),
    }  # fmt: skip
    kw.update({k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None})
    settings = OnlineSettings.quick(**kw) if args.quick else OnlineSettings(**kw)
    if settings.n_action_steps > settings.horizon:
        raise ValueError(
            f"--n-action-steps must be <= --horizon ({settings.horizon}), "
            f"got {settings.n_action_steps}"
        )
    if settings.init is not None and not settings.init.exists():
        raise FileNotFoundError(f"--init: checkpoint {settings.init} does not exist")
    from envactor.envs import task_spec

    try:
        task_spec(settings.task)
    except KeyError as exc:  # KeyError quotes its message; say it as written
        raise ValueError(f"TASK: {exc.args[0]}") from None
    settings.check()  # anything left, before Ray starts or anything is written
    rows = train_online(settings, progress=not args.no_progress)
    first, last = rows[0]["eval_success"], rows[-1]["eval_success"]
    print(
        f"eval success: version {rows[0]['version']} {first} -> version "
        f"{rows[-1]['version']} {last}; curve in {settings.out}/ (curve.csv, curve.png)"
    )
    return 0
