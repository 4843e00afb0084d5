"""``envactor`` command line. Each subcommand imports what it needs when it runs."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from envactor.argtypes import DefaultsHelpFormatter, fill_missing_help
from envactor.runtime.cli_args import number

positive_int = number(int, ge=1)
non_negative_int = number(int, ge=0)

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
    """One line per registered policy (built-ins imported, plugins listed): its first docstring
    line, then the hooks it implements (``_guided_chunk``: true RTC, else the blend;
    ``_prefix_chunk``: the ``rtc_trained`` executor)."""
    from envactor.registry import POLICY_REGISTRY

    for name in POLICY_REGISTRY.names():
        try:  # a broken plugin is reported on its line; the others are still listed
            cls = POLICY_REGISTRY.get(name)
        except Exception as exc:
            print(f"{name:<16} (failed to load: {type(exc).__name__}: {exc})")
            continue
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:<16} {doc[0] if doc else ''}")
        print(f"{'':<16} hooks: {', '.join(cls.hooks())}")
    return 0


@command("policies", "list registered policies")
def _policies_args(p: argparse.ArgumentParser) -> None:
    pass


def checkpoint_info(path: str) -> dict[str, Any]:
    """``envactor info``'s summary of a checkpoint: an envactor checkpoint directory (a run's
    step folders included) or a LeRobot ``pretrained_model`` folder (read without LeRobot)."""
    from envactor.interop.lerobot import describe_checkpoint, lerobot_checkpoint_dir

    if lerobot_checkpoint_dir(path) is not None:
        return describe_checkpoint(path)
    from envactor.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    cfg = ckpt.config
    params = cfg.get("policy", {}).get("params", {})
    return {
        "path": str(ckpt.path.resolve()),  # the folder loaded (checkpoints/last followed)
        "policy": cfg.get("policy", {}).get("type"),
        "components": {
            name: {
                "type": cfg.get("model", {}).get("components", {}).get(name, {}).get("type"),
                "parameters": int(sum(t.numel() for t in sd.values())),
            }
            for name, sd in ckpt.component_state.items()
        },
        "input_features": params.get("input_features", {}),
        "params": {k: v for k, v in params.items() if k != "input_features"},
        "action": {"horizon": params.get("horizon"), "action_dim": params.get("action_dim")},
        "stats_keys": sorted(ckpt.normalizer.modes) if ckpt.normalizer else [],
        "meta": {k: v for k, v in ckpt.meta.items() if k != "sha256"},
    }


def run_info(args: argparse.Namespace) -> int:
    """Summary of a checkpoint directory (envactor's or a LeRobot ``pretrained_model``)."""
    info = checkpoint_info(args.ckpt)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    action = info["action"]
    print(f"checkpoint  {info['path']}")
    print(f"policy      {info['policy']}  (H={action['horizon']}, A={action['action_dim']})")
    total = 0
    for name, c in info["components"].items():
        total += c["parameters"]
        print(f"  {name:<20} {c['type'] or '?':<26} {c['parameters']:>12,d} params")
    print(f"  {'total':<47} {total:>12,d} params")
    for key, spec in info["input_features"].items():
        print(
            f"feature     {key:<28} shape={spec.get('shape')} dtype={spec.get('dtype', 'float32')}"
        )
    for key, value in info["params"].items():
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        print(f"param       {key:<28} {shown}")
    m = info["meta"]
    if m.get("format") == "lerobot":
        print(f"stats       {', '.join(info['stats_keys']) or '(none)'} (LeRobot's processors)")
        print(
            f"format      LeRobot checkpoint (type {m.get('lerobot_type')}): acting only, "
            "loaded with LeRobot itself"
        )
        return 0
    print(f"stats       {', '.join(info['stats_keys']) or '(none)'}")
    print(
        f"versions    envactor={m.get('envactor_version')} torch={m.get('torch_version')} "
        f"step={m.get('step')} weight_version={m.get('weight_version')}"
    )
    return 0


@command("info", "print a checkpoint summary")
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="checkpoint directory, or a LeRobot pretrained_model folder")
    p.add_argument("--json", action="store_true", help="print JSON")


# ---------------------------------------------------------------------------- eval
def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a policy on a task with one executor and delay."""
    from envactor.runtime.eval_cli import run_eval as _run

    return _run(args)


@command("eval", "evaluate a policy across parallel envs")
def _eval_args(p: argparse.ArgumentParser) -> None:
    from envactor.runtime.eval_cli import add_eval_args

    add_eval_args(p)


# ---------------------------------------------------------------------------- collect / train
def run_collect(args: argparse.Namespace) -> int:
    """Write expert demonstrations of a task as a dataset."""
    from envactor.runtime.eval_cli import run_collect as _run

    return _run(args)


@command("collect", "collect demonstrations with a task's expert")
def _collect_args(p: argparse.ArgumentParser) -> None:
    from envactor.runtime.eval_cli import add_collect_args

    add_collect_args(p)


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
    _run(settings, progress=not args.no_progress and sys.stderr.isatty())
    print(
        f"results in {settings.out}/ (results.csv, results.json, success_vs_delay.png, "
        "eval_commands.txt, policy/)"
    )
    return 0


@command("demo", "the main job: collect, train and evaluate chunk executors under delay")
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default="runs/demo",
        help="output folder; a previous demo's outputs there are replaced once this run is done",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test (< 2 minutes): checks the pipeline runs; its numbers are not results",
    )
    p.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of every phase")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


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
    from envactor.runtime.serving.cli import run_serve as _run

    return _run(args)


@command("serve", "serve a policy over WebSocket (openpi wire format)")
def _serve_args(p: argparse.ArgumentParser) -> None:
    from envactor.runtime.serving.cli import add_serve_args

    add_serve_args(p)


def run_run(args: argparse.Namespace) -> int:
    """Run a policy in real time on a simulated robot or a LeRobot robot."""
    from envactor.runtime.realtime.cli import run_run as _run

    return _run(args)


@command(
    "run",
    "run a policy in real time (control and inference loops) on a simulated robot or, with "
    "--robot, any LeRobot robot",
)
def _run_args(p: argparse.ArgumentParser) -> None:
    from envactor.runtime.realtime.cli import add_run_args

    add_run_args(p)


# ---------------------------------------------------------------------------- entry point
DEBUG_ENV = "ENVACTOR_DEBUG"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``envactor`` argument parser with every registered subcommand."""
    parser = _Parser(prog="envactor", description=__doc__)
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (_, add_args, help_text) in _COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter
        )
        add_args(p)
        fill_missing_help(p)
    return parser


# Python keywords in library messages -> the flags that set them on the command line.
_KEYWORD_FLAGS = re.compile(r"\b(resume|overwrite|keep_normalizer)=True(?: \(--[\w-]+\))?")
_OUT_KEYWORD = re.compile(r"\banother (?:out_dir|out)\b")


def error_line(exc: BaseException) -> str:
    """``exc`` as one line that names CLI flags rather than Python keywords."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) would quote the message
    else:
        text = str(exc)
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    text = text or type(exc).__name__
    if isinstance(exc, ModuleNotFoundError):
        text += " (an optional dependency: pip install 'envactor[all]')"
    text = _KEYWORD_FLAGS.sub(lambda m: "--" + m.group(1).replace("_", "-"), text)
    return _OUT_KEYWORD.sub("another --out", text)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean a bad input or environment, not a bug: envactor's own errors
    (ConfigError, RegistryError, CheckpointError, DatasetError, TrainError, ... all derive from
    these), OS errors (missing files, busy ports), missing optional modules, gymnasium's."""
    kinds: list[type[BaseException]] = [ValueError, KeyError, OSError, RuntimeError, ImportError]
    gym_error = sys.modules.get("gymnasium.error")
    if gym_error is not None:
        kinds.append(gym_error.Error)
    return tuple(kinds)


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at devnull so the exit flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``envactor`` command line: an expected error prints one line and returns 2
    (``--debug`` or ``ENVACTOR_DEBUG=1`` re-raises it); a closed stdout pipe exits quietly."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    handler = _COMMANDS[args.command][0]
    try:
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `envactor eval ... --json | head`
        _quiet_stdout()
        return 1
    except _user_errors() as exc:
        if debug:
            raise
        print(f"envactor {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
