"""Helpers every CLI sub-app shares: option aliases, option checks, JSON output, tables, progress.

Option checks are typer callbacks, so they run while the command line is parsed, before a
command's body loads any model or reads any file. A bad value (``-j 0``, ``--bins 0``,
``--agent-timeout nan``, ``--method foo``) raises ``typer.BadParameter``, which the CLI root
prints as one line with exit code 2; an output path that cannot be written (``output_file``,
``output_dir``) is an ``InputError`` (exit code 1), found before any work too.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from core.errors import TrustorchError
from core.jsonio import dumps_json

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
TaskOption = Annotated[
    str, typer.Option("--task", help="Task preset name (apple-leaf) or a task JSON file.")
]

T = TypeVar("T")


def usage_error(message: str, *, option: str | None = None) -> typer.BadParameter:
    """A bad option value: the CLI root prints it on one line and exits with code 2."""
    return typer.BadParameter(message, param_hint=f"'{option}'" if option else None)


def at_least(minimum: int) -> Callable[[int | None], int | None]:
    """Option callback: an integer >= ``minimum`` (None passes: the option was not given)."""

    def check(value: int | None) -> int | None:
        if value is not None and value < minimum:
            raise usage_error(f"must be at least {minimum}, got {value}")
        return value

    return check


def number_in(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
) -> Callable[[float | None], float | None]:
    """Option callback: a finite number in [``low``, ``high``] (``(low, high]`` with
    ``low_open``); NaN and infinities are refused, which click's ``FloatRange`` lets through."""
    left = "(" if low_open else "["
    where = f"in {left}{low}, {high}]" if low is not None and high is not None else ""
    if not where:
        where = f"> {low}" if low_open else f">= {low}" if low is not None else f"<= {high}"

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        inside = math.isfinite(value)
        if low is not None:
            inside = inside and (value > low if low_open else value >= low)
        if high is not None:
            inside = inside and value <= high
        if not inside:
            raise usage_error(f"must be a number {where}, got {value}")
        return value

    return check


positive_seconds = number_in(0.0, low_open=True)
"""Option callback: a finite number of seconds > 0."""


def one_of(choices: Sequence[str] | Callable[[], Sequence[str]]) -> Callable[[T], T]:
    """Option callback: one of ``choices`` (or of what the callable lists, asked at parse time
    so listing stays out of import time)."""

    def check(value: T) -> T:
        known = list(choices() if callable(choices) else choices)
        if value is not None and value not in known:
            raise usage_error(f"{value!r} is not one of {', '.join(known)}")
        return value

    return check


def checked_by(check_value: Callable[[Any], object]) -> Callable[[T], T]:
    """Option callback from a function that raises ``TrustorchError`` or ``ValueError`` on a bad
    value (a policy name, a seed list): the error becomes a usage error (exit code 2)."""

    def check(value: T) -> T:
        if value is None:
            return value
        try:
            check_value(value)
        except (TrustorchError, ValueError) as e:
            raise usage_error(str(e)) from None
        return value

    return check


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|(cuda|xpu|npu)(:\d+)?")


def device_name(value: str | None) -> str | None:
    """Option callback: a torch device (auto, cpu, mps, cuda, cuda:1, ...)."""
    if value is not None and not DEVICE_PATTERN.fullmatch(value):
        raise usage_error(f"{value!r} is not a device (auto, cpu, mps, cuda, cuda:1, ...)")
    return value


def output_file(what: str) -> Callable[[Path | None], Path | None]:
    """Option callback: a file path that can be written (``core.files.check_output_file``)."""
    from core.files import check_output_file

    def check(value: Path | None) -> Path | None:
        if value is not None:
            check_output_file(value, what=what)
        return value

    return check


def output_dir(what: str) -> Callable[[Path | None], Path | None]:
    """Option callback: a folder that exists and can be written, or that can be made there
    (``core.files.check_output_folder``); nothing is made yet."""
    from core.files import check_output_folder

    def check(value: Path | None) -> Path | None:
        if value is not None:
            check_output_folder(value, what=what)
        return value

    return check


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
