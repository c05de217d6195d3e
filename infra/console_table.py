"""Console output of the command-line tools: the stdout console (`infra.plan`, `infra.preflight`,
`infra.verify`) and the checks' table of plain columns with one status column coloured by value."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def status_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    status_column: str,
    colours: Mapping[str, str],
) -> Table:
    """A table of `rows` (one string per column, markup escaped) whose `status_column` cells are
    coloured by `colours[value]`."""
    table = Table(title=escape(title))
    for column in columns:
        table.add_column(column, overflow="fold")
    status_index = list(columns).index(status_column)
    for row in rows:
        cells = [escape(cell) for cell in row]
        status = row[status_index]
        cells[status_index] = f"[{colours[status]}]{cells[status_index]}[/]"
        table.add_row(*cells)
    return table


def stdout_console() -> Console:
    """A console on stdout, 160 columns wide when stdout is not a terminal (pipes, CI logs)."""
    return Console(width=160) if not sys.stdout.isatty() else Console()
