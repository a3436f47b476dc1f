"""Helpers every CLI sub-app shares: option aliases, JSON output, tables, progress."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from core.jsonio import dumps_json

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
TaskOption = Annotated[
    str, typer.Option("--task", help="Task preset name (apple-leaf) or a task JSON file.")
]


def emit_json(obj: Any) -> None:
    """One JSON object on stdout (numpy scalars converted), nothing else."""
    sys.stdout.write(dumps_json(obj, indent=2, default=_to_plain) + "\n")
    sys.stdout.flush()


def _to_plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def stdout_console() -> Console:
    return Console(soft_wrap=False)


def stderr_console() -> Console:
    return Console(stderr=True)


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    console: Console | None = None,
) -> None:
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    (console or stdout_console()).print(table)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def progress_bar(*, disable: bool = False) -> Progress:
    """A progress bar on stderr (stdout stays clean for --json)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        disable=disable,
        transient=False,
    )
