"""Printing result tables whole: never cut at the terminal's or a pipe's width."""

from __future__ import annotations

from typing import IO, Any

__all__ = ["new_table", "print_table"]


def new_table(title: str, columns: dict[str, str]) -> Any:
    """A rich ``Table`` with ``columns`` (name -> justify); cells fold rather than truncate."""
    from rich.table import Table

    table = Table(title=title)
    for name, justify in columns.items():
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    return table


def print_table(table: Any, *, file: IO[str] | None = None) -> None:
    """Print ``table`` in full: on a terminal at its width (cells fold, none is cut); piped or
    redirected at the table's natural width, so no cell wraps or is cut whatever ``COLUMNS``."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(file=file)
    if not console.is_terminal:
        natural = Measurement.get(console, console.options.update_width(100_000), table).maximum
        console = Console(file=file, width=max(console.width, natural))
    console.print(table)
