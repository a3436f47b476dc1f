"""Baseline policies: ``majority``, ``max-confidence`` and ``single:<source>``.

They use the latest answer of each agent and no trust profile, and never ask for
re-evaluation; the retrieval vote, when present, is one more source, named ``retrieval_source``
(the retriever's agent, whose own answer is then not counted a second time).
``single:<retrieval_source>`` asks for the evidence first (it has nothing else).
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.types import Prediction
from core.task import Task
from orchestrator.decision import Assessment
from orchestrator.policies.common import answer_distribution, latest_answers
from orchestrator.policies.trust import prediction_set
from orchestrator.policies.trust_sources import EVIDENCE_SOURCE, evidence_prediction
from rag.evidence import Evidence


def _sources(
    predictions: Sequence[Prediction], evidence: Evidence | None, retrieval_source: str | None
) -> list[Prediction]:
    out = [p for p in latest_answers(predictions) if p.ok]
    if evidence is not None and evidence.vote:
        out = [p for p in out if p.agent != retrieval_source]
        out.append(evidence_prediction(evidence, retrieval_source or EVIDENCE_SOURCE))
    return out


def _assessment(
    name: str,
    task: Task,
    round_: int,
    scores: dict[str, float] | None,
    reason: str,
    *,
    trusted: bool = True,
) -> Assessment:
    if scores is None:
        return Assessment.abstention(
            policy=name, labels=task.labels, round=round_, reason=reason, trusted=trusted
        )
    label = max(task.labels, key=scores.__getitem__)
    return Assessment(
        policy=name,
        round=round_,
        scores=scores,
        label=label,
        confidence=scores[label],
        trusted=trusted,
        prediction_set=prediction_set(scores, 0.95),
        reason=reason,
    )


class _PooledPolicy:
    """A baseline over every source's latest answer (and the vote): subclasses say how the
    answers are pooled (``pool``: scores and the reason)."""

    name = ""
    assess_after_retrieval = False

    def __init__(self, *, retrieval_source: str | None = None) -> None:
        self.retrieval_source = retrieval_source

    def pool(self, sources: list[Prediction], task: Task) -> tuple[dict[str, float], str]:
        raise NotImplementedError

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment:
        sources = _sources(predictions, evidence, self.retrieval_source)
        if not sources:
            return _assessment(self.name, task, round, None, "no usable answer")
        scores, reason = self.pool(sources, task)
        return _assessment(self.name, task, round, scores, reason)


class MajorityPolicy(_PooledPolicy):
    """Most frequent label among the sources; ties go to the larger summed confidence."""

    name = "majority"

    def pool(self, sources: list[Prediction], task: Task) -> tuple[dict[str, float], str]:
        votes = {y: 0.0 for y in task.labels}
        for p in sources:
            votes[str(p.label)] += 1.0 + 1e-6 * p.confidence
        total = sum(votes.values())
        return {y: v / total for y, v in votes.items()}, f"majority of {len(sources)} source(s)"


class MaxConfidencePolicy(_PooledPolicy):
    """The single most confident answer."""

    name = "max-confidence"

    def pool(self, sources: list[Prediction], task: Task) -> tuple[dict[str, float], str]:
        best = max(sources, key=lambda p: p.confidence)
        reason = f"most confident: {best.agent} {best.confidence:.3f}"
        return answer_distribution(best, task.labels), reason


class SinglePolicy:
    """One source's answer as it is (``single:rag`` waits for the retrieval vote)."""

    assess_after_retrieval = True

    def __init__(self, *, source: str, retrieval_source: str | None = None) -> None:
        self.source = source
        self.retrieval_source = retrieval_source
        self.name = f"single:{source}"

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment:
        if self.source == self.retrieval_source:
            if evidence is None or not evidence.vote:
                return _assessment(
                    self.name, task, round, None, "waiting for the retrieval vote", trusted=False
                )
            pred = evidence_prediction(evidence, self.source)
        else:
            found = [p for p in latest_answers(predictions) if p.agent == self.source]
            if not found or not found[-1].ok:
                error = found[-1].error if found else "no answer"
                return _assessment(self.name, task, round, None, f"{self.source}: {error}")
            pred = found[-1]
        scores = answer_distribution(pred, task.labels)
        return _assessment(self.name, task, round, scores, f"answer of {self.source}")
