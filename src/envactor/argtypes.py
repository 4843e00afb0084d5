"""``--env-opt`` / ``--executor-opt`` parsing and help that states every default, for the
``envactor`` subcommands (numeric flags: ``envactor.runtime.cli_args.number``)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["DefaultsHelpFormatter", "env_opt", "executor_opt", "fill_missing_help"]


def env_opt(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for ``gymnasium.make``: KEY an identifier, VALUE a YAML scalar read like a
    config value (``0.1`` and ``1e-3`` -> float, ``true`` -> bool, ``null`` -> None, anything
    else a string; ``KEY=`` is the empty string), with the config loader's size limits."""
    return _key_value(text, "--env-opt")


def executor_opt(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for the executor's constructor (``bid``'s ``num_samples=8``, ...), read as
    :func:`env_opt` reads its values."""
    return _key_value(text, "--executor-opt")


def _key_value(text: str, flag: str) -> tuple[str, Any]:
    from envactor.config import ConfigError
    from envactor.config.loader import parse_value

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY an identifier, got {text!r}")
    if not raw.strip():
        return key, ""
    try:
        value = parse_value(raw, f"{flag} {key}")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(
            f"{key}: expected a YAML scalar (number, bool, string, null), got {_clip(raw)!r} "
            f"({e.message})"
        ) from None
    if isinstance(value, dict | list):
        raise argparse.ArgumentTypeError(
            f"{key}: expected a scalar (number, bool, string, null), got {_clip(raw)!r}"
        )
    return key, value


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already states one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        if action.required or (not action.option_strings and action.nargs not in ("?", "*")):
            return text  # a required option or positional has no default
        if action.nargs == 0 and action.default is False:
            return f"{text} (default: off)".strip()
        return f"{text} (default: %(default)s)".strip()


def fill_missing_help(parser: argparse.ArgumentParser) -> None:
    """Give every option without help a line stating its default (argparse lists an option's
    help, and so its default, only when it has some)."""
    for action in parser._actions:
        if action.help is None and action.option_strings and not action.required:
            flag = action.nargs == 0 and action.default is False
            action.help = "(default: off)" if flag else "(default: %(default)s)"
