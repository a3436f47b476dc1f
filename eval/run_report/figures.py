"""The figures of one run, read from the decisions JSONL of ``trustorch run`` in one pass.

The file is streamed line by line and never held whole: what is kept are counts and sums (per
agent, per reliability bin, per confusion cell), a bounded sample of latencies for the
percentiles (exact while a series has at most ``LATENCY_SAMPLE`` values) and at most
``max_rows`` rows of each table of abstentions, wrong answers and agent failures, with the
decisions those rows link to. Every line is checked as it is read; a bad one is an
``InputError`` naming the file, the line and the field. A last line cut short without its
newline (what a killed run leaves) is ignored and said so.

Definitions: an image is *answered* when its decision has a label (else it is an abstention);
accuracy and ECE are measured on the answered images whose truth is known, and ``accuracy_all``
counts abstentions as wrong (the figure ``trustorch run`` prints). An image is *re-evaluated*
when it used more than one round; what re-evaluation changed compares the last verdict of round
0 with the final label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InputError
from eval.metrics import DEFAULT_BINS
from eval.run_report.lines import decision_lines
from eval.run_report.stats import ConfidenceBins, LatencyStats

DEFAULT_MAX_ROWS = 500


@dataclass
class AgentStats:
    """What one agent did over the run: calls (first and second looks), failures, cost,
    latency, and on labelled images its first looks' accuracy."""

    name: str
    calls: int = 0
    second_looks: int = 0
    changed_answers: int = 0
    failures: int = 0
    cost_usd: float = 0.0
    latency: LatencyStats = field(default_factory=LatencyStats)
    first_looks_labelled: int = 0
    first_looks_correct: int = 0

    @property
    def first_look_accuracy(self) -> float | None:
        if not self.first_looks_labelled:
            return None
        return self.first_looks_correct / self.first_looks_labelled


@dataclass(frozen=True)
class ImageRow:
    """One row of a table of abstentions, wrong answers or failures; ``line`` is its anchor."""

    line: int
    image: str
    truth: str | None
    label: str | None
    confidence: float
    prediction_set: list[str]
    reason: str
    failures: list[str]


@dataclass
class RowTable:
    """At most ``cap`` rows, and how many more there were."""

    cap: int
    rows: list[ImageRow] = field(default_factory=list)
    total: int = 0

    def offer(self, row: ImageRow) -> bool:
        self.total += 1
        if len(self.rows) < self.cap:
            self.rows.append(row)
            return True
        return False

    @property
    def left_out(self) -> int:
        return self.total - len(self.rows)


@dataclass
class RunFigures:
    """Everything the report shows, accumulated decision by decision (``add``)."""

    path: str
    max_rows: int = DEFAULT_MAX_ROWS
    bins: int = DEFAULT_BINS
    images: int = 0
    answered: int = 0
    labelled: int = 0
    labelled_answered: int = 0
    correct: int = 0
    failed_images: int = 0
    agent_failures: int = 0
    reevaluated: int = 0
    reeval_changed: int = 0
    reeval_fixed: int = 0
    reeval_broke: int = 0
    cost_usd: float = 0.0
    policy_cost_usd: float = 0.0
    assessments: int = 0
    image_latency: LatencyStats = field(default_factory=LatencyStats)
    policy_latency: LatencyStats = field(default_factory=LatencyStats)
    agents: dict[str, AgentStats] = field(default_factory=dict)
    confusion: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    seen_labels: set[str] = field(default_factory=set)
    task: str | None = None
    run_config: dict[str, Any] | None = None
    other_configs: int = 0
    traces: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reliability = ConfidenceBins(self.bins)
        self.confidences = ConfidenceBins(self.bins)
        self.abstentions = RowTable(self.max_rows)
        self.wrong = RowTable(self.max_rows)
        self.failures = RowTable(self.max_rows)

    @property
    def coverage(self) -> float | None:
        return self.answered / self.images if self.images else None

    @property
    def abstained(self) -> int:
        return self.images - self.answered

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled_answered if self.labelled_answered else None

    @property
    def accuracy_all(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def reeval_rate(self) -> float | None:
        return self.reevaluated / self.images if self.images else None

    def labels(self) -> list[str]:
        """The task preset's labels in its order when the file names one, then any other."""
        from core.task import load_task, preset_names

        ordered: list[str] = []
        if self.task and self.task in preset_names():
            ordered = list(load_task(self.task).labels)
        return ordered + sorted(self.seen_labels - set(ordered))

    def add(self, n: int, d: dict[str, Any]) -> None:
        """Count one checked decision (line ``n``)."""
        self.images += 1
        label, truth, confidence = d["label"], d["truth"], d["confidence"]
        preds, assessments = d["predictions"], d["assessments"]
        self.task = self.task or d["task"]
        self.cost_usd += d["cost_usd"]
        self.image_latency.add(d["latency_s"])
        self._add_config(d.get("run"))
        for a in assessments:
            self.assessments += 1
            self.policy_cost_usd += a["cost_usd"]
            self.policy_latency.add(a["latency_s"])
        failed = self._add_agents(preds, truth)
        self.agent_failures += len(failed)
        self.seen_labels.update(x for x in (label, truth) if x is not None)
        if label is not None:
            self.answered += 1
            self.confidences.add(confidence)
        if truth is not None:
            self.labelled += 1
            self.confusion[(truth, label)] += 1
            if label is not None:
                self.labelled_answered += 1
                self.correct += int(label == truth)
                self.reliability.add(confidence, label == truth)
        if d["rounds_used"] > 1:
            self._add_reevaluation(d)
        last_reason = assessments[-1]["reason"] if assessments else ""
        row = ImageRow(
            line=n,
            image=d["image"],
            truth=truth,
            label=label,
            confidence=confidence,
            prediction_set=d["prediction_set"],
            reason=last_reason,
            failures=failed,
        )
        kept = False
        if label is None:
            kept |= self.abstentions.offer(row)
        elif truth is not None and label != truth:
            kept |= self.wrong.offer(row)
        if failed:
            self.failed_images += 1
            kept |= self.failures.offer(row)
        if kept:
            self.traces[n] = d

    def _add_agents(self, preds: list[dict[str, Any]], truth: str | None) -> list[str]:
        """Count each agent's calls of one decision; its failed calls, described."""
        first: dict[str, str | None] = {}
        last: dict[str, tuple[int, str | None]] = {}
        failed: list[str] = []
        for p in preds:
            name = p["agent"]
            agent = self.agents.get(name) or self.agents.setdefault(name, AgentStats(name))
            agent.calls += 1
            agent.cost_usd += p["cost_usd"]
            agent.latency.add(p["latency_s"])
            if p["label"] is None:
                agent.failures += 1
                failed.append(f"round {p['round']}: {name}: {p['error'] or 'no answer'}")
            if p["round"] == 0:
                first[name] = p["label"]
                if truth is not None:
                    agent.first_looks_labelled += 1
                    agent.first_looks_correct += int(p["label"] == truth)
            else:
                agent.second_looks += 1
                if p["round"] >= last.get(name, (0, None))[0]:
                    last[name] = (p["round"], p["label"])
        for name, (_, again) in last.items():
            if name in first and again != first[name]:
                self.agents[name].changed_answers += 1
        return failed

    def _add_reevaluation(self, d: dict[str, Any]) -> None:
        self.reevaluated += 1
        before = [a["label"] for a in d["assessments"] if a["round"] == 0]
        if not before:
            return
        after, truth = d["label"], d["truth"]
        self.reeval_changed += int(before[-1] != after)
        if truth is not None:
            self.reeval_fixed += int(before[-1] != truth and after == truth)
            self.reeval_broke += int(before[-1] == truth and after != truth)

    def _add_config(self, config: Any) -> None:
        if not isinstance(config, dict):
            return
        if self.run_config is None:
            self.run_config = config
        elif config != self.run_config:
            self.other_configs += 1


def read_run(
    path: str | Path,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    bins: int = DEFAULT_BINS,
    on_progress: Callable[[int], None] | None = None,
) -> RunFigures:
    """The figures of a decisions file, read once; ``on_progress(bytes)`` after each line."""
    if max_rows < 1:
        raise InputError(f"--max-rows must be at least 1, got {max_rows}")
    source = Path(path)
    figures = RunFigures(path=str(source), max_rows=max_rows, bins=bins)
    for line in decision_lines(source):
        if line.torn:
            figures.notes.append(
                f"ignored a truncated last line ({line.size} bytes): the run may still be writing"
            )
        elif line.decision is not None:
            figures.add(line.number, line.decision)
        if on_progress is not None:
            on_progress(line.size)
    if not figures.images:
        raise InputError("no decisions in the file (it is empty)", path=str(source))
    if figures.other_configs:
        figures.notes.append(
            f"{figures.other_configs} line(s) were written with another run configuration "
            "than the first line's"
        )
    return figures
