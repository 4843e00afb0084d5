"""Reading one YAML file with the safe loader, keeping the line of every key.

Duplicate keys in a mapping, recursive aliases, a non-mapping top level and syntax errors are
ConfigErrors naming the file and line. Defaults composition lives in ``compose.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from envactor.config.composed import ComposedConfig, SourceMap
from envactor.config.errors import ConfigError, Location
from envactor.config.paths import KeyPath, describe, format_path, plain_copy

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _SafeLoader(yaml.SafeLoader):
    """The safe loader, subclassed so nothing registered here leaks into yaml.SafeLoader."""


# PyYAML follows YAML 1.1, where ``1e-4`` and ``1.0e3`` are strings; read them as floats.
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def display_path(path: Path) -> str:
    """How a file is named in messages: the path as given, normalized (``a/../b`` -> ``b``)."""
    return os.path.normpath(str(path))


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _key_of(loader: _SafeLoader, key_node: Node) -> str | None:
    """The string form of a scalar mapping key (None for a complex key)."""
    if not isinstance(key_node, ScalarNode):
        return None
    return str(loader.construct_object(key_node, deep=True))


def _check_node(
    loader: _SafeLoader,
    node: Node,
    path: KeyPath,
    file: str,
    ancestors: set[int],
    seen: set[int],
) -> None:
    """Reject duplicate keys and recursive aliases before PyYAML silently accepts them."""
    if id(node) in ancestors:
        raise ConfigError(
            "recursive YAML alias: a value contains itself",
            file=file,
            key=format_path(path),
            line=_line(node),
        )
    if id(node) in seen:  # an alias of a node already checked
        return
    seen.add(id(node))
    ancestors.add(id(node))
    if isinstance(node, MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                _check_node(loader, value_node, path, file, ancestors, seen)
                continue
            key = _key_of(loader, key_node)
            if key is not None and key in first_line:
                raise ConfigError(
                    f"duplicate key {key!r} in one mapping (first written on line "
                    f"{first_line[key]}); a later value would silently replace the earlier one",
                    file=file,
                    key=format_path((*path, key)),
                    line=_line(key_node),
                )
            if key is not None:
                first_line[key] = _line(key_node)
            _check_node(loader, value_node, (*path, key or "?"), file, ancestors, seen)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _check_node(loader, item, (*path, i), file, ancestors, seen)
    ancestors.discard(id(node))


def _record(loader: _SafeLoader, node: Node, path: KeyPath, file: str, out: SourceMap) -> None:
    """Fill ``out`` with the line of every key and list item below ``node``.

    Runs after construction, when merge keys (``<<``) have been flattened into ``node.value``
    with explicit keys last, so later entries win exactly as they do in the built dict.
    """
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            key = _key_of(loader, key_node)
            if key is None:
                continue
            p = (*path, key)
            out[format_path(p)] = Location(file, _line(key_node))
            _record(loader, value_node, p, file, out)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            p = (*path, i)
            out[format_path(p)] = Location(file, _line(item))
            _record(loader, item, p, file, out)


def _yaml_error(e: yaml.YAMLError, file: str) -> ConfigError:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        what = e.problem or e.context or "syntax error"
        if e.context and e.problem and e.context_mark is not None:
            what += f" ({e.context} on line {int(e.context_mark.line) + 1})"
        return ConfigError(f"invalid YAML: {what}", file=file, line=line)
    return ConfigError(f"invalid YAML: {e}", file=file)


def _parse(text: str, file: str) -> tuple[Any, Node | None, SourceMap]:
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None, {}
        _check_node(loader, node, (), file, set(), set())
        data = loader.construct_document(node)
        sources: SourceMap = {"": Location(file, _line(node))}
        _record(loader, node, (), file, sources)
    except yaml.YAMLError as e:
        raise _yaml_error(e, file) from None
    finally:
        loader.dispose()
    return plain_copy(data), node, sources


def parse_yaml(text: str, file: str, *, path: Path | None = None) -> ComposedConfig:
    """Parse YAML ``text`` whose top level must be a mapping; ``file`` names it in errors."""
    data, node, sources = _parse(text, file)
    if node is None:
        raise ConfigError("the file is empty; expected a mapping at the top level", file=file)
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping of keys to values, found {describe(data)}",
            file=file,
            line=_line(node),
        )
    p = path if path is not None else Path(file)
    return ComposedConfig(data=data, sources=sources, path=p, files=(p,))


def parse_value(text: str, file: str) -> Any:
    """Parse a YAML scalar, list or mapping (for override values), with the same checks."""
    return _parse(text, file)[0]


def read_text(path: Path, file: str) -> str:
    """The UTF-8 text of ``path``; a ConfigError naming ``file`` when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except IsADirectoryError:
        raise ConfigError("expected a YAML file, found a directory", file=file) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=file) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=file) from None


def load_yaml(path: str | Path) -> ComposedConfig:
    """Load one YAML file (safe loader) into a ComposedConfig with a line for every key.

    Only the file itself: a ``defaults`` key is kept as data and ``${...}`` is left as written
    (``compose`` does both).
    """
    p = Path(path)
    file = display_path(p)
    return parse_yaml(read_text(p, file), file, path=p)
