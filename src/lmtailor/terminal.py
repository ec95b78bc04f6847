"""What the CLIs print: whole lines in a log or a pipe, tables at their own width, errors as one red line.

rich hard-wraps at the terminal's width, or at 80 columns in a pipe: a `file:line: reason` or a path would
break over two lines, and a table would cut ids to "…". Every CLI prints through these.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    err().print(f"[red]error: {escape(message)}[/red]")


def print_table(table: Table) -> None:
    """At its own width, as `docker ps` prints: rich would fit it to the terminal, or to 80 columns in a pipe,
    cutting ids and model names to "…" that no other command accepts. A narrow terminal wraps the lines."""
    Console(highlight=False, width=10_000).print(table)
