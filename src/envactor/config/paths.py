"""Dotted key paths (``policy.params.horizon``, ``defaults[0]``) and walking config trees."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from typing import Any

Segment = str | int
"""A mapping key (always a str here) or a list index (an int)."""
KeyPath = tuple[Segment, ...]

_SEGMENT = re.compile(r"[^.\[\]\s=${}]+")
_INDEX = re.compile(r"\[(\d+)\]")
_MISSING = object()


def format_path(path: Iterable[Segment]) -> str:
    """``("model", "layers", 0, "dim")`` -> ``"model.layers[0].dim"``; ``()`` -> ``""``."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else seg
    return out


def parse_path(text: str) -> KeyPath:
    """Parse ``a.b[0].c`` (or ``a.b.0.c``) into segments; raises ValueError saying what is wrong.

    A digit-only dotted segment stays a str: it indexes a list only where the tree has one.
    """
    if not text:
        raise ValueError("the key is empty")
    out: list[Segment] = []
    pos = 0
    while pos < len(text):
        if text[pos] == "[":
            m = _INDEX.match(text, pos)
            if m is None:
                raise ValueError(f"expected a list index like [0] at position {pos} of {text!r}")
            out.append(int(m.group(1)))
            pos = m.end()
            continue
        if out:
            if text[pos] != ".":
                raise ValueError(f"expected '.' or '[' at position {pos} of {text!r}")
            pos += 1
        m = _SEGMENT.match(text, pos)
        if m is None:
            found = repr(text[pos]) if pos < len(text) else "the end"
            raise ValueError(f"expected a key name at position {pos} of {text!r}, found {found}")
        out.append(m.group(0))
        pos = m.end()
    return tuple(out)


def child(node: Any, seg: Segment) -> tuple[Segment, Any]:
    """The child of ``node`` at ``seg`` as ``(canonical segment, value)``; KeyError if none.

    Mapping keys match by their string form (YAML may produce int keys); a digit string or an
    int indexes a list.
    """
    if isinstance(node, dict):
        if isinstance(seg, str):
            if seg in node:
                return seg, node[seg]
            for k, v in node.items():
                if str(k) == seg:
                    return seg, v
        raise KeyError(seg)
    if isinstance(node, list):
        idx = seg if isinstance(seg, int) else int(seg) if seg.isdigit() else None
        if idx is not None and 0 <= idx < len(node):
            return idx, node[idx]
    raise KeyError(seg)


def lookup(data: Any, path: KeyPath) -> tuple[KeyPath, Any]:
    """Follow ``path`` into ``data``: ``(canonical path, value)``.

    Raises KeyError whose single argument is how many segments were found before failing.
    """
    node = data
    canon: list[Segment] = []
    for i, seg in enumerate(path):
        try:
            c, node = child(node, seg)
        except KeyError:
            raise KeyError(i) from None
        canon.append(c)
    return tuple(canon), node


def iter_paths(data: Any, prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """Every path below ``data`` (mapping keys as str, list indices as int), parents first."""
    if isinstance(data, dict):
        for k, v in data.items():
            p = (*prefix, str(k))
            yield p
            yield from iter_paths(v, p)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            p = (*prefix, i)
            yield p
            yield from iter_paths(v, p)


def is_under(path: str, prefix: str) -> bool:
    """Whether formatted ``path`` is ``prefix`` or lies below it."""
    if not prefix:
        return True
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def plain_copy(value: Any) -> Any:
    """Copy nested dicts and lists without keeping YAML alias sharing (unlike deepcopy)."""
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_copy(v) for v in value]
    return value


def describe(value: Any) -> str:
    """A short description of a found value for messages: ``a list``, ``an int (3)``."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    name = type(value).__name__
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    article = "an" if name[0] in "aeiou" else "a"
    return f"{article} {name} ({text})"


def kind(value: Any) -> str:
    """What sort of value this is, without quoting it: ``a mapping``, ``a string``, ``null``."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def did_you_mean(name: str, options: Iterable[Any]) -> str:
    """``" (did you mean 'policy'?)"`` or ``""``."""
    close = difflib.get_close_matches(name, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def missing_key_hint(data: Any, path: KeyPath, found: int) -> str:
    """Why ``path`` is absent from ``data`` after ``found`` segments matched, for messages."""
    _, node = lookup(data, path[:found])
    seg = path[found]
    where = format_path(path[:found]) or "the top level"
    if isinstance(node, dict):
        names = [str(k) for k in node]
        keys = ", ".join(names[:20]) + (f", ... ({len(names)} keys)" if len(names) > 20 else "")
        keys = keys or "none"
        return f"no key {str(seg)!r} under {where} (keys: {keys}){did_you_mean(str(seg), node)}"
    if isinstance(node, list):
        return f"{where} is a list of {len(node)} items; {seg!r} is not an index in it"
    return f"{where} is {describe(node)}, not a mapping"
