"""``${...}`` interpolation, resolved once the config is composed and overridden.

- ``${a.b.c}`` (or ``${a.b[0]}``): the value at that dotted path of the composed config. A string
  that is exactly one reference takes the referenced value with its type (an int, a list, a
  mapping); a reference embedded in a longer string is formatted into it (``run_${seed}``).
  Referenced values are resolved first, so references may chain; a cycle is an error.
- ``${env:NAME}`` / ``${env:NAME,default}``: an environment variable (always a string; pydantic
  converts it where a number is expected). Unset and no default is an error.
- ``$${`` writes a literal ``${``.
- Scopes: inside a scope (a component config below ``model.components.<name>``), ``${x}`` looks
  for ``x`` in that scope first, then from the top of the config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from envactor.config.composed import ComposedConfig
from envactor.config.paths import (
    KeyPath,
    describe,
    format_path,
    lookup,
    missing_key_hint,
    parse_path,
    plain_copy,
)

_TOKEN = re.compile(r"\$\$\{|\$\{([^{}]*)\}")
_WHOLE = re.compile(r"\$\{([^{}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


class _Resolver:
    def __init__(self, cfg: ComposedConfig, scopes: Sequence[KeyPath]) -> None:
        self.cfg = cfg
        self.scopes = sorted(scopes, key=len, reverse=True)
        self.cache: dict[KeyPath, Any] = {}
        self.stack: list[KeyPath] = []

    def node(self, value: Any, path: KeyPath) -> Any:
        if isinstance(value, dict):
            return {k: self.node(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self.node(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self.string(value, path)
        return value

    def string(self, text: str, path: KeyPath) -> Any:
        if path not in self.cache:
            self.stack.append(path)
            try:
                self.cache[path] = self._interpolate(text, path)
            finally:
                self.stack.pop()
        return plain_copy(self.cache[path])

    def _interpolate(self, text: str, path: KeyPath) -> Any:
        whole = _WHOLE.fullmatch(text)
        if whole is not None:
            return self._reference(whole.group(1), text, path)
        out: list[str] = []
        pos = 0
        for m in _TOKEN.finditer(text):
            self._check_literal(text[pos : m.start()], text, path)
            out.append(text[pos : m.start()])
            pos = m.end()
            if m.group(1) is None:  # "$${" escape
                out.append("${")
                continue
            value = self._reference(m.group(1), text, path)
            if isinstance(value, dict | list):
                raise self.cfg.error(
                    path,
                    f"'${{{m.group(1)}}}' is {describe(value)} and cannot be embedded in the "
                    f"string {text!r}; make the whole value the reference",
                )
            out.append(_format(value))
        self._check_literal(text[pos:], text, path)
        out.append(text[pos:])
        return "".join(out)

    def _check_literal(self, part: str, text: str, path: KeyPath) -> None:
        if "${" in part:
            raise self.cfg.error(
                path,
                f"unterminated or nested interpolation in {text!r} (write '${{a.b}}', and "
                "'$${' for a literal '${')",
            )

    def _reference(self, expr: str, text: str, path: KeyPath) -> Any:
        expr = expr.strip()
        if expr.startswith("env:"):
            return self._env(expr[4:], path)
        try:
            ref = parse_path(expr)
        except ValueError as e:
            raise self.cfg.error(
                path, f"bad interpolation '${{{expr}}}' in {text!r}: {e}"
            ) from None
        target, raw = self._find(ref, expr, path)
        for i, active in enumerate(self.stack):
            if active[: len(target)] == target:
                chain = " -> ".join(format_path(p) for p in [*self.stack[i:], target])
                raise self.cfg.error(path, f"interpolation cycle: {chain}")
        return self.node(raw, target)

    def _find(self, ref: KeyPath, expr: str, path: KeyPath) -> tuple[KeyPath, Any]:
        scope = next((s for s in self.scopes if path[: len(s)] == s and len(path) > len(s)), None)
        if scope is not None:
            try:
                return lookup(self.cfg.data, (*scope, *ref))
            except KeyError:
                pass
        try:
            return lookup(self.cfg.data, ref)
        except KeyError as e:
            hint = missing_key_hint(self.cfg.data, ref, e.args[0])
            tried = f" (looked in {format_path(scope)} first)" if scope is not None else ""
            raise self.cfg.error(
                path, f"interpolation '${{{expr}}}' refers to an unknown key{tried}: {hint}"
            ) from None

    def _env(self, spec: str, path: KeyPath) -> str:
        name, sep, default = spec.partition(",")
        name = name.strip()
        if not _ENV_NAME.fullmatch(name):
            raise self.cfg.error(
                path, f"bad environment variable name {name!r} in '${{env:{spec}}}'"
            )
        value = os.environ.get(name)
        if value is not None:
            return value
        if sep:
            return default.strip()
        raise self.cfg.error(
            path,
            f"environment variable {name} is not set and '${{env:{spec}}}' gives no default "
            f"(write '${{env:{name},default}}' for one)",
        )


def resolve(cfg: ComposedConfig, *, scopes: Sequence[KeyPath] = ()) -> ComposedConfig:
    """A copy of ``cfg`` with every ``${...}`` replaced (see the module docstring)."""
    data = _Resolver(cfg, scopes).node(cfg.data, ())
    return replace(cfg, data=data)


def resolve_at(cfg: ComposedConfig, key: KeyPath, *, scopes: Sequence[KeyPath] = ()) -> Any:
    """The resolved value of the subtree at ``key`` (which must exist), leaving ``cfg`` as is."""
    path, raw = lookup(cfg.data, key)
    return _Resolver(cfg, scopes).node(raw, path)
