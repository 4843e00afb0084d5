"""``envactor train-online TASK --workers N``: DAgger on Ray rollout workers (see dagger.py)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from envactor.distributed.dagger import OnlineSettings, train_online

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


def add_online_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``envactor train-online``."""
    defaults = OnlineSettings()
    kinds = {f.name: f.type for f in fields(OnlineSettings)}
    p.add_argument("task", nargs="?", default=defaults.task, help=f"default {defaults.task}")
    p.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="Ray rollout workers; 0 runs the same loop in this process, no Ray",
    )
    p.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster ('auto' or host:port); default: start a local one",
    )
    p.add_argument("--out", default=str(defaults.out))
    p.add_argument(
        "--init",
        default=None,
        help="starting checkpoint; default: behaviour cloning on --init-demos episodes",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/state.json (last checkpoint and weight version)",
    )
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (learner)")
    p.add_argument("--no-progress", action="store_true")
    for name in _FLAGS:
        kind = {"int": int, "float": float}.get(str(kinds[name]), str)
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
    }  # fmt: skip
    kw.update({k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None})
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    settings = OnlineSettings.quick(**kw) if args.quick else OnlineSettings(**kw)
    rows = train_online(settings, progress=not args.no_progress)
    first, last = rows[0]["eval_success"], rows[-1]["eval_success"]
    print(
        f"eval success: version {rows[0]['version']} {first} -> version "
        f"{rows[-1]['version']} {last}; curve in {settings.out}/ (curve.csv, curve.png)"
    )
    return 0
