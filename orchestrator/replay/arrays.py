"""Replay without the graph: the same decisions as ``orchestrator.graph`` on recorded rows.

The graph runs one image at a time through LangGraph; on recorded answers every step but the
policy's arithmetic is bookkeeping, so a fold of thousands of rows is decided here instead:

- the answers are the replay agents' and the recorded retriever's own (``ReplayAgent.answer``,
  ``RecordedRetriever.evidence``), looked up by the same image identities;
- the ``trust`` policy scores every row of a stage at once (``TrustPolicy.assess_columns``, the
  array fusion core), the deterministic baselines (``majority``, ``max-confidence``,
  ``single:<source>``) and the fitted ``stacking`` and ``dawid-skene`` families are asked row by
  row through their own ``assess``; a fitted ``select`` policy is decided as the family it
  chose (it hands every assessment to it);
- ``walk`` follows each row through the routers' rules (``orchestrator.routers``): trusted ->
  finalize, else retrieve once, assess again with the evidence, re-evaluate the agents named,
  up to ``max_rounds``.

A policy this module does not know (the ``llm`` policy, one of a plug-in) has no array path:
``engine_for`` says ``graph`` and the replay runs the graph. The replay tests compare the two
paths decision by decision.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agents.types import RETRIEVAL_AGENT, Prediction
from core.images import LabelledImage
from core.task import Task
from orchestrator.decision import Decision
from orchestrator.policies.base import FusionPolicy
from orchestrator.policies.baselines import MajorityPolicy, MaxConfidencePolicy, SinglePolicy
from orchestrator.policies.families import FamilyPolicy
from orchestrator.policies.select import SelectPolicy
from orchestrator.policies.trust import AnswerColumn, StageVerdicts, TrustPolicy
from orchestrator.policies.trust_sources import EVIDENCE_SOURCE, evidence_prediction, profile_key
from orchestrator.replay.agent import ReplayAgent
from orchestrator.replay.retriever import RecordedRetriever
from rag.evidence import Evidence

DIRECT_POLICIES = (MajorityPolicy, MaxConfidencePolicy, SinglePolicy, FamilyPolicy)


@dataclass(frozen=True)
class RowDecision:
    """What the replay reports of one decision (a graph ``Decision`` without its trace)."""

    image: str
    truth: str | None
    label: str | None
    confidence: float
    rounds_used: int
    calls: int
    """Agent answers it took (first looks and second looks; retrieval is not one)."""
    probabilities: tuple[float, ...] = ()
    """The distribution the decision was read from, in the task's label order."""

    @property
    def abstained(self) -> bool:
        return self.label is None

    @property
    def reevaluated(self) -> bool:
        return self.rounds_used > 1

    @classmethod
    def of(cls, decision: Decision, labels: Sequence[str] = ()) -> RowDecision:
        """The decision's figures; with ``labels``, its final scores in that order too."""
        scores = decision.assessments[-1].scores if decision.assessments else {}
        return cls(
            image=decision.image,
            truth=decision.truth,
            label=decision.label,
            confidence=decision.confidence,
            rounds_used=decision.rounds_used,
            calls=len(decision.predictions),
            probabilities=tuple(scores.get(y, 0.0) for y in labels) if scores else (),
        )


@dataclass(frozen=True)
class Verdict:
    """One assessment, as far as routing and the decision need it."""

    label: str | None
    confidence: float
    trusted: bool
    reevaluate: Sequence[str]
    probabilities: tuple[float, ...] = ()


Answered = Sequence[tuple[int, Sequence[str]]]
"""The agents that answered, by round, oldest first."""


class RowAssessor(Protocol):
    """Assesses row ``row`` after the answers ``answered``, with or without the evidence."""

    async def __call__(
        self, row: int, answered: Answered, evidence: bool, round_: int, final: bool
    ) -> Verdict: ...


def deciding_policy(policy: FusionPolicy) -> FusionPolicy:
    """The policy whose answers are the decisions: the family a fitted ``select`` chose (it
    passes every assessment on to it), else the policy itself."""
    return policy.policy_ if isinstance(policy, SelectPolicy) else policy


def engine_for(policy: FusionPolicy) -> str:
    """``arrays`` for the trust policy, ``direct`` for the deterministic baselines and the
    stacking and Dawid-Skene families, else ``graph`` (``select``: its chosen family's)."""
    policy = deciding_policy(policy)
    if isinstance(policy, TrustPolicy):
        return "arrays"
    return "direct" if isinstance(policy, DIRECT_POLICIES) else "graph"


class RecordedRows:
    """The recorded answers of some rows, as the graph's agents and retriever give them."""

    def __init__(
        self,
        images: Sequence[LabelledImage],
        agents: Sequence[ReplayAgent],
        retriever: RecordedRetriever | None,
        task: Task,
    ) -> None:
        self.images = list(images)
        self.agents = {a.name: a for a in agents}
        self.retriever = retriever
        self.task = task
        self.has_vote = [retriever is not None and retriever.has_vote(li.image) for li in images]
        self._answers: dict[tuple[str, int], list[Prediction]] = {}

    def answers(self, agent: str, round_: int) -> list[Prediction]:
        """Agent ``agent``'s answer on every row in round ``round_``."""
        key = (agent, round_)
        if key not in self._answers:
            source = self.agents[agent]
            self._answers[key] = [source.answer(li.image, round_) for li in self.images]
        return self._answers[key]

    def evidence(self, row: int) -> Evidence | None:
        """The evidence the graph's retrieve node hands on (None where retrieval fails)."""
        if self.retriever is None or not self.has_vote[row]:
            return None
        found = self.retriever.evidence(self.images[row].image, self.task)
        if found.retriever:
            return found
        name = str(getattr(self.retriever, "name", "") or RETRIEVAL_AGENT)
        return dataclasses.replace(found, retriever=name)


class TrustAssessor:
    """The trust policy's verdicts from whole-stage arrays (``TrustPolicy.assess_columns``)."""

    def __init__(self, policy: TrustPolicy, rows: RecordedRows) -> None:
        self.policy = policy
        self.rows = rows
        self.vote_name = policy.retrieval_source or EVIDENCE_SOURCE
        self._stages: dict[tuple[str, int, tuple[str, ...]], StageVerdicts] = {}
        self._votes: list[Prediction | None] | None = None

    def _vote_column(self) -> AnswerColumn:
        if self._votes is None:
            evidence = (self.rows.evidence(i) for i in range(len(self.rows.images)))
            self._votes = [
                evidence_prediction(e, self.vote_name) if e is not None and e.vote else None
                for e in evidence
            ]
        return AnswerColumn(key=self.vote_name, agent=self.vote_name, answers=self._votes)

    def _columns(self, stage: str, round_: int, again: tuple[str, ...]) -> list[AnswerColumn]:
        """The sources ``assess`` fuses at ``stage``, in its order: each agent's latest answer
        (first looks too with ``keep_first_looks``), then the vote."""
        rows, keep = self.rows, self.policy.keep_first_looks
        columns = []
        for agent in rows.agents:
            if agent in again and not keep:
                key = profile_key(agent, round_)
                columns.append(AnswerColumn(key, agent, rows.answers(agent, round_)))
            else:
                columns.append(AnswerColumn(agent, agent, rows.answers(agent, 0)))
        if keep:
            for agent in again:
                key = profile_key(agent, round_)
                columns.append(AnswerColumn(key, agent, rows.answers(agent, round_)))
        if stage != "first" and rows.retriever is not None:
            columns.append(self._vote_column())
        return columns

    def verdicts(self, stage: str, round_: int, again: tuple[str, ...]) -> StageVerdicts:
        key = (stage, round_, again)
        if key not in self._stages:
            columns = self._columns(stage, round_, again)
            self._stages[key] = self.policy.assess_columns(self.rows.task, stage, columns)
        return self._stages[key]

    async def __call__(
        self, row: int, answered: Answered, evidence: bool, round_: int, final: bool
    ) -> Verdict:
        again = tuple(dict.fromkeys(name for r, names in answered if r > 0 for name in names))
        if round_ > 0:
            stage = "reeval"
            if any(tuple(names) != again for r, names in answered if r > 0):
                raise RuntimeError("the trust policy asked different agents in different rounds")
        else:
            stage = "evidence" if evidence else "first"
        if evidence != self.rows.has_vote[row] and stage != "first":
            raise RuntimeError("a stage with the evidence on a row without a recorded vote")
        v = self.verdicts(stage, round_, again)
        index = int(v.labels[row])
        abstains = final and bool(v.abstains_if_final[row])
        trusted = bool(v.trusted[row])
        asked = [] if trusted or not v.usable[row] else self.policy.agents_to_ask(self.rows.agents)
        return Verdict(
            label=None if index < 0 or abstains else self.rows.task.labels[index],
            confidence=float(v.confidence[row]),
            trusted=trusted,
            reevaluate=asked,
            probabilities=tuple(v.probabilities[row].tolist()),
        )


class DirectAssessor:
    """Asks the policy itself, row by row, with the answers the graph would hand it."""

    def __init__(self, policy: FusionPolicy, rows: RecordedRows, max_rounds: int) -> None:
        self.policy = policy
        self.rows = rows
        self.max_rounds = max_rounds

    async def __call__(
        self, row: int, answered: Answered, evidence: bool, round_: int, final: bool
    ) -> Verdict:
        predictions = [self.rows.answers(name, r)[row] for r, names in answered for name in names]
        assessment = await self.policy.assess(
            task=self.rows.task,
            predictions=predictions,
            evidence=self.rows.evidence(row) if evidence else None,
            round=round_,
            max_rounds=self.max_rounds,
        )
        return Verdict(
            label=assessment.label,
            confidence=assessment.confidence,
            trusted=assessment.trusted,
            reevaluate=assessment.reevaluate,
            probabilities=tuple(assessment.scores.get(y, 0.0) for y in self.rows.task.labels),
        )


def effective_rounds(agents: Sequence[ReplayAgent], max_rounds: int) -> int:
    """``max_rounds`` as ``build_graph`` sets it: 1 when no agent can look again."""
    return 1 if max_rounds >= 1 and not any(a.can_reevaluate for a in agents) else max_rounds


async def walk(
    row: int,
    assess: RowAssessor,
    *,
    agents: Sequence[ReplayAgent],
    has_retriever: bool,
    has_vote: bool,
    assess_after_retrieval: bool,
    max_rounds: int,
) -> tuple[Verdict, int, int]:
    """Row ``row`` through the routers' rules: its last verdict, the rounds it used and the
    agent answers it took."""
    can_look_again = {a.name for a in agents if a.can_reevaluate}
    answered: list[tuple[int, Sequence[str]]] = [(0, [a.name for a in agents])]
    round_, retrieved, evidence = 0, False, False
    verdict = await assess(row, answered, evidence, round_, round_ >= max_rounds - 1)
    while not verdict.trusted:
        last_round = round_ >= max_rounds - 1
        names = [n for n in verdict.reevaluate if n in can_look_again]
        if has_retriever and not retrieved and (assess_after_retrieval or not last_round):
            retrieved, evidence = True, has_vote
            if not (assess_after_retrieval and evidence) and names:
                round_ += 1
                answered.append((round_, names))
        elif last_round or not names:
            break
        else:
            round_ += 1
            answered.append((round_, names))
        verdict = await assess(row, answered, evidence, round_, round_ >= max_rounds - 1)
    return verdict, round_ + 1, sum(len(names) for _, names in answered)


def decide_rows(
    policy: FusionPolicy,
    *,
    task: Task,
    agents: Sequence[ReplayAgent],
    retriever: RecordedRetriever | None,
    images: Sequence[LabelledImage],
    max_rounds: int,
    on_image: Callable[[], None] | None = None,
) -> list[RowDecision]:
    """The graph's decisions on ``images`` without the graph (see the module docstring)."""
    policy = deciding_policy(policy)
    engine = engine_for(policy)
    if engine == "graph":
        raise ValueError(f"policy {getattr(policy, 'name', policy)!r} has no array path")
    rounds = effective_rounds(agents, max_rounds)
    rows = RecordedRows(images, agents, retriever, task)
    assess: RowAssessor = (
        TrustAssessor(policy, rows)
        if isinstance(policy, TrustPolicy)
        else DirectAssessor(policy, rows, rounds)
    )

    async def all_rows() -> list[RowDecision]:
        out = []
        for i, li in enumerate(images):
            verdict, rounds_used, calls = await walk(
                i,
                assess,
                agents=agents,
                has_retriever=retriever is not None,
                has_vote=rows.has_vote[i],
                assess_after_retrieval=policy.assess_after_retrieval,
                max_rounds=rounds,
            )
            out.append(
                RowDecision(
                    image=li.image.source,
                    truth=li.truth,
                    label=verdict.label,
                    confidence=float(verdict.confidence),
                    rounds_used=rounds_used,
                    calls=calls,
                    probabilities=verdict.probabilities,
                )
            )
            if on_image is not None:
                on_image()
        return out

    return asyncio.run(all_rows())
