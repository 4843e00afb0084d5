"""``envactor eval`` and ``envactor collect``: their arguments and what they run (registered as
commands by ``envactor.cli``)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

from envactor.argtypes import env_opt, executor_opt
from envactor.runtime.cli_args import number

__all__ = ["add_collect_args", "add_eval_args", "env_kwargs_from", "run_collect", "run_eval"]

positive_int = number(int, ge=1)
non_negative_int = number(int, ge=0)
non_negative_float = number(float, ge=0)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr: on unless ``--no-progress`` or stderr is not a terminal."""
    return not args.no_progress and sys.stderr.isatty()


def env_kwargs_from(args: argparse.Namespace) -> dict[str, Any]:
    """``gymnasium.make`` keywords: ``--env-opt``, ``--action-noise``, ``--max-episode-steps``."""
    kwargs: dict[str, Any] = dict(args.env_opt)
    flags = {"action_noise_std": "--action-noise", "max_episode_steps": "--max-episode-steps"}
    for key, flag in flags.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None:
            continue
        if key in kwargs:
            raise ValueError(f"--env-opt {key}={kwargs[key]} and {flag} {value} both set {key}")
        kwargs[key] = value
    return kwargs


def executor_kwargs_from(args: argparse.Namespace) -> dict[str, Any]:
    """``--executor-opt`` as the executor's keywords, checked against what its class takes."""
    import inspect

    from envactor.runtime.executors import EXECUTORS

    opts: dict[str, Any] = dict(args.executor_opt)
    if not opts:
        return {}
    cls = EXECUTORS.get(args.executor)
    known = {
        name
        for klass in cls.__mro__
        if "__init__" in vars(klass)
        for name, p in inspect.signature(vars(klass)["__init__"]).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in ("self", "policy")
    }
    flags = {"delay": "--delay", "n_action_steps": "--n-action-steps"}
    for key in opts:
        if key in flags:
            raise ValueError(f"--executor-opt {key}: give it as {flags[key]}")
        if key not in known:
            raise ValueError(
                f"--executor-opt {key}: executor {args.executor!r} takes "
                f"{sorted(known - set(flags))}; got {key!r}"
            )
    return opts


def _checkpoint_shown(policy: str) -> str:
    """``policy`` as a result names it: a checkpoint as the folder that was loaded (a run's
    ``checkpoints/last`` or a step directory as its ``policy/`` checkpoint, a LeRobot training
    step folder as its ``pretrained_model/``), else as given."""
    from envactor.checkpoint import refers_to_checkpoint, resolve_checkpoint_dir
    from envactor.interop.lerobot import lerobot_checkpoint_dir

    lerobot = lerobot_checkpoint_dir(policy)
    if lerobot is not None:
        return str(lerobot.resolve())
    if not refers_to_checkpoint(policy):
        return policy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loading already warned about a recovered save
        try:
            return str(resolve_checkpoint_dir(policy).resolve())
        except (OSError, ValueError, RuntimeError):
            return policy


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a policy on a task with one executor and delay; print the settings, the policy
    (a checkpoint as the folder loaded) and the result."""
    from envactor.envs import check_env_id
    from envactor.runtime.evaluate import evaluate

    check_env_id(args.env)
    result = evaluate(
        args.policy, args.env, num_envs=args.num_envs, num_episodes=args.episodes,
        executor=args.executor, delay=args.delay, seed=args.seed,
        n_action_steps=args.n_action_steps, vectorization=args.vectorization,
        executor_kwargs=executor_kwargs_from(args), env_kwargs=env_kwargs_from(args),
        device=args.device, overrides=args.override, progress=_progress(args),
    )  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    from envactor.console import new_table, print_table

    print(result.settings_line())
    print(f"policy: {_checkpoint_shown(args.policy)}")
    table = new_table(f"{args.env}: {args.policy}", {"metric": "left", "value": "right"})
    for key, value in result.summary().items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    print_table(table)
    return 0


def _add_env_args(p: argparse.ArgumentParser) -> None:
    """``--action-noise`` and ``--env-opt``: how the env is made."""
    p.add_argument(
        "--action-noise",
        type=non_negative_float,
        default=None,
        metavar="STD",
        help="std of the Gaussian noise the embedded envactor/... tasks add to each action "
        "(their action_noise_std; envactor demo uses 0.1); default: the task's, 0",
    )
    p.add_argument(
        "--env-opt",
        type=env_opt,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword for gymnasium.make, VALUE read as a YAML scalar; repeatable (default: none)",
    )


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``envactor eval``."""
    from envactor.runtime.executors import EXECUTORS

    p.add_argument(
        "policy",
        help="checkpoint dir, LeRobot pretrained_model folder, policy YAML or registered name",
    )
    p.add_argument(
        "--env",
        required=True,
        help="gymnasium id, e.g. envactor/PendulumSwingUp-v0 or gym_pusht/PushT-v0",
    )
    p.add_argument("--num-envs", type=positive_int, default=8, help="parallel envs")
    p.add_argument("--episodes", type=positive_int, default=32, help="episodes to run")
    p.add_argument("--executor", default="sync", choices=EXECUTORS.names(), help="chunk executor")
    p.add_argument(
        "--delay", type=non_negative_int, default=0, help="simulated inference delay d (steps)"
    )
    p.add_argument(
        "--n-action-steps",
        type=positive_int,
        default=None,
        help="s, actions executed per chunk (default: the policy's n_action_steps)",
    )
    p.add_argument(
        "--executor-opt",
        type=executor_opt,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="executor setting, VALUE read as a YAML scalar (bid: num_samples=8, "
        "weak=CKPT_DIR); repeatable (default: none)",
    )
    _add_env_args(p)
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="episode j uses env seed SEED + j"
    )
    p.add_argument("--vectorization", choices=["sync", "async"], default="sync")
    p.add_argument(
        "--max-episode-steps",
        type=positive_int,
        default=None,
        help="episode length cap (default: the env's)",
    )
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--override", "-o", action="append", default=[], help="dotted key=value")
    p.add_argument(
        "--json", action="store_true", help="print settings, summary and episodes as JSON"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run_collect(args: argparse.Namespace) -> int:
    """Write expert demonstrations of a task as a dataset."""
    from envactor.runtime.collect import collect

    res = collect(
        args.task, episodes=args.episodes, out=args.out, num_envs=args.num_envs, seed=args.seed,
        policy=args.policy, overwrite=args.overwrite, progress=_progress(args),
        env_kwargs=env_kwargs_from(args),
    )  # fmt: skip
    rate = "n/a" if res.success_rate is None else f"{res.success_rate:.2f}"
    print(f"wrote {res.episodes} episodes ({res.frames} frames) to {res.root}; success {rate}")
    return 0


def add_collect_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``envactor collect``."""
    p.add_argument("task", help="embedded task id, e.g. envactor/PendulumSwingUp-v0")
    p.add_argument("--episodes", type=positive_int, required=True, help="episodes to record")
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--num-envs", type=positive_int, default=8, help="parallel envs")
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="episode j uses env seed SEED + j"
    )
    p.add_argument(
        "--policy", default=None, help="collect with this policy (default: the task's expert)"
    )
    _add_env_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out dataset")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
