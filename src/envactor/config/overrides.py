"""Command-line overrides: ``policy.params.horizon=16`` sets one key of a composed config.

The value is parsed as YAML (``16`` is an int, ``[1,2]`` a list, ``null`` None, an empty value
None); a mapping value replaces the old value instead of merging into it. Missing intermediate
keys are created; going through a key that holds a scalar or list is an error. Every key an
override sets is recorded in the source map as coming from ``<override>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from envactor.config.errors import OVERRIDE, ConfigError, Location
from envactor.config.limits import MAX_DEPTH
from envactor.config.loader import parse_value
from envactor.config.paths import (
    KeyPath,
    Segment,
    child,
    describe,
    format_path,
    is_under,
    iter_paths,
    parse_path,
    plain_copy,
)
from envactor.config.tree import ComposedConfig, SourceMap


class Override(NamedTuple):
    """A parsed ``KEY=VALUE``: the dotted key, its segments, the YAML-parsed value, the text."""

    key: str
    path: KeyPath
    value: Any
    text: str


def parse_override(text: str) -> Override:
    """Parse ``"policy.params.horizon=16"``; a malformed one is a ConfigError quoting it."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(
            f"override {text!r} has no '='; expected KEY=VALUE, e.g. policy.params.horizon=16",
            file=OVERRIDE,
        )
    if key[:1] in ("+", "~"):
        raise ConfigError(
            f"override {text!r}: prefixes '+' and '~' are not supported; "
            "KEY=VALUE both sets and adds a key",
            file=OVERRIDE,
        )
    try:
        path = parse_path(key)
    except ValueError as e:
        raise ConfigError(f"override {text!r}: invalid key: {e}", file=OVERRIDE) from None
    if len(path) > MAX_DEPTH:
        raise ConfigError(
            f"override key has {len(path)} parts; a config may nest at most {MAX_DEPTH} levels",
            file=OVERRIDE,
        )
    try:
        value = parse_value(raw, OVERRIDE)
    except ConfigError as e:
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML: {e.message}",
            file=OVERRIDE,
            key=format_path(path),
        ) from None
    return Override(format_path(path), path, value, text)


def _as_override(item: str | Override) -> Override:
    return item if isinstance(item, Override) else parse_override(item)


def _blocked(ov: Override, where: KeyPath, node: Any, sources: SourceMap) -> ConfigError:
    """The error for an override whose path runs through a value that is not a mapping."""
    at = format_path(where)
    loc = sources.get(at)
    origin = f", set at {loc}" if loc is not None else ""
    return ConfigError(
        f"override {ov.text!r} goes through {at!r}, which holds {describe(node)}{origin}, "
        "not a mapping",
        file=OVERRIDE,
        key=ov.key,
    )


def _set(data: dict[str, Any], ov: Override, sources: SourceMap) -> KeyPath:
    """Set ``ov`` in ``data`` (creating missing mappings); returns the canonical path set."""
    node: Any = data
    canon: list[Segment] = []
    for i, seg in enumerate(ov.path):
        last = i == len(ov.path) - 1
        if isinstance(node, dict):
            if isinstance(seg, int):
                raise _blocked(ov, tuple(canon), node, sources)
            existing = next((k for k in node if str(k) == seg), seg)
            canon.append(seg)
            if last:
                node[existing] = plain_copy(ov.value)
            elif existing not in node:
                node[existing] = {}
                sources[format_path(canon)] = Location(OVERRIDE)
            node = node[existing]
        elif isinstance(node, list):
            try:
                idx, _ = child(node, seg)
            except KeyError:
                raise ConfigError(
                    f"override {ov.text!r}: {format_path(canon)!r} is a list of {len(node)} "
                    f"items; {seg!r} is not an index in it",
                    file=OVERRIDE,
                    key=ov.key,
                ) from None
            assert isinstance(idx, int)
            canon.append(idx)
            if last:
                node[idx] = plain_copy(ov.value)
            node = node[idx]
        else:
            raise _blocked(ov, tuple(canon), node, sources)
    return tuple(canon)


def apply_overrides(cfg: ComposedConfig, overrides: Sequence[str | Override]) -> ComposedConfig:
    """A copy of ``cfg`` with each ``KEY=VALUE`` override applied in order."""
    data = plain_copy(cfg.data)
    sources = dict(cfg.sources)
    for item in overrides:
        ov = _as_override(item)
        path = _set(data, ov, sources)
        key = format_path(path)
        for k in [k for k in sources if k and is_under(k, key)]:
            del sources[k]
        sources[key] = Location(OVERRIDE)
        for sub in iter_paths(ov.value, path):
            sources[format_path(sub)] = Location(OVERRIDE)
    return replace(cfg, data=data, sources=sources)
