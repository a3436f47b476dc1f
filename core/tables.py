"""Rows of a CSV or JSONL input file, with line numbers; a CSV header that names a column twice
is refused. Every error is an InputError naming the file and line."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.jsonio import parse_json


def read_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    """Header fields and (line number, row) pairs of a CSV or JSONL file (UTF-8, not empty)."""
    if not path.is_file():
        raise InputError("no such file", path=str(path))
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"not a UTF-8 text file (byte 0x{e.object[e.start]:02x} at offset {e.start})",
            path=str(path),
        ) from None
    if "\x00" in text:
        raise InputError("not a UTF-8 text file (it holds NUL bytes)", path=str(path))
    if not text.strip():
        raise InputError("file is empty", path=str(path))
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        rows: list[tuple[int, dict[str, Any]]] = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            obj = parse_json(line, source=str(path), line=n)
            if not isinstance(obj, dict):
                raise InputError("each line must be a JSON object", path=str(path), line=n)
            rows.append((n, obj))
        header = list(rows[0][1]) if rows else []
        return header, iter(rows)
    reader = csv.DictReader(text.splitlines())
    header = list(reader.fieldnames or [])
    if not header:
        raise InputError("file has no header row", path=str(path))
    check_unique_columns(header, path=str(path))

    def gen() -> Iterator[tuple[int, dict[str, Any]]]:
        for row in reader:
            if None in row:
                raise InputError(
                    "row has more fields than the header", path=str(path), line=reader.line_num
                )
            yield reader.line_num, row

    return header, gen()


def check_unique_columns(header: Sequence[str], *, path: str) -> None:
    """InputError (line 1) when a CSV header names a column twice: the reader would keep only
    the last one's values, silently."""
    twice = [column for column, n in Counter(header).items() if n > 1]
    if twice:
        raise InputError(
            f"the header names column(s) {', '.join(map(repr, twice))} more than once",
            path=path,
            line=1,
        )
