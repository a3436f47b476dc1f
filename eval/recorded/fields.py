"""Field parsers shared by the record readers: confidences, rounds, score JSON. Every error is an
InputError naming the file, line and column."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from core.errors import InputError
from core.jsonio import parse_json


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
    raw: Any,
    task_labels: Sequence[str],
    *,
    path: str,
    line: int,
    column: str,
    normalise: Callable[[str], str | None] | None = None,
) -> dict[str, float] | None:
    """Scores as JSON object ``{label: p}`` or the study's list ``[{category, confidence}]``.

    Each key is read through ``normalise`` (the file's label normaliser; None: keys must be
    labels as spelled). Labels missing from the object get 0; the result is renormalised to
    sum to 1.
    """
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    data = raw
    if isinstance(raw, str):
        data = parse_json(raw, source=path, line=line, field=column, what="scores JSON")
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
    for key, value in pairs:
        label = normalise(str(key)) if normalise is not None else key
        if label not in scores:
            raise InputError(
                f"scores name unknown label {key!r} (labels: {', '.join(task_labels)}; "
                "without --task they are the file's true labels)",
                path=path,
                line=line,
                field=column,
            )
        scores[label] = parse_confidence(value, path=path, line=line, column=column)
    total = sum(scores.values())
    if total <= 0:
        raise InputError("scores sum to 0", path=path, line=line, field=column)
    return {k: v / total for k, v in scores.items()}
