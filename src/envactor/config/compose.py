"""``defaults:`` composition: files merged in order under the including file, then overrides and
interpolation (``compose``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envactor.config.composed import ComposedConfig, SourceMap, prune_sources
from envactor.config.interpolate import resolve
from envactor.config.loader import display_path, load_yaml
from envactor.config.overrides import Override, apply_overrides
from envactor.config.paths import describe, plain_copy

DEFAULTS_KEY = "defaults"


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = plain_copy(v)
    return out


def merge_configs(base: ComposedConfig, top: ComposedConfig) -> ComposedConfig:
    """``top`` merged over ``base``, data and source map alike (``top``'s path is kept)."""
    data = deep_merge(base.data, top.data)
    sources: SourceMap = {**base.sources, **top.sources}
    files = base.files + tuple(f for f in top.files if f not in base.files)
    return ComposedConfig(
        data=data, sources=prune_sources(sources, data), path=top.path, files=files
    )


def _cycle_text(chain: list[Path], root_dir: Path) -> str:
    names = []
    for p in chain:
        try:
            names.append(os.path.relpath(p, root_dir))
        except ValueError:  # another drive on Windows
            names.append(str(p))
    return " -> ".join(names)


def _compose_file(path: Path, chain: list[Path], root_dir: Path) -> ComposedConfig:
    """Load ``path`` with its ``defaults`` merged under it, recursively."""
    cfg = load_yaml(path)
    if DEFAULTS_KEY not in cfg.data:
        return cfg
    defaults = cfg.data.pop(DEFAULTS_KEY)
    file = display_path(path)
    if not isinstance(defaults, list):
        raise cfg.error(
            DEFAULTS_KEY,
            f"expected a list of YAML files (relative to {file}), found {describe(defaults)}",
        )
    merged: ComposedConfig | None = None
    for i, entry in enumerate(defaults):
        key = f"{DEFAULTS_KEY}[{i}]"
        if not isinstance(entry, str) or not entry.strip():
            raise cfg.error(key, f"expected a YAML file path, found {describe(entry)}")
        target = path.parent / os.path.expanduser(entry)
        resolved = target.resolve()
        if resolved in chain:
            cycle = _cycle_text([*chain[chain.index(resolved) :], resolved], root_dir)
            raise cfg.error(key, f"defaults form a cycle: {cycle}")
        if not target.is_file():
            found = "a directory" if target.exists() else "no such file"
            raise cfg.error(
                key,
                f"defaults file {entry!r} not found: expected {display_path(target)}, "
                f"found {found}",
            )
        layer = _compose_file(target, [*chain, resolved], root_dir)
        merged = layer if merged is None else merge_configs(merged, layer)
    cfg.sources = prune_sources(cfg.sources, cfg.data)
    return cfg if merged is None else merge_configs(merged, cfg)


def compose_raw(path: str | Path) -> ComposedConfig:
    """``path`` with its defaults composed; no overrides, ``${...}`` left unresolved."""
    p = Path(path)
    resolved = p.resolve()
    return _compose_file(p, [resolved], resolved.parent)


def compose(
    path: str | Path, overrides: Sequence[str | Override] = (), *, resolve_refs: bool = True
) -> ComposedConfig:
    """Load ``path``: compose its ``defaults``, apply ``overrides``, then resolve ``${...}``.

    Args:
        path: the top-level YAML file.
        overrides: ``KEY=VALUE`` strings (or parsed ``Override``s), applied in order.
        resolve_refs: resolve interpolation (False keeps the ``${...}`` strings as written).
    """
    cfg = compose_raw(path)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    if resolve_refs:
        cfg = resolve(cfg)
    return cfg
