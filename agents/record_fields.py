"""Field parsers shared by the record readers: confidences, rounds, score JSON, and the rows of a
CSV or JSONL file. Every error is an InputError naming the file, line and column."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agents.errors import InputError


def parse_confidence(text: Any, *, path: str, line: int, column: str) -> float:
    """A probability in [0, 1]: a number, its text, or a percentage (``"85%"``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip() if text is not None else ""
        if raw == "":
            raise InputError("empty confidence", path=path, line=line, field=column)
        try:
            value = float(raw.rstrip("%")) / (100.0 if raw.endswith("%") else 1.0)
        except ValueError:
            raise InputError(
                f"cannot parse confidence {raw!r}", path=path, line=line, field=column
            ) from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InputError(f"confidence {value} outside [0, 1]", path=path, line=line, field=column)
    return value


def parse_round(raw: Any, *, path: str, line: int, column: str) -> int:
    """A round number: a whole number >= 0 (int, integral float or text); empty means 0."""
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return 0
    value: float | None = None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            value = None
    if value is None or not value.is_integer() or value < 0:
        raise InputError(
            f"round must be a whole number >= 0, got {raw!r}", path=path, line=line, field=column
        )
    return int(value)


def parse_scores(
    raw: Any, task_labels: Sequence[str], *, path: str, line: int, column: str
) -> dict[str, float] | None:
    """Scores as JSON object ``{label: p}`` or the study's list ``[{category, confidence}]``.

    Labels missing from the object get 0; the result is renormalised to sum to 1.
    """
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    data = raw
    if isinstance(raw, str):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(
                f"invalid scores JSON ({e.msg})", path=path, line=line, field=column
            ) from None
    pairs: list[tuple[Any, Any]]
    if isinstance(data, dict):
        pairs = list(data.items())
    elif isinstance(data, list) and all(isinstance(x, dict) for x in data):
        try:
            pairs = [(x["category"], x["confidence"]) for x in data]
        except KeyError as e:
            raise InputError(
                f"scores entry without {e}", path=path, line=line, field=column
            ) from None
    else:
        raise InputError(
            "scores must be a JSON object label -> probability", path=path, line=line, field=column
        )
    scores = {label: 0.0 for label in task_labels}
    for label, value in pairs:
        if label not in scores:
            raise InputError(
                f"scores name unknown label {label!r}", path=path, line=line, field=column
            )
        scores[label] = parse_confidence(value, path=path, line=line, column=column)
    total = sum(scores.values())
    if total <= 0:
        raise InputError("scores sum to 0", path=path, line=line, field=column)
    return {k: v / total for k, v in scores.items()}


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
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON ({e.msg})", path=str(path), line=n) from None
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
