"""``envactor`` command line. Each subcommand imports what it needs when it runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Handler, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(
    name: str, help: str
) -> Callable[
    [Callable[[argparse.ArgumentParser], None]], Callable[[argparse.ArgumentParser], None]
]:
    """Register ``add_args(parser)`` for subcommand ``name``; its handler is ``run_<name>``."""

    def deco(
        add_args: Callable[[argparse.ArgumentParser], None],
    ) -> Callable[[argparse.ArgumentParser], None]:
        handler = globals()["run_" + name.replace("-", "_")]
        _COMMANDS[name] = (handler, add_args, help)
        return add_args

    return deco


# ---------------------------------------------------------------------------- policies / info
def run_policies(args: argparse.Namespace) -> int:
    """One line per registered policy (built-ins imported, plugins listed)."""
    from envactor.registry import POLICY_REGISTRY, RegistryError

    for name in POLICY_REGISTRY.names():
        try:
            cls = POLICY_REGISTRY.get(name)
        except (RegistryError, ImportError) as exc:
            print(f"{name:<16} (failed to load: {exc})")
            continue
        doc = (cls.__doc__ or "").strip().splitlines()
        guided = "guided" if cls.can_guide() else "blend"
        print(f"{name:<16} [{guided}] {doc[0] if doc else ''}")
    return 0


@command("policies", "list registered policies")
def _policies_args(p: argparse.ArgumentParser) -> None:
    pass


def run_info(args: argparse.Namespace) -> int:
    """Summary of a checkpoint directory."""
    from envactor.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.ckpt)
    cfg = ckpt.config
    params = cfg.get("policy", {}).get("params", {})
    info: dict[str, Any] = {
        "path": str(Path(args.ckpt).resolve()),
        "policy": cfg.get("policy", {}).get("type"),
        "components": {
            name: {
                "type": cfg.get("model", {}).get("components", {}).get(name, {}).get("type"),
                "parameters": int(sum(t.numel() for t in sd.values())),
            }
            for name, sd in ckpt.component_state.items()
        },
        "input_features": params.get("input_features", {}),
        "action": {"horizon": params.get("horizon"), "action_dim": params.get("action_dim")},
        "stats_keys": sorted(ckpt.normalizer.modes) if ckpt.normalizer else [],
        "meta": {k: v for k, v in ckpt.meta.items() if k != "sha256"},
    }
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"checkpoint  {info['path']}")
    print(
        f"policy      {info['policy']}  (H={params.get('horizon')}, A={params.get('action_dim')})"
    )
    total = 0
    for name, c in info["components"].items():
        total += c["parameters"]
        print(f"  {name:<20} {c['type'] or '?':<26} {c['parameters']:>12,d} params")
    print(f"  {'total':<47} {total:>12,d} params")
    for key, spec in info["input_features"].items():
        print(
            f"feature     {key:<28} shape={spec.get('shape')} dtype={spec.get('dtype', 'float32')}"
        )
    print(f"stats       {', '.join(info['stats_keys']) or '(none)'}")
    m = info["meta"]
    print(
        f"versions    envactor={m.get('envactor_version')} torch={m.get('torch_version')} "
        f"step={m.get('step')} weight_version={m.get('weight_version')}"
    )
    return 0


@command("info", "print a checkpoint summary")
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="checkpoint directory")
    p.add_argument("--json", action="store_true", help="print JSON")


# ---------------------------------------------------------------------------- eval
def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a policy on a task with one executor and delay; print or emit JSON."""
    from envactor.runtime.evaluate import evaluate

    env_kwargs: dict[str, Any] = {}
    if args.max_episode_steps:
        env_kwargs["max_episode_steps"] = args.max_episode_steps
    result = evaluate(
        args.policy, args.env, num_envs=args.num_envs, num_episodes=args.episodes,
        executor=args.executor, delay=args.delay, seed=args.seed,
        n_action_steps=args.n_action_steps, vectorization=args.vectorization,
        env_kwargs=env_kwargs, device=args.device, overrides=args.override,
        progress=not (args.no_progress or args.json),
    )  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.env}: {args.policy}")
    row = result.summary()
    for col in row:
        table.add_column(col)
    table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()])
    Console().print(table)
    return 0


@command("eval", "evaluate a policy across parallel envs")
def _eval_args(p: argparse.ArgumentParser) -> None:
    from envactor.runtime.executors import EXECUTORS

    p.add_argument("policy", help="checkpoint dir, policy YAML or registered policy name")
    p.add_argument("--env", required=True, help="gymnasium id, e.g. envactor/PendulumSwingUp-v0")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--executor", default="sync", choices=EXECUTORS.names())
    p.add_argument("--delay", type=int, default=0, help="simulated inference delay d (steps)")
    p.add_argument("--n-action-steps", type=int, default=None, help="s (default: the policy's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vectorization", choices=["sync", "async"], default="sync")
    p.add_argument("--max-episode-steps", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--override", "-o", action="append", default=[], help="dotted key=value")
    p.add_argument("--json", action="store_true", help="print per-episode metrics as JSON")
    p.add_argument("--no-progress", action="store_true")


# ---------------------------------------------------------------------------- collect / train
def run_collect(args: argparse.Namespace) -> int:
    """Write expert demonstrations of a task as a dataset."""
    from envactor.runtime.collect import collect

    res = collect(
        args.task, episodes=args.episodes, out=args.out, num_envs=args.num_envs, seed=args.seed,
        policy=args.policy, overwrite=args.overwrite, progress=not args.no_progress,
    )  # fmt: skip
    rate = "n/a" if res.success_rate is None else f"{res.success_rate:.2f}"
    print(f"wrote {res.episodes} episodes ({res.frames} frames) to {res.root}; success {rate}")
    return 0


@command("collect", "collect demonstrations with a task's expert")
def _collect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="embedded task id, e.g. envactor/PendulumSwingUp-v0")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", default=None, help="collect with this policy instead of the expert")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def run_train(args: argparse.Namespace) -> int:
    """Behaviour cloning (see envactor.train)."""
    from envactor.train.cli import run_train as _run

    return _run(args)


@command("train", "train a policy on a demonstration dataset")
def _train_args(p: argparse.ArgumentParser) -> None:
    from envactor.train.cli import add_train_args

    add_train_args(p)


# ---------------------------------------------------------------------------- demo
def run_demo(args: argparse.Namespace) -> int:
    """Collect, train, evaluate every executor under delay; write runs/demo/."""
    import torch

    from envactor.demo import DemoSettings
    from envactor.demo import run_demo as _run

    # One intra-op thread by default: these nets are small, and OpenMP threads spinning against
    # any other load on a 2-core machine made training 10-20x slower in our measurements.
    torch.set_num_threads(args.threads)
    kw: dict[str, Any] = {"out": Path(args.out), "seed": args.seed}
    settings = DemoSettings.quick(**kw) if args.quick else DemoSettings(**kw)
    _run(settings, progress=not args.no_progress)
    print(f"results in {settings.out}/ (results.csv, results.json, success_vs_delay.png, policy/)")
    return 0


@command("demo", "the main job: collect, train and evaluate chunk executors under delay")
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a smoke-test sized run (< 2 minutes)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


# ---------------------------------------------------------------------------- online (Ray)
def run_train_online(args: argparse.Namespace) -> int:
    """DAgger on Ray rollout workers with versioned weight streaming."""
    from envactor.distributed.cli import run_online

    return run_online(args)


@command("train-online", "online learning (DAgger) on Ray rollout workers, weights by version")
def _online_args(p: argparse.ArgumentParser) -> None:
    from envactor.distributed.cli import add_online_args

    add_online_args(p)


# ---------------------------------------------------------------------------- serve / run
def run_serve(args: argparse.Namespace) -> int:
    """Serve a policy over WebSocket (openpi wire format)."""
    from envactor.runtime.server import run_serve as _run

    return _run(args)


@command("serve", "serve a policy over WebSocket (openpi wire format)")
def _serve_args(p: argparse.ArgumentParser) -> None:
    from envactor.runtime.server import add_serve_args

    add_serve_args(p)


def run_run(args: argparse.Namespace) -> int:
    """Run a policy in real time on a simulated robot."""
    from envactor.runtime.realtime_cli import run_run as _run

    return _run(args)


@command("run", "run a policy in real time (control and inference loops) on a simulated robot")
def _run_args(p: argparse.ArgumentParser) -> None:
    from envactor.runtime.realtime_cli import add_run_args

    add_run_args(p)


# ---------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    """The ``envactor`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="envactor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_args, help_text) in _COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``envactor`` command line; errors print one clear line and exit 2."""
    args = build_parser().parse_args(argv)
    handler = _COMMANDS[args.command][0]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"envactor {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
