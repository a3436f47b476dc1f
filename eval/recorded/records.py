"""Recorded, labelled predictions: the "wide" and "long" files that calibration evaluation,
trust fitting and the replay agent read.

wide CSV: one row per image; an id column (``id``, else ``image``), a truth column
(``category`` by default) and per agent ``<agent>_pred``, optional ``<agent>_conf``,
``<agent>_reason`` and ``<agent>_scores_json``. Agents are discovered from the columns.

long CSV or JSONL: one row per image and agent: ``id, agent, truth, pred``, optional
``confidence``, ``scores`` (JSON object label -> probability, or the study's list of
``{"category", "confidence"}``), ``reason`` and ``round``.

decisions JSONL: the output of ``trustorch run`` (one Decision per line), flattened into long
rows by ``eval.recorded.decisions`` (first looks, last second looks as ``<agent>@reeval``).

Error policy (the README repeats it):
- fatal, one line naming file, line and column: an empty file, a missing truth or id column,
  a column named twice in the header, no agent columns, an unparseable or out-of-range
  confidence, invalid scores JSON, a truth label outside the task's labels, a duplicated
  (id, agent, round), a true label that differs between the rows of one id (long files);
- counted and reported, never fatal: an empty prediction or a predicted label outside the
  task's labels (the agent failed to answer in the label set: kept as ``pred=None``, scored as
  wrong); an answer without a confidence (no confidence column, or an empty cell): a label-only
  answer, ``LABEL_ONLY_CONFIDENCE``.

Labels (truths, predictions, score keys) are read through one normaliser: the task's
``normalise_label`` (its synonyms, case, ``-``/``_``/space), or without a task
``core.task.label_spellings`` over the file's truths, so 'BLACK ROT', 'Black-Rot' and
'black_rot' are one label; a note says which spellings were merged or read as the task's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.types import REEVAL_SUFFIX, Prediction
from core import reading
from core.errors import InputError
from core.study import resolve_data_path
from core.tables import DEFAULT_MAX_TABLE_BYTES, read_rows
from core.task import LabelSpellings, Task, label_spellings, preset_names
from eval.recorded.decisions import decision_rows, is_decisions_header, named_preset, score_labels
from eval.recorded.fields import parse_confidence, parse_round, parse_scores

DEFAULT_TRUTH_COLUMN = "category"
LABEL_ONLY_CONFIDENCE = 1.0
"""The confidence of an answer that states none (a label-only agent): the policies that read
confidences recalibrate it to the agent's measured accuracy, the others ignore it."""


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

    def to_prediction(self, name: str | None = None, round: int | None = None) -> Prediction:
        """The Prediction this answer stands for, as agent ``name`` (default: the recorded
        agent) in ``round`` (default: the recorded round); a failure when it was no label."""
        agent = self.agent if name is None else name
        round_ = self.round if round is None else round
        if self.pred is None:
            error = f"recorded answer of '{self.agent}' is empty or outside the labels"
            return Prediction.failure(agent, error, round=round_)
        return Prediction(
            agent=agent,
            label=self.pred,
            confidence=self.confidence,
            scores=self.scores,
            reason=self.reason,
            round=round_,
        )


@dataclass
class RecordSet:
    """All records of one file, grouped by agent, with what was skipped or invalid."""

    path: str
    sha256: str
    labels: tuple[str, ...]
    records: list[Record]
    invalid_predictions: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    label_notes: list[str] = field(default_factory=list)
    """Labels read as another spelling (merged spellings, the task's): for stderr."""

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


def second_looks_as_sources(records: RecordSet) -> RecordSet:
    """``records`` with each agent's last second look (the highest round >= 1 of an id) as a
    round-0 record of ``<agent>@reeval`` and the earlier second looks left out: the shape
    decisions files are read into, in which the trust policy and the replay find an agent's
    re-evaluations. A record set without rounds >= 1 is returned as it is."""
    later = [r for r in records.records if r.round > 0]
    if not later:
        return records
    first_looks = {(r.agent, r.id) for r in records.records if r.round == 0}
    last: dict[tuple[str, str], Record] = {}
    for r in later:
        if (r.agent, r.id) not in first_looks:
            raise InputError(
                f"agent {r.agent!r} has a round {r.round} answer for id {r.id!r} but no "
                "round-0 answer (its first look)",
                path=records.path,
                line=r.line or None,
            )
        kept = last.get((r.agent, r.id))
        if kept is None or r.round >= kept.round:
            last[(r.agent, r.id)] = r
    rows = [r for r in records.records if r.round == 0]
    rows += [replace(r, agent=f"{r.agent}{REEVAL_SUFFIX}", round=0) for r in last.values()]
    return replace(records, records=rows)


def file_sha256(path: str | Path) -> str:
    """The sha256 of an input file, read in chunks under the table cap."""
    return reading.file_sha256(path, what="file", max_bytes=DEFAULT_MAX_TABLE_BYTES)


def discover_wide_agents(header: Sequence[str]) -> list[str]:
    """The agents of a wide header: every ``<agent>_pred`` column (``<agent>_conf`` optional:
    without it the agent answers labels only)."""
    return [c[: -len("_pred")] for c in header if c.endswith("_pred") and len(c) > len("_pred")]


def read_records(
    path: str | Path,
    *,
    task: Task | None = None,
    truth_column: str = DEFAULT_TRUTH_COLUMN,
    agents: Sequence[str] | None = None,
) -> RecordSet:
    """Read a wide CSV or a long CSV/JSONL of labelled predictions (format auto-detected).

    Without a task, the labels are the sorted set of truth values (for decisions see the module
    docstring). ``agents`` keeps only those. ``study:case1`` and ``study:case3`` name the
    study's files shipped with the package (``core.study``).
    """
    p = resolve_data_path(path)
    header, rows = read_rows(p)
    raw_rows = list(rows)
    notes: list[str] = []
    extra_labels: set[str] = set()
    if is_decisions_header(header):
        if task is None:
            task = named_preset(raw_rows)
            if task is not None:
                notes.append(f"labels of task '{task.name}' named in the decisions")
        flat = decision_rows(raw_rows, str(p))
        if not flat:
            raise InputError("no decision has a true label (run on labelled images)", path=str(p))
        unlabelled = len(raw_rows) - len({row["id"] for _, row in flat})
        if unlabelled:
            notes.append(f"{unlabelled} decision(s) without a true label left out")
        raw_rows = flat
        header = list(flat[0][1])
        if task is None:
            extra_labels = score_labels(flat)
    is_long = {"agent", "pred"} <= set(header)
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

    spellings: LabelSpellings | None = None
    if task is not None:
        labels = task.labels
        normalise = task.normalise_label
    else:
        truths = [str(r.get(truth_col) or "") for _, r in raw_rows]
        spellings = label_spellings(
            [*truths, *sorted(extra_labels)], also_seen=_predicted_texts(raw_rows, header)
        )
        labels = spellings.labels
        normalise = spellings.normalise
    respelled: dict[str, str] = {}

    def truth_of(n: int, row: dict[str, Any]) -> str:
        raw = str(row.get(truth_col) or "").strip()
        label = normalise(raw)
        if label is None:
            raise InputError(
                f"true label {raw!r} is not one of {list(labels)}",
                path=str(p),
                line=n,
                field=truth_col,
            )
        if raw != label:
            respelled[raw] = label
        return label

    invalid: dict[str, int] = {}
    label_only: dict[str, int] = {}

    def pred_of(agent: str, raw: Any) -> str | None:
        label = normalise(str(raw or ""))
        if label is None:
            invalid[agent] = invalid.get(agent, 0) + 1
        return label

    def confidence_of(agent: str, pred: str | None, raw: Any, n: int, column: str) -> float:
        if not pred:
            return 0.0
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            label_only[agent] = label_only.get(agent, 0) + 1
            return LABEL_ONLY_CONFIDENCE
        return parse_confidence(raw, path=str(p), line=n, column=column)

    records: list[Record] = []
    if is_long:
        seen: set[tuple[str, str, int]] = set()
        truth_line: dict[str, tuple[str, int]] = {}
        for n, row in raw_rows:
            agent = str(row.get("agent") or "").strip()
            if not agent:
                raise InputError("empty agent name", path=str(p), line=n, field="agent")
            if agents is not None and agent not in agents:
                continue
            rid = str(row.get(id_col, "")).strip()
            rnd = parse_round(row.get("round"), path=str(p), line=n, column="round")
            if (rid, agent, rnd) in seen:
                raise InputError(
                    f"duplicate row for id {rid!r}, agent {agent!r}, round {rnd}",
                    path=str(p),
                    line=n,
                )
            seen.add((rid, agent, rnd))
            truth = truth_of(n, row)
            first_truth = truth_line.setdefault(rid, (truth, n))
            if first_truth[0] != truth:
                raise InputError(
                    f"id {rid!r} has true label {truth!r} here but {first_truth[0]!r} on line "
                    f"{first_truth[1]}",
                    path=str(p),
                    line=n,
                    field=truth_col,
                )
            pred = pred_of(agent, row.get("pred"))
            conf = confidence_of(agent, pred, row.get("confidence"), n, "confidence")
            records.append(
                Record(
                    id=rid,
                    agent=agent,
                    truth=truth,
                    pred=pred,
                    confidence=conf,
                    scores=parse_scores(
                        row.get("scores"),
                        labels,
                        path=str(p),
                        line=n,
                        column="scores",
                        normalise=normalise,
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
                "no agent columns found (expected <agent>_pred, optionally <agent>_conf)",
                path=str(p),
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
                conf = confidence_of(agent, pred, row.get(conf_col), n, conf_col)
                scores_col = f"{agent}_scores_json"
                records.append(
                    Record(
                        id=rid,
                        agent=agent,
                        truth=truth,
                        pred=pred,
                        confidence=conf,
                        scores=parse_scores(
                            row.get(scores_col),
                            labels,
                            path=str(p),
                            line=n,
                            column=scores_col,
                            normalise=normalise,
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
    notes += [
        f"{agent}: {count} answer(s) without a confidence, read as labels only (confidence "
        f"{LABEL_ONLY_CONFIDENCE:g})"
        for agent, count in label_only.items()
    ]

    return RecordSet(
        path=str(p),
        sha256=file_sha256(p),
        labels=tuple(labels),
        records=records,
        invalid_predictions=invalid,
        notes=notes,
        label_notes=_spelling_notes(task, spellings, respelled),
    )


def _predicted_texts(rows: list[tuple[int, dict[str, Any]]], header: Sequence[str]) -> list[str]:
    """Every predicted label text of the rows (long ``pred``, wide ``<agent>_pred``)."""
    columns = ["pred"] if "pred" in header else [f"{a}_pred" for a in discover_wide_agents(header)]
    return [str(row.get(c) or "") for _, row in rows for c in columns]


def _spelling_notes(
    task: Task | None, spellings: LabelSpellings | None, respelled: dict[str, str]
) -> list[str]:
    """What was read as another spelling: the task's labels, merged spellings of a file read
    without a task, and a preset whose labels the file's look like."""
    if task is not None:
        if not respelled:
            return []
        pairs = "; ".join(f"{raw!r} as {label!r}" for raw, label in sorted(respelled.items()))
        return [f"true labels read as task {task.name}'s: {pairs}"]
    assert spellings is not None
    notes = [note] if (note := spellings.note()) is not None else []
    from core.task import load_task

    for name in preset_names():
        preset = load_task(name)
        mapped = [preset.normalise_label(label) for label in spellings.labels]
        same_labels = None not in mapped and len(set(mapped)) == len(mapped)
        if same_labels and mapped != list(spellings.labels):
            notes.append(
                f"the labels look like task {name}'s ({', '.join(preset.labels)}) spelled "
                f"otherwise; pass --task {name} to read them as that task's"
            )
    return notes
