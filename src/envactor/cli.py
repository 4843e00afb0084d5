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
    from envactor.policy.policies import builtin_names
    from envactor.registry import POLICY_REGISTRY, RegistryError

    for name in sorted(set(builtin_names()) | set(POLICY_REGISTRY.names())):
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
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"envactor {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
