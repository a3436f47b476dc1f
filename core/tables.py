"""Rows of a CSV or JSONL input file, with line numbers; a CSV header that names a column twice
is refused. Every error is an InputError naming the file and line. Files are read through
``core.reading`` (a regular file under a byte cap, never blocking on a FIFO)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.jsonio import parse_json
from core.reading import read_utf8_file

DEFAULT_MAX_TABLE_BYTES = 512 * 1024 * 1024


def read_rows(
    path: Path, *, max_bytes: int = DEFAULT_MAX_TABLE_BYTES
) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    """Header fields and (line number, row) pairs of a CSV or JSONL file (UTF-8, not empty, a
    regular file of at most ``max_bytes``). A CSV row's line is the line it starts on; a quoted
    field may hold line breaks."""
    text = read_utf8_file(path, what="file", max_bytes=max_bytes)
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
    records = csv_records(text, path=str(path))
    first = next(records, None)
    header = first[1] if first is not None else []
    if not header:
        raise InputError("file has no header row", path=str(path))
    check_unique_columns(header, path=str(path))

    def gen() -> Iterator[tuple[int, dict[str, Any]]]:
        for line, fields in records:
            if len(fields) > len(header):
                raise InputError("row has more fields than the header", path=str(path), line=line)
            padded = fields + [None] * (len(header) - len(fields))
            yield line, dict(zip(header, padded, strict=True))

    return header, gen()


def csv_records(text: str, *, path: str) -> Iterator[tuple[int, list[str]]]:
    """(line it starts on, fields) of each non-blank CSV record of ``text`` (the file ``path``):
    parsed by the ``csv`` module over the text as it is, so a quoted field keeps its line
    breaks and line numbers count the breaks inside quotes."""
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise InputError(f"not a readable CSV file ({e})", path=path, line=start) from None
        if fields:
            yield start, fields
        start = reader.line_num + 1


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
