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

from envactor.config.limits import (
    MAX_DEPTH,
    MAX_REF_CHAIN,
    MAX_RESOLVED,
    MAX_RESOLVED_CHARS,
    MAX_STRING_CHARS,
)
from envactor.config.paths import (
    KeyPath,
    describe,
    format_path,
    lookup,
    missing_key_hint,
    parse_path,
    plain_copy,
)
from envactor.config.tree import ComposedConfig

_TOKEN = re.compile(r"\$\$\{|\$\{([^{}]*)\}")
_WHOLE = re.compile(r"\$\{([^{}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _measure(value: Any) -> tuple[int, int, int]:
    """``(values, characters, levels)`` of a resolved value (its size and nesting)."""
    if isinstance(value, dict | list):
        items = value.values() if isinstance(value, dict) else value
        nodes, chars, height = 1, 0, 0
        for v in items:
            n, c, h = _measure(v)
            nodes, chars, height = nodes + n, chars + c, max(height, h + 1)
        return nodes, chars, height
    return 1, len(value) if isinstance(value, str) else 0, 0


class _Resolver:
    def __init__(self, cfg: ComposedConfig, scopes: Sequence[KeyPath]) -> None:
        self.cfg = cfg
        self.scopes = sorted(scopes, key=len, reverse=True)
        self.cache: dict[KeyPath, Any] = {}
        self.sizes: dict[KeyPath, tuple[int, int, int]] = {}
        self.stack: list[KeyPath] = []
        self.work = 0  # values visited and copied
        self.chars = 0  # characters built and copied

    def node(self, value: Any, path: KeyPath, depth: int) -> Any:
        """``value`` (found at ``path``) resolved, for a place ``depth`` levels deep."""
        self._spend(path, 1, 0)
        if depth > MAX_DEPTH:
            raise self.cfg.error(
                path,
                f"lists and mappings nest more than {MAX_DEPTH} levels deep once ${{...}} "
                f"references are expanded; a config may nest at most {MAX_DEPTH}",
            )
        if isinstance(value, dict):
            return {k: self.node(v, (*path, str(k)), depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.node(v, (*path, i), depth + 1) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self.string(value, path, depth)
        return value

    def string(self, text: str, path: KeyPath, depth: int) -> Any:
        if path not in self.cache:
            if len(self.stack) >= MAX_REF_CHAIN:
                shown = [format_path(p) for p in self.stack]
                if len(shown) > 6:
                    shown = [*shown[:3], "...", *shown[-3:]]
                raise self.cfg.error(
                    path,
                    f"${{...}} references nest more than {MAX_REF_CHAIN} deep "
                    f"({' -> '.join(shown)}); a config may chain at most {MAX_REF_CHAIN}",
                )
            self.stack.append(path)
            try:
                self.cache[path] = self._interpolate(text, path, depth)
            finally:
                self.stack.pop()
            self.sizes[path] = _measure(self.cache[path])
        nodes, chars, height = self.sizes[path]
        if depth + height > MAX_DEPTH:
            raise self.cfg.error(
                path,
                f"lists and mappings nest {depth + height} levels deep once ${{...}} references "
                f"are expanded; a config may nest at most {MAX_DEPTH}",
            )
        self._spend(path, nodes, chars)
        return plain_copy(self.cache[path])

    def _spend(self, path: KeyPath, nodes: int, chars: int) -> None:
        self.work += nodes
        self.chars += chars
        if self.work > MAX_RESOLVED or self.chars > MAX_RESOLVED_CHARS:
            what = (
                f"{MAX_RESOLVED:,} values"
                if self.work > MAX_RESOLVED
                else f"{MAX_RESOLVED_CHARS:,} characters"
            )
            raise self.cfg.error(
                path,
                f"${{...}} interpolation expands to more than {what} (references to values that "
                "themselves hold several references grow exponentially); a config may expand "
                "to at most that",
            )

    def _interpolate(self, text: str, path: KeyPath, depth: int) -> Any:
        whole = _WHOLE.fullmatch(text)
        if whole is not None:
            return self._reference(whole.group(1), text, path, depth)
        out: list[str] = []
        size = 0
        pos = 0
        for m in _TOKEN.finditer(text):
            self._check_literal(text[pos : m.start()], text, path)
            out.append(text[pos : m.start()])
            pos = m.end()
            if m.group(1) is None:  # "$${" escape
                out.append("${")
                continue
            value = self._reference(m.group(1), text, path, depth)
            if isinstance(value, dict | list):
                raise self.cfg.error(
                    path,
                    f"'${{{m.group(1)}}}' is {describe(value)} and cannot be embedded in the "
                    f"string {_short(text)!r}; make the whole value the reference",
                )
            out.append(_format(value))
            size += len(out[-1]) + len(out[-2])
            if size > MAX_STRING_CHARS:
                raise self.cfg.error(
                    path,
                    f"${{...}} interpolation builds a string of more than {MAX_STRING_CHARS:,} "
                    f"characters from {_short(text)!r}; a config string may be at most "
                    f"{MAX_STRING_CHARS:,}",
                )
        self._check_literal(text[pos:], text, path)
        out.append(text[pos:])
        return "".join(out)

    def _check_literal(self, part: str, text: str, path: KeyPath) -> None:
        if "${" in part:
            raise self.cfg.error(
                path,
                f"unterminated or nested interpolation in {_short(text)!r} (write '${{a.b}}', and "
                "'$${' for a literal '${')",
            )

    def _reference(self, expr: str, text: str, path: KeyPath, depth: int) -> Any:
        expr = expr.strip()
        if expr.startswith("env:"):
            return self._env(expr[4:], path)
        try:
            ref = parse_path(expr)
        except ValueError as e:
            raise self.cfg.error(
                path, f"bad interpolation '${{{_short(expr)}}}' in {_short(text)!r}: {e}"
            ) from None
        target, raw = self._find(ref, expr, path)
        for i, active in enumerate(self.stack):
            if active[: len(target)] == target:
                chain = " -> ".join(format_path(p) for p in [*self.stack[i:], target])
                raise self.cfg.error(path, f"interpolation cycle: {chain}")
        return self.node(raw, target, depth)

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


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _run(cfg: ComposedConfig, key: KeyPath, scopes: Sequence[KeyPath]) -> Any:
    path, raw = lookup(cfg.data, key)
    try:
        return _Resolver(cfg, scopes).node(raw, path, len(path))
    except RecursionError:  # the limits above should make this unreachable
        raise cfg.error(
            key,
            f"${{...}} references nest too deeply to resolve (limits: {MAX_REF_CHAIN} chained "
            f"references, {MAX_DEPTH} levels)",
        ) from None


def resolve(cfg: ComposedConfig, *, scopes: Sequence[KeyPath] = ()) -> ComposedConfig:
    """A copy of ``cfg`` with every ``${...}`` replaced (see the module docstring).

    Interpolation is bounded (``envactor.config.limits``): strings it builds, the values it
    copies, chains of references and the nesting they produce; past a limit it is a ConfigError.
    """
    return replace(cfg, data=_run(cfg, (), scopes))


def resolve_at(cfg: ComposedConfig, key: KeyPath, *, scopes: Sequence[KeyPath] = ()) -> Any:
    """The resolved value of the subtree at ``key`` (which must exist), leaving ``cfg`` as is."""
    return _run(cfg, key, scopes)
