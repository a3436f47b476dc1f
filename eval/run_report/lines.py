"""The lines of a decisions JSONL, streamed and checked one at a time.

Each line is read with a cap on its length, decoded as UTF-8 and parsed by ``core.jsonio``;
the fields the report reads are checked (types, ranges) and defaulted, and a bad one is an
``InputError`` naming the file, the line and the field. A last line cut short without its
newline (what a killed run leaves) is reported as dropped rather than refused.
"""

from __future__ import annotations

import math
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from core.errors import InputError, os_reason
from core.jsonio import parse_json
from eval.recorded.fields import parse_confidence, parse_round

MAX_LINE_BYTES = 16 * 1024 * 1024


class _Line:
    """Checks of one line's fields; an error names the file, the line and the field."""

    def __init__(self, path: str, line: int) -> None:
        self.path = path
        self.line = line

    def error(self, message: str, where: str | None = None) -> InputError:
        return InputError(message, path=self.path, line=self.line, field=where)

    def number(self, obj: dict[str, Any], key: str, where: str = "") -> float:
        """A finite number >= 0 (missing: 0)."""
        value = obj.get(key)
        if value is None:
            return 0.0
        if type(value) in (int, float) and math.isfinite(value) and value >= 0:
            return float(value)
        kind = "a finite number >= 0" if isinstance(value, (int, float)) else "a number"
        raise self.error(f"{key} must be {kind}, got {value!r}", f"{where}{key}")

    def text(self, obj: dict[str, Any], key: str, where: str = "") -> str | None:
        value = obj.get(key)
        if value is None or isinstance(value, str):
            return value or None
        raise self.error(f"{key} must be text or null, got {value!r}", f"{where}{key}")

    def round(self, obj: dict[str, Any], key: str, where: str = "", default: int = 0) -> int:
        value = obj.get(key, default)
        if type(value) is int and value >= 0:
            return value
        return parse_round(value, path=self.path, line=self.line, column=f"{where}{key}")

    def objects(self, value: Any, key: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
            raise self.error(f"{key} must be a list of objects", key)
        return value


def check_decision(obj: Any, *, path: str, line: int) -> dict[str, Any]:
    """The decision of one line with the fields the report reads checked and defaulted."""
    at = _Line(path, line)
    if not isinstance(obj, dict) or not isinstance(obj.get("sha256"), str):
        raise at.error("not a decision of trustorch run (no sha256)")
    if not isinstance(obj.get("predictions"), list):
        raise at.error("must be a list of predictions", "predictions")
    d = dict(obj)
    for key in ("label", "truth", "task", "image"):
        d[key] = at.text(obj, key)
    d["image"] = d["image"] or d["sha256"]
    d["confidence"] = (
        parse_confidence(obj.get("confidence", 0.0), path=path, line=line, column="confidence")
        if d["label"] is not None
        else 0.0
    )
    d["cost_usd"] = at.number(obj, "cost_usd")
    d["latency_s"] = at.number(obj, "latency_s")
    pset = obj.get("prediction_set") or []
    if not isinstance(pset, list):
        raise at.error("prediction_set must be a list of labels", "prediction_set")
    d["prediction_set"] = [str(x) for x in pset]
    preds = []
    for i, raw in enumerate(at.objects(obj["predictions"], "predictions")):
        w = f"predictions[{i}]."
        agent = raw.get("agent")
        if not isinstance(agent, str) or not agent:
            raise at.error(f"agent must be a name, got {agent!r}", f"{w}agent")
        p = dict(raw)
        p["label"] = at.text(raw, "label", w)
        p["error"] = at.text(raw, "error", w)
        p["round"] = at.round(raw, "round", w)
        p["cost_usd"] = at.number(raw, "cost_usd", w)
        p["latency_s"] = at.number(raw, "latency_s", w)
        preds.append(p)
    d["predictions"] = preds
    assessments = []
    for i, raw in enumerate(at.objects(obj.get("assessments"), "assessments")):
        w = f"assessments[{i}]."
        a = dict(raw)
        a["label"] = at.text(raw, "label", w)
        a["round"] = at.round(raw, "round", w)
        a["reason"] = str(raw.get("reason") or "")
        a["cost_usd"] = at.number(raw, "cost_usd", w)
        a["latency_s"] = at.number(raw, "latency_s", w)
        assessments.append(a)
    d["assessments"] = assessments
    rounds = 1 + max((p["round"] for p in preds), default=0)
    d["rounds_used"] = at.round(obj, "rounds_used", default=rounds)
    return d


class Line(NamedTuple):
    """One line of the file: its number, its size in bytes, and its checked decision (None for
    a blank line, and for a last line cut short, which is then ``torn``)."""

    number: int
    size: int
    decision: dict[str, Any] | None
    torn: bool = False


def decision_lines(path: Path) -> Iterator[Line]:
    """The file's lines, streamed, each checked as it is read."""
    where = str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError("no such file", path=where) from None
    except OSError as e:
        raise InputError(f"cannot read the decisions ({os_reason(e)})", path=where) from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(
            "not a regular file (give the .jsonl that trustorch run wrote)", path=where
        )
    try:
        handle = path.open("rb")
    except OSError as e:
        raise InputError(f"cannot read the decisions ({os_reason(e)})", path=where) from None
    with handle:
        n = 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            n += 1
            if len(raw) > MAX_LINE_BYTES:
                raise InputError(f"line longer than {MAX_LINE_BYTES} bytes", path=where, line=n)
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError:
                raise InputError("not a UTF-8 line", path=where, line=n) from None
            if not text.strip():
                yield Line(n, len(raw), None)
                continue
            try:
                obj = parse_json(text, source=where, line=n, what="JSON line")
            except InputError:
                if raw.endswith(b"\n"):
                    raise
                yield Line(n, len(raw), None, torn=True)
                return
            yield Line(n, len(raw), check_decision(obj, path=where, line=n))
