"""The trust policy's sources, calibrated: one answer -> its log-likelihood ratios per label.

A source is an agent's first look (``qwen``), its re-evaluated answer (``qwen@reeval``) or the
retrieval vote (``rag``); each has its own ``TrustProfile``. ``log_ratio`` reads one answer
through its profile; ``SourceProfiles`` is the estimator that fits a profile per source on
recorded rows (``fit``) and turns recorded rows into the rows x sources x labels ratio array of
``orchestrator.policies.fusion`` (``transform``).

``agent_model`` says how an answer without scores is read: ``calibrated`` by
``TrustProfile.calibrated_scores``; ``confusion`` by the confusion column of the answered label
(how often each true label lies behind that answer; the confidence ignored); ``joint`` by that
column with the stated confidence folded in.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agents.types import REEVAL_SUFFIX, RETRIEVAL_AGENT, Prediction
from core.errors import InputError, NotFittedError
from eval.profile import TrustProfile, default_trust_profile, fit_trust_profile
from eval.recorded.records import Record, RecordSet
from rag.evidence import Evidence

PROB_FLOOR = 1e-4
AGENT_MODELS = ("calibrated", "confusion", "joint")
EVIDENCE_SOURCE = RETRIEVAL_AGENT
"""The retrieval vote's source name when the policy is not told the retriever's agent name (the
default name of ``rag.agent.RetrievalAgent``)."""


def profile_key(agent: str, round_: int) -> str:
    """The profile name of an agent's answer in a round: ``qwen`` then ``qwen@reeval``."""
    return agent if round_ == 0 else f"{agent}{REEVAL_SUFFIX}"


def confusion_scores(
    profile: TrustProfile, prediction: Prediction, *, alpha: float = 1.0
) -> dict[str, float]:
    """P(truth | answered label): the profile's confusion column of that label, smoothed
    towards the class prior with ``alpha`` pseudo-answers per label
    (``TrustProfile.smoothed_column``)."""
    column = profile.smoothed_column(profile.labels.index(str(prediction.label)), alpha=alpha)
    total = float(column.sum())
    return {y: float(c) / total for y, c in zip(profile.labels, column, strict=True)}


def _odds(p: float) -> float:
    p = min(max(p, PROB_FLOOR), 1.0 - PROB_FLOOR)
    return p / (1.0 - p)


def _with_confidence(
    profile: TrustProfile, prediction: Prediction, q: dict[str, float]
) -> dict[str, float]:
    """Fold in what the stated confidence says: P(conf | right) / P(conf | wrong) is the odds
    of the recalibrated confidence over the odds of the agent's accuracy (Bayes)."""
    k = len(profile.labels)
    right = sum(profile.confusion[i][i] for i in range(k))
    answered = sum(sum(row[:k]) for row in profile.confusion[:k])
    base = (right + 1.0) / (answered + 2.0)
    lift = _odds(profile.calibrated_confidence(prediction)) / _odds(base)
    out = {y: p * (lift if y == prediction.label else 1.0) for y, p in q.items()}
    total = sum(out.values())
    return {y: p / total for y, p in out.items()}


def log_ratio(
    profile: TrustProfile, prediction: Prediction, *, agent_model: str = "calibrated"
) -> dict[str, float]:
    """log q(y) - log prior(y) of one calibrated source (its evidence for each label)."""
    if agent_model != "calibrated" and not prediction.scores and not profile.default:
        q = confusion_scores(profile, prediction)
        if agent_model == "joint":
            q = _with_confidence(profile, prediction, q)
    else:
        q = profile.calibrated_scores(prediction)
    prior = profile.class_prior()
    return {
        label: math.log(max(q[label], PROB_FLOOR)) - math.log(prior[label])
        for label in profile.labels
    }


RatioKey = tuple[str | None, float, tuple[tuple[str, float], ...] | None]


def ratio_key(prediction: Prediction) -> RatioKey:
    """What ``log_ratio`` reads of an answer: its label, confidence and scores."""
    scores = tuple(prediction.scores.items()) if prediction.scores is not None else None
    return prediction.label, prediction.confidence, scores


class RatioTable:
    """``log_ratio`` of one source's profile, computed once per distinct answer.

    Recorded answers repeat (a label with one of a few confidences), so a column of thousands
    of rows needs only a handful of profile readings; each is the very value ``log_ratio``
    gives, in the label order ``labels``.
    """

    def __init__(self, profile: TrustProfile, labels: Sequence[str], *, agent_model: str) -> None:
        self.profile = profile
        self.labels = list(labels)
        self.agent_model = agent_model
        self._rows: dict[RatioKey, list[float]] = {}

    def __call__(self, prediction: Prediction) -> list[float]:
        key = ratio_key(prediction)
        row = self._rows.get(key)
        if row is None:
            ratio = log_ratio(self.profile, prediction, agent_model=self.agent_model)
            row = self._rows[key] = [ratio[y] for y in self.labels]
        return row


def evidence_prediction(evidence: Evidence, source: str) -> Prediction:
    """The retrieval vote as one more answer: its top label, with the vote as scores."""
    top = evidence.top_label
    return Prediction(
        agent=source,
        label=top,
        confidence=min(1.0, evidence.vote[top]) if top else 0.0,
        scores=dict(evidence.vote),
    )


@dataclass(frozen=True)
class SourceColumns:
    """Which recorded agent plays an agent's first look and its re-evaluation."""

    agent: str
    first: str
    reeval: str | None = None


def record_key(record: Record) -> RatioKey:
    """What ``record_prediction`` reads of a record: its label, confidence and scores."""
    scores = tuple(record.scores.items()) if record.scores is not None else None
    return record.pred, record.confidence, scores


def record_prediction(record: Record, *, retrieval: bool = False) -> Prediction:
    """The Prediction a recorded answer stands for (the retrieval vote as the policy sees it)."""
    if retrieval and record.scores:
        return evidence_prediction(Evidence(neighbours=(), vote=record.scores), record.agent)
    return record.to_prediction()


def profile_sources(
    columns: Sequence[SourceColumns], retrieval: str | None
) -> dict[str, tuple[str, bool]]:
    """Profile key -> (recorded agent, is the retrieval vote), in the ratio array's order."""
    out: dict[str, tuple[str, bool]] = {}
    for c in columns:
        out[c.agent] = (c.first, False)
        if c.reeval:
            out[f"{c.agent}{REEVAL_SUFFIX}"] = (c.reeval, False)
    if retrieval:
        out[retrieval] = (retrieval, True)
    return out


def rows_sha256(file_sha256: str, agent: str, ids: Sequence[str]) -> str:
    """The identity of a profile's training data: the file, the recorded agent and its rows."""
    text = "\n".join([file_sha256, agent, *sorted(ids)])
    return hashlib.sha256(text.encode()).hexdigest()


def records_by_agent(records: RecordSet, ids: set[str]) -> dict[str, dict[str, Record]]:
    """Per recorded agent, its round-0 records of the rows ``ids``, by row id."""
    out: dict[str, dict[str, Record]] = {}
    for r in records.records:
        if r.id in ids and r.round == 0:
            out.setdefault(r.agent, {})[r.id] = r
    return out


class SourceProfiles:
    """Trust profiles of every source, fitted on recorded rows; ratios of recorded rows.

    ``fit(records, ids)`` learns ``profiles_`` (source key -> TrustProfile, fitted on the rows
    ``ids`` only), ``sources_`` (the source keys, in the ratio array's order) and ``labels_``.
    ``transform(records, ids)`` gives the rows x sources x labels log-likelihood ratios of the
    rows ``ids`` (0 where a source has no usable answer).
    """

    def __init__(
        self,
        *,
        columns: Sequence[SourceColumns],
        retrieval: str | None = "rag",
        agent_model: str = "confusion",
        seed: int = 0,
    ) -> None:
        self.columns = columns
        self.retrieval = retrieval
        self.agent_model = agent_model
        self.seed = seed

    def fit(self, records: RecordSet, ids: Sequence[str]) -> SourceProfiles:
        if self.agent_model not in AGENT_MODELS:
            raise InputError(f"agent_model must be one of {AGENT_MODELS}, got {self.agent_model!r}")
        sources = profile_sources(self.columns, self.retrieval)
        rows = records_by_agent(records, set(ids))
        profiles: dict[str, TrustProfile] = {}
        for key, (agent, _) in sources.items():
            recorded = rows.get(agent, {})
            present = [r for r in (recorded.get(i) for i in ids) if r is not None]
            if not present:
                # an agent that answered none of these rows (one added late, a sparse long
                # file): no evidence to trust it by, so the conservative default (near-zero
                # weight of evidence) rather than a refusal that depends on the fold split
                profiles[key] = default_trust_profile(key, records.labels)
                continue
            profiles[key] = fit_trust_profile(
                key,
                present,
                records.labels,
                bootstrap=0,
                cv_folds=0,
                seed=self.seed,
                data_sha256=rows_sha256(records.sha256, agent, [r.id for r in present]),
            )
        self.profiles_ = profiles
        self.sources_ = list(sources)
        self.labels_ = list(records.labels)
        return self

    def transform(self, records: RecordSet, ids: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "profiles_"):
            raise NotFittedError("SourceProfiles is not fitted; call fit first")
        sources = profile_sources(self.columns, self.retrieval)
        rows = records_by_agent(records, set(ids))
        out = np.zeros((len(ids), len(sources), len(self.labels_)))
        for s, (key, (agent, is_vote)) in enumerate(sources.items()):
            table = RatioTable(self.profiles_[key], self.labels_, agent_model=self.agent_model)
            recorded = rows.get(agent, {})
            read: dict[RatioKey, list[float] | None] = {}
            for i, rid in enumerate(ids):
                rec = recorded.get(rid)
                if rec is None:
                    continue
                content = record_key(rec)
                if content not in read:
                    pred = record_prediction(rec, retrieval=is_vote)
                    read[content] = table(pred) if pred.ok else None
                ratio = read[content]
                if ratio is not None:
                    out[i, s] = ratio
        return out
