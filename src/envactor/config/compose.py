"""``defaults:`` composition: files merged in order under the including file, then overrides and
interpolation (``compose``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envactor.config.interpolate import resolve
from envactor.config.limits import ReadBudget
from envactor.config.loader import (
    TOP_LEVEL,
    check_yaml_file,
    display_path,
    load_yaml,
    resolve_path,
)
from envactor.config.overrides import Override, apply_overrides
from envactor.config.paths import describe, plain_copy
from envactor.config.tree import ComposedConfig, SourceMap, prune_sources

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


def _compose_file(
    path: Path, chain: list[Path], root_dir: Path, budget: ReadBudget, expected: str
) -> ComposedConfig:
    """Load ``path`` with its ``defaults`` merged under it, recursively."""
    cfg = load_yaml(path, expected=expected, budget=budget)
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
        problem = check_yaml_file(target, entry)
        if problem is not None:
            raise cfg.error(key, f"defaults file: {problem}")
        resolved = target.resolve()  # check_yaml_file made sure this works
        if resolved in chain:
            cycle = _cycle_text([*chain[chain.index(resolved) :], resolved], root_dir)
            raise cfg.error(key, f"defaults form a cycle: {cycle}")
        where = cfg.locate(key)
        layer = _compose_file(
            target,
            [*chain, resolved],
            root_dir,
            budget,
            f"{TOP_LEVEL} (a defaults file, named by {key}{f' at {where}' if where else ''})",
        )
        merged = layer if merged is None else merge_configs(merged, layer)
    cfg.sources = prune_sources(cfg.sources, cfg.data)
    return cfg if merged is None else merge_configs(merged, cfg)


def compose_raw(
    path: str | Path,
    *,
    expected: str = TOP_LEVEL,
    budget: ReadBudget | None = None,
) -> ComposedConfig:
    """``path`` with its defaults composed; no overrides, ``${...}`` left unresolved.

    ``expected`` says what ``path`` should hold (for errors); ``budget`` shares the size limits
    of ``envactor.config.limits`` with other files of the same config (a fresh one by default).
    """
    p = Path(path)
    resolved = resolve_path(p, file=display_path(p))
    budget = budget if budget is not None else ReadBudget()
    return _compose_file(p, [resolved], resolved.parent, budget, expected)


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
