"""The one reader of JSON the product did not write itself: files (trust profiles, policies,
tasks, price tables), JSONL lines and JSON held in CSV cells; and the one writer of the JSON the
product writes (``dumps_json``).

Every failure is an ``InputError`` naming the source (and line), never a ``RecursionError`` or a
``JSONDecodeError``: nesting deeper than ``max_depth`` is refused before the parser sees it, and a
file is checked to be a regular file under ``max_bytes`` before it is read.

``dumps_json`` never writes ``NaN`` or ``Infinity`` (not JSON; strict parsers refuse them): a
non-finite number is written as ``null``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.reading import read_utf8_file

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    """How deep ``[``/``{`` nest in ``text``, brackets inside strings not counted."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_json(
    text: str,
    *,
    source: str | None = None,
    line: int | None = None,
    field: str | None = None,
    what: str = "JSON",
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Any:
    """``json.loads(text)``, or an InputError ``invalid {what} (...)`` naming source, line and
    field. With ``line=None`` the decoder's own line number is reported."""
    # Nesting never exceeds the number of opening brackets: most texts skip the scan.
    if text.count("[") + text.count("{") > max_depth and nesting_depth(text) > max_depth:
        raise InputError(
            f"invalid {what} (nested deeper than {max_depth} levels)",
            path=source,
            line=line,
            field=field,
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"invalid {what} ({e.msg})",
            path=source,
            line=line if line is not None else (e.lineno if source is not None else None),
            field=field,
        ) from None
    except RecursionError:
        raise InputError(
            f"invalid {what} (nested too deeply)", path=source, line=line, field=field
        ) from None


def read_text_file(path: str | Path, *, what: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` (checked before reading, and
    read without blocking on a FIFO: ``core.reading``)."""
    return read_utf8_file(path, what=what, max_bytes=max_bytes)


def read_json_file(
    path: str | Path,
    *,
    what: str,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Any:
    """The JSON value of a file (``read_text_file`` then ``parse_json``)."""
    text = read_text_file(path, what=what, max_bytes=max_bytes)
    return parse_json(text, source=str(path), max_depth=max_depth)


def finite_json_value(value: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """``value`` with every non-finite float (NaN, +-inf, numpy's too) replaced by None;
    ``default`` turns other objects (numpy scalars and arrays) into plain values first."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json_value(v, default) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json_value(v, default) for v in value]
    if value is None or isinstance(value, str | int):
        return value
    if default is not None:
        try:
            plain = default(value)
        except TypeError:
            return value
        return finite_json_value(plain, default)
    return value


def dumps_json(
    obj: Any,
    *,
    indent: int | None = None,
    ensure_ascii: bool = True,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """``json.dumps`` that writes strict JSON: non-finite numbers become ``null``."""
    options: dict[str, Any] = {
        "indent": indent,
        "ensure_ascii": ensure_ascii,
        "sort_keys": sort_keys,
        "default": default,
    }
    try:
        return json.dumps(obj, allow_nan=False, **options)
    except ValueError:  # a NaN or an infinity somewhere: the slow path cleans the whole value
        return json.dumps(finite_json_value(obj, default), allow_nan=False, **options)
