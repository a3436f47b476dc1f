"""Small HTML helpers of the run report: escaping, ``data-*`` attributes, number formats."""

from __future__ import annotations

import html
from typing import Any

NONE = "&ndash;"


def esc(value: Any) -> str:
    """HTML-escaped text of anything (quotes too); None is empty."""
    return "" if value is None else html.escape(str(value), quote=True)


def data(**values: Any) -> str:
    """``data-*`` attributes of the values that are not None (floats as their repr)."""
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        text = repr(float(value)) if isinstance(value, float) else str(value)
        parts.append(f' data-{key.replace("_", "-")}="{esc(text)}"')
    return "".join(parts)


def pct(x: float | None) -> str:
    return NONE if x is None else f"{100 * x:.1f}%"


def num(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return NONE if x is None else esc(x)
    return f"{x:.{digits}f}"


def usd(x: float) -> str:
    return f"${x:.4f}"


def seconds(x: float | None) -> str:
    return NONE if x is None else f"{x:.3f} s"


def trace_id(line: int) -> str:
    return f"trace-L{line}"
