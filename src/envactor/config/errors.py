"""ConfigError and Location: every configuration problem says where it is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

OVERRIDE = "<override>"
"""The pseudo file name recorded as the source of a key set by a command-line override."""


class Location(NamedTuple):
    """Where a key was written: a file (or ``<override>``) and a 1-based line, when known."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


class ConfigError(ValueError):
    """A configuration problem, located by file, dotted key path and line.

    ``str(err)`` reads ``policy.yaml:12: policy.params.horizon: Input should be ...``; parts that
    are unknown are left out. An error that gathers several problems (``ConfigError.combine``)
    prints one per line; ``file``/``key``/``line`` are then those of the first, and ``errors``
    holds them all.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.key = key or None
        self.line = line
        self.errors: tuple[ConfigError, ...] = (self,)
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
            where += ": "
        if self.key:
            where += f"{self.key}: "
        return where + self.message

    @classmethod
    def at(cls, location: Location | None, key: str | None, message: str) -> ConfigError:
        """An error at ``key``, placed at ``location`` (file and line) when it is known."""
        if location is None:
            return cls(message, key=key)
        return cls(message, file=location.file, key=key, line=location.line)

    @classmethod
    def combine(cls, errors: Sequence[ConfigError]) -> ConfigError:
        """One error reporting all of ``errors``, one per line (the first gives the location)."""
        if not errors:
            raise ValueError("ConfigError.combine needs at least one error")
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        out = cls(first.message, file=first.file, key=first.key, line=first.line)
        out.errors = tuple(e for err in errors for e in err.errors)
        out.args = ("\n".join(str(e) for e in out.errors),)
        return out

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.message
