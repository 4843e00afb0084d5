"""argparse ``type=`` checks for numeric flags: a bad value (``inf``, ``nan``, ``0``, ``-1``,
``abc``) is refused while parsing, and argparse's error names the flag and the value."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["OFF", "number", "or_off"]

OFF = "off"
"""What a limit flag takes to turn its limit off."""


def number(
    kind: type[int] | type[float] = float,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> Callable[[str], int | float]:
    """An argparse type: a finite ``kind`` with the given bounds (``gt`` / ``ge`` below, ``le``
    above), else ``ArgumentTypeError`` saying what was expected and what came."""
    bounds = [f"{op} {v:g}" for op, v in ((">", gt), (">=", ge), ("<=", le)) if v is not None]
    what = " ".join(filter(None, ["an integer" if kind is int else "a finite number",
                                  " and ".join(bounds)]))  # fmt: skip

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        bad = not math.isfinite(value)
        bad = bad or (gt is not None and not value > gt) or (ge is not None and not value >= ge)
        if bad or (le is not None and not value <= le):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    parse.expected = what  # type: ignore[attr-defined]
    return parse


def or_off(parse: Callable[[str], int | float]) -> Callable[[str], int | float | str]:
    """``parse``, or the string ``"off"``."""

    def parse_or_off(text: str) -> int | float | str:
        if text.strip().lower() == OFF:
            return OFF
        try:
            return parse(text)
        except argparse.ArgumentTypeError:
            what = getattr(parse, "expected", "a value")
            raise argparse.ArgumentTypeError(f"expected {what} or {OFF!r}, got {text!r}") from None

    parse_or_off.__name__ = getattr(parse, "__name__", "value")
    return parse_or_off
