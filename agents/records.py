"""Recorded, labelled predictions: the "wide" and "long" files that calibration evaluation,
trust fitting and the replay agent read.

wide CSV: one row per image; an id column (``id``, else ``image``), a truth column
(``category`` by default) and per agent ``<agent>_pred``, ``<agent>_conf``, optional
``<agent>_reason`` and ``<agent>_scores_json``. Agents are discovered from the columns.

long CSV or JSONL: one row per image and agent: ``id, agent, truth, pred, confidence``,
optional ``scores`` (JSON object label -> probability, or the study's list of
``{"category", "confidence"}``), ``reason`` and ``round``.

decisions JSONL: the output of ``trustorch run`` (one Decision per line). Every decision with a
known truth gives per agent its first look (round 0) under the agent's name and its LAST second
look (the highest round >= 1; earlier re-evaluations are dropped) under ``<agent>@reeval``, the
name the trust policy looks its profile up by. The retrieval vote of the decision's evidence is
a first look of ``retrieval`` (the name the policy files it under) unless that agent answered
itself. Without a task argument the labels are those of
the preset named in the decisions' ``task``, else the truths and the scores' labels together.

Error policy (the README repeats it):
- fatal, one line naming file, line and column: an empty file, a missing truth or id column,
  no agent columns, an unparseable or out-of-range confidence, invalid scores JSON, a truth
  label outside the task's labels, a duplicated (id, agent, round);
- counted and reported, never fatal: an empty prediction or a predicted label outside the
  task's labels (the agent failed to answer in the label set: kept as ``pred=None``, scored as
  wrong).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.errors import InputError
from agents.types import Task

DEFAULT_TRUTH_COLUMN = "category"
REEVAL_SUFFIX = "@reeval"
EVIDENCE_AGENT = "retrieval"


@dataclass(frozen=True)
class Record:
    """One agent's recorded answer on one labelled image."""

    id: str
    agent: str
    truth: str
    pred: str | None
    confidence: float
    scores: dict[str, float] | None = None
    reason: str = ""
    round: int = 0
    image: str = ""
    line: int = 0


@dataclass
class RecordSet:
    """All records of one file, grouped by agent, with what was skipped or invalid."""

    path: str
    sha256: str
    labels: tuple[str, ...]
    records: list[Record]
    invalid_predictions: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def agents(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.setdefault(r.agent, None)
        return list(seen)

    def for_agent(self, agent: str) -> list[Record]:
        rows = [r for r in self.records if r.agent == agent]
        if not rows:
            raise InputError(
                f"no records for agent '{agent}' (agents: {self.agents})", path=self.path
            )
        return rows

    def ids(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.setdefault(r.id, None)
        return list(seen)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _parse_confidence(text: Any, *, path: str, line: int, column: str) -> float:
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


def _parse_round(raw: Any, *, path: str, line: int, column: str) -> int:
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
        scores[label] = _parse_confidence(value, path=path, line=line, column=column)
    total = sum(scores.values())
    if total <= 0:
        raise InputError("scores sum to 0", path=path, line=line, field=column)
    return {k: v / total for k, v in scores.items()}


def _read_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    """Header fields and (line number, row) pairs of a CSV or JSONL file."""
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

    def gen() -> Iterator[tuple[int, dict[str, Any]]]:
        for row in reader:
            if None in row:
                raise InputError(
                    "row has more fields than the header", path=str(path), line=reader.line_num
                )
            yield reader.line_num, row

    return header, gen()


def discover_wide_agents(header: Sequence[str]) -> list[str]:
    cols = set(header)
    return [c[: -len("_pred")] for c in header if c.endswith("_pred") and f"{c[:-5]}_conf" in cols]


def _decision_predictions(
    n: int, decision: dict[str, Any], path: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(round, prediction) of one decision line's predictions, validated."""
    preds = decision.get("predictions")
    if preds is None:
        return
    if not isinstance(preds, list):
        raise InputError("must be a list of predictions", path=path, line=n, field="predictions")
    for i, pred in enumerate(preds):
        where = f"predictions[{i}]"
        if not isinstance(pred, dict):
            raise InputError("must be a prediction object", path=path, line=n, field=where)
        yield _parse_round(pred.get("round"), path=path, line=n, column=f"{where}.round"), pred


def _decision_rows(
    rows: list[tuple[int, dict[str, Any]]], path: str
) -> list[tuple[int, dict[str, Any]]]:
    """Flatten decision lines into long rows: per agent its first look and its last second look."""
    flat: list[tuple[int, dict[str, Any]]] = []
    for n, decision in rows:
        truth = decision.get("truth")
        if not truth:
            continue
        looks = [
            (rnd, str(pred.get("agent", "")), pred)
            for rnd, pred in _decision_predictions(n, decision, path)
        ]
        last: dict[str, int] = {}
        for i, (rnd, agent, _) in enumerate(looks):
            if rnd > 0 and (agent not in last or rnd >= looks[last[agent]][0]):
                last[agent] = i
        evidence = decision.get("evidence")
        vote = evidence.get("vote") if isinstance(evidence, dict) else None
        if (
            isinstance(vote, dict)
            and vote
            and not any(agent == EVIDENCE_AGENT and rnd == 0 for rnd, agent, _ in looks)
        ):
            best = max(vote, key=vote.__getitem__)
            looks.append(
                (0, EVIDENCE_AGENT, {"label": best, "confidence": vote[best], "scores": vote})
            )
        for i, (rnd, agent, pred) in enumerate(looks):
            if rnd > 0 and last[agent] != i:
                continue
            flat.append(
                (
                    n,
                    {
                        "id": decision.get("sha256", ""),
                        "image": decision.get("image", ""),
                        "agent": agent if rnd == 0 else f"{agent}{REEVAL_SUFFIX}",
                        "truth": truth,
                        "pred": pred.get("label"),
                        "confidence": pred.get("confidence"),
                        "scores": pred.get("scores"),
                        "reason": pred.get("reason", ""),
                        "round": 0,
                    },
                )
            )
    return flat


def _named_preset(rows: list[tuple[int, dict[str, Any]]]) -> Task | None:
    """The task preset every decision line names, when there is exactly one such preset."""
    from agents.tasks import load_task, preset_names

    names = {str(d.get("task") or "") for _, d in rows}
    if len(names) != 1:
        return None
    name = names.pop()
    return load_task(name) if name in preset_names() else None


def _score_labels(rows: list[tuple[int, dict[str, Any]]]) -> set[str]:
    """Labels named by the rows' scores (object keys or the study's ``category`` entries)."""
    found: set[str] = set()
    for _, row in rows:
        scores = row.get("scores")
        if isinstance(scores, dict):
            found.update(str(k) for k in scores)
        elif isinstance(scores, list):
            found.update(
                str(x["category"]) for x in scores if isinstance(x, dict) and "category" in x
            )
    return found


def read_records(
    path: str | Path,
    *,
    task: Task | None = None,
    truth_column: str = DEFAULT_TRUTH_COLUMN,
    agents: Sequence[str] | None = None,
) -> RecordSet:
    """Read a wide CSV or a long CSV/JSONL of labelled predictions (format auto-detected).

    Without a task, the labels are the sorted set of truth values (for decisions see the module
    docstring). ``agents`` keeps only those.
    """
    p = Path(path)
    header, rows = _read_rows(p)
    raw_rows = list(rows)
    notes: list[str] = []
    extra_labels: set[str] = set()
    if {"predictions", "sha256"} <= set(header):
        if task is None:
            task = _named_preset(raw_rows)
            if task is not None:
                notes.append(f"labels of task '{task.name}' named in the decisions")
        flat = _decision_rows(raw_rows, str(p))
        if not flat:
            raise InputError("no decision has a true label (run on labelled images)", path=str(p))
        unlabelled = len(raw_rows) - len({row["id"] for _, row in flat})
        if unlabelled:
            notes.append(f"{unlabelled} decision(s) without a true label left out")
        raw_rows = flat
        header = list(flat[0][1])
        if task is None:
            extra_labels = _score_labels(flat)
    is_long = {"agent", "pred", "confidence"} <= set(header)
    if not raw_rows:
        raise InputError("file has a header but no rows", path=str(p))
    truth_col = (
        "truth"
        if is_long and truth_column == DEFAULT_TRUTH_COLUMN and "truth" in header
        else truth_column
    )
    if truth_col not in header:
        raise InputError(
            f"missing truth column '{truth_col}' (columns: {', '.join(header)}); "
            "pass --truth-column",
            path=str(p),
        )
    id_col = "id" if "id" in header else ("image" if "image" in header else None)
    if id_col is None:
        raise InputError("missing id column ('id' or 'image')", path=str(p))

    if task is not None:
        labels = task.labels
    else:
        truths = {str(r.get(truth_col, "")).strip() for _, r in raw_rows} - {""}
        labels = tuple(sorted(truths | extra_labels))

    def truth_of(n: int, row: dict[str, Any]) -> str:
        raw = str(row.get(truth_col) or "").strip()
        label = task.normalise_label(raw) if task is not None else (raw or None)
        if label is None or label not in labels:
            raise InputError(
                f"true label {raw!r} is not one of {list(labels)}",
                path=str(p),
                line=n,
                field=truth_col,
            )
        return label

    invalid: dict[str, int] = {}

    def pred_of(agent: str, raw: Any) -> str | None:
        text = str(raw or "").strip()
        label = (
            task.normalise_label(text) if task is not None else (text if text in labels else None)
        )
        if label is None:
            invalid[agent] = invalid.get(agent, 0) + 1
        return label

    records: list[Record] = []
    if is_long:
        seen: set[tuple[str, str, int]] = set()
        for n, row in raw_rows:
            agent = str(row.get("agent") or "").strip()
            if not agent:
                raise InputError("empty agent name", path=str(p), line=n, field="agent")
            if agents is not None and agent not in agents:
                continue
            rid = str(row.get(id_col, "")).strip()
            rnd = _parse_round(row.get("round"), path=str(p), line=n, column="round")
            if (rid, agent, rnd) in seen:
                raise InputError(
                    f"duplicate row for id {rid!r}, agent {agent!r}, round {rnd}",
                    path=str(p),
                    line=n,
                )
            seen.add((rid, agent, rnd))
            pred = pred_of(agent, row.get("pred"))
            conf = (
                _parse_confidence(row.get("confidence"), path=str(p), line=n, column="confidence")
                if pred
                else 0.0
            )
            records.append(
                Record(
                    id=rid,
                    agent=agent,
                    truth=truth_of(n, row),
                    pred=pred,
                    confidence=conf,
                    scores=parse_scores(
                        row.get("scores"), labels, path=str(p), line=n, column="scores"
                    ),
                    reason=str(row.get("reason") or ""),
                    round=rnd,
                    image=str(row.get("image") or ""),
                    line=n,
                )
            )
    else:
        found = discover_wide_agents(header)
        if not found:
            raise InputError(
                "no agent columns found (expected <agent>_pred and <agent>_conf)", path=str(p)
            )
        if agents is not None:
            missing = [a for a in agents if a not in found]
            if missing:
                raise InputError(f"agents {missing} not in file (found: {found})", path=str(p))
            found = [a for a in found if a in agents]
        seen_ids: set[str] = set()
        for n, row in raw_rows:
            rid = str(row.get(id_col, "")).strip()
            if rid in seen_ids:
                raise InputError(f"duplicate id {rid!r}", path=str(p), line=n, field=id_col)
            seen_ids.add(rid)
            truth = truth_of(n, row)
            for agent in found:
                pred = pred_of(agent, row.get(f"{agent}_pred"))
                conf_col = f"{agent}_conf"
                conf = (
                    _parse_confidence(row.get(conf_col), path=str(p), line=n, column=conf_col)
                    if pred
                    else 0.0
                )
                scores_col = f"{agent}_scores_json"
                records.append(
                    Record(
                        id=rid,
                        agent=agent,
                        truth=truth,
                        pred=pred,
                        confidence=conf,
                        scores=parse_scores(
                            row.get(scores_col), labels, path=str(p), line=n, column=scores_col
                        ),
                        reason=str(row.get(f"{agent}_reason") or ""),
                        image=str(row.get("image") or ""),
                        line=n,
                    )
                )
    notes += [
        f"{agent}: {count} prediction(s) empty or outside the label set, scored as wrong"
        for agent, count in invalid.items()
    ]
    return RecordSet(
        path=str(p),
        sha256=file_sha256(p),
        labels=tuple(labels),
        records=records,
        invalid_predictions=invalid,
        notes=notes,
    )
