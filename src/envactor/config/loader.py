"""Reading one YAML file with the safe loader, keeping the line of every key.

Duplicate keys in a mapping, recursive aliases, a non-mapping top level and syntax errors are
ConfigErrors naming the file and line. Sizes are checked on the parsed node graph before any
value is built (``limits.py``: an alias bomb is refused in microseconds). An error about what a
file is (not named .yaml, not UTF-8, not a mapping, too large) says what was expected and where
and never quotes the file's content, so a config that names the wrong file cannot leak it; a
YAML syntax error quotes at most the offending token (a character, an alias or a tag name).
Defaults composition lives in ``compose.py``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from envactor.config.errors import ConfigError, Location
from envactor.config.limits import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_NODES,
    MAX_TOTAL_BYTES,
    ReadBudget,
)
from envactor.config.paths import KeyPath, format_path, kind, plain_copy
from envactor.config.tree import ComposedConfig, SourceMap

_MERGE_TAG = "tag:yaml.org,2002:merge"
TOP_LEVEL = "a mapping of keys to values at the top level"
"""What a config file must hold, as errors say it."""
YAML_SUFFIXES = (".yaml", ".yml")


class _SafeLoader(yaml.SafeLoader):
    """The safe loader, subclassed so nothing registered here leaks into yaml.SafeLoader.

    Nesting is refused while scanning, past ``MAX_DEPTH`` levels: PyYAML's scanner slows down
    quadratically with the nesting depth (1 MB of ``[`` would take hours) and its composer
    recurses once per level.
    """

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        super().fetch_flow_collection_start(TokenClass)
        if self.flow_level > MAX_DEPTH + 1:
            self._too_deep()

    def add_indent(self, column: int) -> bool:
        added: bool = super().add_indent(column)
        if added and len(self.indents) > MAX_DEPTH + 1:
            self._too_deep()
        return added

    def _too_deep(self) -> None:
        raise yaml.scanner.ScannerError(
            problem=f"lists and mappings nest more than {MAX_DEPTH} levels deep; a config may "
            f"nest at most {MAX_DEPTH}",
            problem_mark=self.get_mark(),
        )


class _SafeDumper(yaml.SafeDumper):
    """The safe dumper, told about the float form below so such strings are written quoted."""


# PyYAML follows YAML 1.1, where ``1e-4`` and ``1.0e3`` are strings; read them as floats (and
# quote strings of that form when writing, so they read back as strings).
_EXP_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
for _cls in (_SafeLoader, _SafeDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789"))


def dump_yaml(data: Any) -> str:
    """``data`` (plain dicts, lists and scalars) as YAML that ``load_yaml`` reads back equal.

    Unlike ``yaml.safe_dump``, a string such as ``"1e5"`` is quoted: this loader reads the
    unquoted form as a float.
    """
    return yaml.dump(data, Dumper=_SafeDumper, sort_keys=False, allow_unicode=True)


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


class _Sizer:
    """Counts the values of a parsed YAML node graph with aliases expanded, without expanding
    them (each node is measured once), and refuses duplicate keys, recursive aliases and
    documents over the size or depth limit before anything is constructed."""

    def __init__(self, loader: _SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels below)
        self.ancestors: set[int] = set()

    def error(self, path: KeyPath, node: Node, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=format_path(path), line=_line(node))

    def measure(self, node: Node, path: KeyPath, depth: int) -> tuple[int, int]:
        """``(values, levels)`` of ``node`` expanded; raises past the limits."""
        if id(node) in self.ancestors:
            raise self.error(path, node, "recursive YAML alias: a value contains itself")
        known = self.sizes.get(id(node))
        if known is None:
            if depth > MAX_DEPTH:
                raise self.error(
                    path,
                    node,
                    f"lists and mappings nest more than {MAX_DEPTH} levels deep (aliases "
                    f"expanded); a config may nest at most {MAX_DEPTH}",
                )
            self.ancestors.add(id(node))
            known = self._children(node, path, depth)
            self.ancestors.discard(id(node))
            self.sizes[id(node)] = known
        count, height = known
        if depth + height > MAX_DEPTH:  # an alias of a deep value, used deeper down
            raise self.error(
                path,
                node,
                f"lists and mappings nest {depth + height} levels deep once YAML aliases (*name) "
                f"are expanded; a config may nest at most {MAX_DEPTH}",
            )
        if count > MAX_NODES:
            raise self.error(
                path,
                node,
                f"this value holds {count:,} values once YAML aliases (*name) are expanded; a "
                f"config may hold at most {MAX_NODES:,} (an alias bomb?)",
            )
        return known

    def _children(self, node: Node, path: KeyPath, depth: int) -> tuple[int, int]:
        count, height = 1, 0
        if isinstance(node, MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    c, h = self.measure(value_node, path, depth)
                    count, height = count + c, max(height, h)
                    continue
                key = _key_of(self.loader, key_node)
                if key is not None and key in first_line:
                    raise self.error(
                        (*path, key),
                        key_node,
                        f"duplicate key {key!r} in one mapping (first written on line "
                        f"{first_line[key]}); a later value would silently replace the earlier "
                        "one",
                    )
                if key is not None:
                    first_line[key] = _line(key_node)
                c, h = self.measure(value_node, (*path, key or "?"), depth + 1)
                count, height = count + c, max(height, h + 1)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                c, h = self.measure(item, (*path, i), depth + 1)
                count, height = count + c, max(height, h + 1)
        return count, height


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


def _parse(
    text: str, file: str, budget: ReadBudget | None = None
) -> tuple[Any, Node | None, SourceMap]:
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None, {}
        count, _ = _Sizer(loader, file).measure(node, (), 0)
        if budget is not None:
            if budget.nodes + count > MAX_NODES:
                raise ConfigError(
                    f"this file holds {count:,} values and the files read before it "
                    f"{budget.nodes:,}; the files of one config may hold at most {MAX_NODES:,} "
                    "values together (aliases expanded)",
                    file=file,
                )
            budget.nodes += count
        data = loader.construct_document(node)
        sources: SourceMap = {"": Location(file, _line(node))}
        _record(loader, node, (), file, sources)
    except yaml.YAMLError as e:
        raise _yaml_error(e, file) from None
    except RecursionError:
        raise ConfigError(
            f"lists and mappings nest too deeply to parse; a config may nest at most {MAX_DEPTH} "
            "levels",
            file=file,
        ) from None
    finally:
        loader.dispose()
    return plain_copy(data), node, sources


def parse_yaml(
    text: str,
    file: str,
    *,
    path: Path | None = None,
    expected: str = TOP_LEVEL,
    budget: ReadBudget | None = None,
) -> ComposedConfig:
    """Parse YAML ``text`` whose top level must be a mapping; ``file`` names it in errors.

    ``expected`` says what the file should hold (in errors, which never quote its content);
    ``budget`` counts values against the limits of one config across files.
    """
    data, node, sources = _parse(text, file, budget)
    if node is None:
        raise ConfigError(f"the file is empty; expected {expected}", file=file)
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected {expected}, found {kind(data)}",
            file=file,
            line=_line(node),
        )
    p = path if path is not None else Path(file)
    return ComposedConfig(data=data, sources=sources, path=p, files=(p,))


def parse_value(text: str, file: str) -> Any:
    """Parse a YAML scalar, list or mapping (for override values), with the same checks."""
    return _parse(text, file)[0]


def is_yaml_name(path: Path) -> bool:
    """Whether ``path`` is named like a YAML file (``.yaml`` or ``.yml``)."""
    return path.suffix.lower() in YAML_SUFFIXES


def _clip(text: str) -> str:
    return text if len(text) <= 200 else text[:100] + "..." + text[-97:]


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def resolve_path(path: Path, *, file: str | None = None, key: str | None = None) -> Path:
    """``path.resolve()``, with a NUL byte, a symlink loop or an overlong name as a ConfigError
    (at ``file`` and ``key``) instead of ValueError, RuntimeError or OSError."""
    shown = _clip(display_path(path))
    if "\0" in str(path):
        raise ConfigError(f"the path {shown!r} contains a NUL character", file=file, key=key)
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise ConfigError(
            f"cannot use the path {shown!r}: {_reason(e)}", file=file, key=key
        ) from None


def check_yaml_file(target: Path, written: str) -> str | None:
    """Why the file a config names (``defaults:``, a component path) cannot be read, or None.

    It must be a regular file whose name, and whose real name after symlinks, ends in ``.yaml``
    or ``.yml``: a config cannot make envactor read (and then describe) any other file.
    """
    nul = "\0" in written
    target_text = _clip(display_path(target))
    written = _clip(written)
    if nul:
        return f"{written!r}: a path may not contain a NUL character"
    if not is_yaml_name(target):
        return f"expected a YAML file (.yaml or .yml), got {written!r}"
    try:
        real = target.resolve()
        if not target.exists():
            return f"{written!r} not found: expected {target_text}, found no such file"
        if target.is_dir():
            return f"{written!r} not found: expected a file at {target_text}, found a directory"
        if not is_yaml_name(real):
            return (
                f"{written!r} is a link to {real}, which is not named .yaml or .yml; expected "
                "a YAML file"
            )
        if not real.is_file():
            return f"expected a regular YAML file at {target_text}, found a special file"
    except (OSError, RuntimeError, ValueError) as e:
        return f"cannot use {written!r} (at {target_text}): {_reason(e)}"
    return None


def read_text(path: Path, file: str, budget: ReadBudget | None = None) -> str:
    """The UTF-8 text of ``path``; a ConfigError naming ``file`` when it cannot be read.

    Files over ``MAX_FILE_BYTES`` (or over the rest of ``budget``) and anything that is not a
    regular file are refused before reading.
    """
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError("expected a YAML file, found a directory", file=file)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("expected a YAML file, found a special file", file=file)
        if st.st_size > MAX_FILE_BYTES:
            raise ConfigError(
                f"the file is {st.st_size:,} bytes; a config file may be at most "
                f"{MAX_FILE_BYTES:,} bytes",
                file=file,
            )
        if budget is not None:
            if budget.files >= MAX_FILES:
                raise ConfigError(
                    f"this config reads more than {MAX_FILES} files (defaults: and component "
                    "files, once per path that reaches them); is a shared file included by "
                    "many others?",
                    file=file,
                )
            if budget.bytes + st.st_size > MAX_TOTAL_BYTES:
                raise ConfigError(
                    f"the files of this config hold more than {MAX_TOTAL_BYTES:,} bytes together "
                    f"({budget.files} files read before this one)",
                    file=file,
                )
            budget.files += 1
            budget.bytes += st.st_size
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(f"the file is over {MAX_FILE_BYTES:,} bytes", file=file)
        return raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except IsADirectoryError:
        raise ConfigError("expected a YAML file, found a directory", file=file) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=file) from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise ConfigError(f"cannot read: {_reason(e)}", file=file) from None


def load_yaml(
    path: str | Path, *, expected: str = TOP_LEVEL, budget: ReadBudget | None = None
) -> ComposedConfig:
    """Load one YAML file (safe loader) into a ComposedConfig with a line for every key.

    Only the file itself: a ``defaults`` key is kept as data and ``${...}`` is left as written
    (``compose`` does both). ``expected`` says what the file should hold, for errors; ``budget``
    shares the size limits (``envactor.config.limits``) across the files of one config.
    """
    p = Path(path)
    file = display_path(p)
    return parse_yaml(read_text(p, file, budget), file, path=p, expected=expected, budget=budget)
