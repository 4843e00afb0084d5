"""ComposedConfig: a config tree plus the file and line every key came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envactor.config.errors import ConfigError, Location
from envactor.config.paths import (
    KeyPath,
    format_path,
    iter_paths,
    lookup,
    missing_key_hint,
    parse_path,
)

SourceMap = dict[str, Location]
"""Formatted key path (``""`` for the top-level mapping) -> where it was written."""

_NO_DEFAULT: Any = object()


def _as_path(key: str | KeyPath) -> KeyPath:
    if isinstance(key, tuple):
        return key
    return parse_path(key) if key else ()


@dataclass
class ComposedConfig:
    """A loaded config: ``data`` (plain dicts, lists and scalars) and its source map.

    Attributes:
        data: the config tree.
        sources: dotted key path -> ``Location(file, line)``; keys set by an override have the
            file ``<override>``. Values produced by a whole-string interpolation have no entry
            of their own; ``locate`` then answers with the referring key's location.
        path: the top-level file.
        files: every file read to build it, in load order.
    """

    data: dict[str, Any]
    sources: SourceMap
    path: Path
    files: tuple[Path, ...] = field(default_factory=tuple)

    def locate(self, key: str | KeyPath) -> Location | None:
        """Where ``key`` was written, or its nearest recorded parent (for a missing key)."""
        path = _as_path(key)
        for n in range(len(path), -1, -1):
            loc = self.sources.get(format_path(path[:n]))
            if loc is not None:
                return loc
        return None

    def error(self, key: str | KeyPath, message: str) -> ConfigError:
        """A ConfigError at ``key``, located through the source map."""
        path = _as_path(key)
        return ConfigError.at(self.locate(path), format_path(path), message)

    def get(self, key: str | KeyPath, default: Any = _NO_DEFAULT) -> Any:
        """The value at dotted ``key``; ``default`` or a located ConfigError when it is absent."""
        path = _as_path(key)
        try:
            return lookup(self.data, path)[1]
        except KeyError as e:
            if default is not _NO_DEFAULT:
                return default
            hint = missing_key_hint(self.data, path, e.args[0])
            raise self.error(path, f"missing: {hint}") from None


def prune_sources(sources: SourceMap, data: Any) -> SourceMap:
    """Drop source entries for keys that no longer exist in ``data``."""
    live = {""} | {format_path(p) for p in iter_paths(data)}
    return {k: v for k, v in sources.items() if k in live}
