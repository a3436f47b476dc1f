"""The ``trust`` policy: deterministic, calibrated fusion weighted by measured trust.

Each source (an agent's latest answer, and the retrieval vote once retrieved) is turned into a
calibrated distribution by its ``TrustProfile`` (``calibrated_scores``: the recalibrated
confidence on the answered label, the rest by the agent's confusion matrix). Sources are fused
as a weighted product of experts (log-linear pooling of likelihood ratios):

    log p(y) = log prior(y) + sum_s w_s * (log q_s(y) - log prior_s(y)) + const

Weights depend on the stage: ``first`` (first looks only, no evidence yet), ``evidence`` (first
looks and the retrieval vote) and ``reeval`` (the latest answers and the vote; with
``keep_first_looks`` the first looks too). An answer given in round r >= 1 uses the profile
``<agent>@reeval`` when there is one (a second look, given the evidence, is a different
instrument). The fused result is trusted when its confidence reaches the stage's threshold;
otherwise the policy asks for evidence, then for re-evaluation. On the last round it answers, or
abstains with a prediction set when the confidence stays below ``abstain_below``.

Measured on the study's replay (orchestrator.replay.run), a second look already folds in the first
one (it was shown it), so fusing both counts the first look twice: ``keep_first_looks`` is off
by default. ``agent_model="confusion"`` (the default) reads an answer without scores through
the agent's confusion column (``orchestrator.policies.trust_sources``).

The policy is an estimator in scikit-learn's style: ``TrustPolicy(**settings).fit(records,
columns, ids=...)`` learns ``profiles_``, ``weights_``, ``thresholds_`` and ``fit_summary_``
on labelled records (``orchestrator.policies.trust_fit``); ``TrustPolicy.from_profiles`` builds
one from profiles measured elsewhere (and saved weights and thresholds, if any). Using a policy
that has neither raises ``NotFittedError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.types import Prediction
from core.errors import InputError, NotFittedError
from core.task import Task
from eval.profile import TrustProfile, default_trust_profile
from eval.recorded.records import RecordSet
from orchestrator.decision import Assessment
from orchestrator.policies.common import one_blas_thread
from orchestrator.policies.fusion import CascadeDecisions, cascade, fuse
from orchestrator.policies.trust_fit import CRITERIA, StackedFit, fit_stacked
from orchestrator.policies.trust_sources import (
    AGENT_MODELS,
    EVIDENCE_SOURCE,
    RatioTable,
    SourceColumns,
    SourceProfiles,
    evidence_prediction,
    log_ratio,
    profile_key,
)
from rag.evidence import Evidence

STAGES = ("first", "evidence", "reeval")
DEFAULT_THRESHOLDS: dict[str, float | None] = {"first": 0.99, "evidence": 0.9, "reeval": 0.9}


def stage_of(predictions: Sequence[Prediction], evidence: Evidence | None) -> str:
    if any(p.round > 0 for p in predictions):
        return "reeval"
    return "first" if evidence is None else "evidence"


def prediction_set(scores: Mapping[str, float], coverage: float) -> list[str]:
    """The smallest set of labels, best first, whose fused probability reaches ``coverage``."""
    out: list[str] = []
    mass = 0.0
    for label in sorted(scores, key=lambda y: -scores[y]):
        out.append(label)
        mass += scores[label]
        if mass >= coverage:
            break
    return out


def _answers(predictions: Sequence[Prediction], *, keep_first_looks: bool) -> list[Prediction]:
    """Per agent its latest answer, and its first look too when ``keep_first_looks``."""
    by_key: dict[str, Prediction] = {}
    for p in predictions:
        key = profile_key(p.agent, p.round) if keep_first_looks else p.agent
        if key not in by_key or p.round >= by_key[key].round:
            by_key[key] = p
    return list(by_key.values())


@dataclass(frozen=True)
class AnswerColumn:
    """One source of a stage on many rows: its profile key, its agent and each row's answer
    (None where the source has no answer on that row, e.g. no retrieval vote)."""

    key: str
    agent: str
    answers: Sequence[Prediction | None]


@dataclass(frozen=True)
class StageVerdicts:
    """What ``TrustPolicy.assess`` says at one stage, for many rows at once."""

    labels: np.ndarray
    """Index of the fused label; -1 where no source had a usable answer (an abstention)."""
    confidence: np.ndarray
    trusted: np.ndarray
    abstains_if_final: np.ndarray
    """Whether the row abstains when this stage is its last round."""
    usable: np.ndarray
    """Whether any source answered (else the policy abstains and names no agent to ask)."""
    probabilities: np.ndarray
    """rows x labels: the fused distribution (uniform where no source answered)."""


class TrustPolicy:
    """Calibrated, trust-weighted fusion (see the module docstring). Deterministic.

    Settings of the decision: ``abstain_below``, ``set_coverage``, ``default_weight`` (the
    weight of a source without a profile or a fitted weight), ``retrieval_source``,
    ``reevaluate`` (the agents that may be asked again; None: all), ``agent_model``,
    ``keep_first_looks``. Settings of the fitting: ``inner_folds``, ``seed``,
    ``reeval_budget``, ``reeval_cost``, ``criterion`` and ``trust_threshold`` (a fixed trust
    threshold instead of the fitted one).
    """

    name = "trust"
    assess_after_retrieval = True

    def __init__(
        self,
        *,
        abstain_below: float = 0.5,
        set_coverage: float = 0.95,
        default_weight: float = 0.5,
        retrieval_source: str | None = None,
        reevaluate: Sequence[str] | None = None,
        agent_model: str = "confusion",
        keep_first_looks: bool = False,
        inner_folds: int = 5,
        seed: int = 0,
        reeval_budget: float = 0.25,
        reeval_cost: float = 0.02,
        criterion: str = "log_loss",
        trust_threshold: float | None = None,
    ) -> None:
        if agent_model not in AGENT_MODELS:
            raise InputError(f"agent_model must be one of {AGENT_MODELS}, got {agent_model!r}")
        if criterion not in CRITERIA:
            raise InputError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        self.abstain_below = abstain_below
        self.set_coverage = set_coverage
        self.default_weight = default_weight
        self.retrieval_source = retrieval_source
        self.reevaluate = None if reevaluate is None else list(reevaluate)
        self.agent_model = agent_model
        self.keep_first_looks = keep_first_looks
        self.inner_folds = inner_folds
        self.seed = seed
        self.reeval_budget = reeval_budget
        self.reeval_cost = reeval_cost
        self.criterion = criterion
        self.trust_threshold = trust_threshold

    @classmethod
    def from_profiles(
        cls,
        profiles: Mapping[str, TrustProfile],
        *,
        weights: Mapping[str, Mapping[str, float]] | None = None,
        thresholds: Mapping[str, float | None] | None = None,
        **settings: Any,
    ) -> TrustPolicy:
        """A policy from profiles measured elsewhere, with saved ``weights`` and ``thresholds``
        (per stage; missing ones take the defaults) instead of fitted ones."""
        policy = cls(**settings)
        policy.profiles_ = dict(profiles)
        policy.weights_ = {stage: dict(w) for stage, w in (weights or {}).items()}
        policy.thresholds_ = {**DEFAULT_THRESHOLDS, **dict(thresholds or {})}
        policy.fit_summary_ = None
        return policy

    def fit(
        self,
        records: RecordSet,
        columns: Sequence[SourceColumns],
        *,
        ids: Sequence[str] | None = None,
    ) -> TrustPolicy:
        """Fit profiles, stage weights and thresholds on the rows ``ids`` (all by default) of
        ``records``, whose agents play the sources ``columns``; the retrieval vote is the
        recorded source named ``retrieval_source`` (None: no vote)."""
        with one_blas_thread():
            fitted = self._fit_stacked(records, columns, ids)
        self.source_profiles_ = fitted.sources
        self.profiles_ = dict(fitted.sources.profiles_)
        self.weights_ = fitted.weights
        self.thresholds_ = {**DEFAULT_THRESHOLDS, **fitted.thresholds}
        self.fit_summary_ = fitted.summary
        self.cross_fit_ = fitted.cross_fit
        return self

    def _fit_stacked(
        self, records: RecordSet, columns: Sequence[SourceColumns], ids: Sequence[str] | None
    ) -> StackedFit:
        return fit_stacked(
            records,
            columns,
            list(ids) if ids is not None else records.ids(),
            retrieval=self.retrieval_source,
            inner_folds=self.inner_folds,
            seed=self.seed,
            reeval_budget=self.reeval_budget,
            reeval_cost=self.reeval_cost,
            agent_model=self.agent_model,
            criterion=self.criterion,
            keep_first_looks=self.keep_first_looks,
            trust_threshold=self.trust_threshold,
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "profiles_"):
            raise NotFittedError(
                "TrustPolicy is not fitted; call fit or build it with TrustPolicy.from_profiles"
            )

    def _profile(self, key: str, agent: str, task: Task) -> tuple[TrustProfile, bool]:
        profile = self.profiles_.get(key) or self.profiles_.get(agent)
        if profile is None:
            return default_trust_profile(agent, task.labels), True
        return profile, profile.default

    def _weight(self, stage: str, key: str, is_default: bool) -> float:
        stage_weights = self.weights_.get(stage, {})
        if key in stage_weights:
            return float(stage_weights[key])
        return self.default_weight if is_default else 1.0

    def to_dict(self) -> dict[str, Any]:
        """The fitted settings (profiles are saved on their own)."""
        self._check_fitted()
        return {
            "name": self.name,
            "weights": self.weights_,
            "thresholds": self.thresholds_,
            "abstain_below": self.abstain_below,
            "set_coverage": self.set_coverage,
            "default_weight": self.default_weight,
            "retrieval_source": self.retrieval_source,
            "reevaluate": self.reevaluate,
            "agent_model": self.agent_model,
            "keep_first_looks": self.keep_first_looks,
        }

    def stage_probabilities(self, records: RecordSet, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Per stage, the fused distributions (rows x labels) of the recorded rows ``ids``: what
        the graph computes on them, on arrays (needs a policy fitted on records)."""
        if not hasattr(self, "source_profiles_"):
            raise NotFittedError("TrustPolicy.stage_probabilities needs a policy fitted on records")
        sources: SourceProfiles = self.source_profiles_
        ratios = sources.transform(records, ids)
        return {
            stage: fuse(
                ratios[:, [sources.sources_.index(k) for k in weights]],
                np.array(list(weights.values())),
            )
            for stage, weights in self.weights_.items()
        }

    def decide_records(self, records: RecordSet, ids: Sequence[str]) -> CascadeDecisions:
        """The graph's decisions on the recorded rows ``ids`` (evidence stage, re-evaluation
        where not trusted, abstention), computed on arrays."""
        stages = self.stage_probabilities(records, ids)
        first = "evidence" if "evidence" in stages else "first"
        return cascade(
            stages[first],
            stages["reeval"],
            threshold=float(self.thresholds_[first]),
            reeval_threshold=self.thresholds_["reeval"],
            abstain_below=self.abstain_below,
        )

    def assess_columns(
        self, task: Task, stage: str, columns: Sequence[AnswerColumn]
    ) -> StageVerdicts:
        """``assess`` of every row at once, on arrays: each row's sources are one answer from
        each column, in the order ``assess`` would fuse them; the values are the ones ``assess``
        computes (a source without a usable answer adds nothing to the pooled sum)."""
        self._check_fitted()
        rows = len(columns[0].answers) if columns else 0
        ratios = np.zeros((rows, len(columns), len(task.labels)))
        answered = np.zeros((rows, len(columns)), dtype=bool)
        weights = np.zeros(len(columns))
        for s, column in enumerate(columns):
            profile, is_default = self._profile(column.key, column.agent, task)
            weights[s] = self._weight(stage, column.key, is_default)
            table = RatioTable(profile, task.labels, agent_model=self.agent_model)
            for i, answer in enumerate(column.answers):
                if answer is not None and answer.ok:
                    ratios[i, s] = table(answer)
                    answered[i, s] = True
        fused = fuse(
            ratios, weights, log_prior=np.full(len(task.labels), math.log(1.0 / len(task.labels)))
        )
        usable = answered.any(axis=1)
        best = fused.argmax(axis=1)
        confidence = np.where(usable, fused[np.arange(rows), best], 0.0)
        threshold = self.thresholds_.get(stage)
        trusted = usable & (threshold is not None) & (confidence >= (threshold or 0.0))
        return StageVerdicts(
            labels=np.where(usable, best, -1),
            confidence=confidence,
            trusted=trusted,
            abstains_if_final=~usable | (~trusted & (confidence < self.abstain_below)),
            usable=usable,
            probabilities=fused,
        )

    def agents_to_ask(self, agents: Sequence[str]) -> list[str]:
        """Which of ``agents`` an untrusted assessment asks to look again (``reevaluate``)."""
        names = (a for a in agents if a not in (self.retrieval_source, EVIDENCE_SOURCE))
        return [a for a in dict.fromkeys(names) if self.reevaluate is None or a in self.reevaluate]

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment:
        self._check_fitted()
        stage = stage_of(predictions, evidence)
        sources = _answers(
            [p for p in predictions if p.agent != self.retrieval_source],
            keep_first_looks=self.keep_first_looks,
        )
        if evidence is not None and evidence.vote:
            sources.append(evidence_prediction(evidence, self.retrieval_source or EVIDENCE_SOURCE))
        ratios: dict[str, dict[str, float]] = {}
        weights: dict[str, float] = {}
        notes: list[str] = []
        for pred in sources:
            if not pred.ok:
                notes.append(f"{pred.agent} failed, left out")
                continue
            key = profile_key(pred.agent, pred.round)
            profile, is_default = self._profile(key, pred.agent, task)
            if is_default:
                notes.append(f"{key}: no trust profile, conservative default")
            weights[key] = self._weight(stage, key, is_default)
            ratios[key] = log_ratio(profile, pred, agent_model=self.agent_model)
        if not ratios:
            return self._abstain(task, round, "no usable answer from any source", notes)
        fused = fuse(
            np.array([[[r[y] for y in task.labels] for r in ratios.values()]]),
            np.array([weights[k] for k in ratios]),
            log_prior=np.full(len(task.labels), math.log(1.0 / len(task.labels))),
        )
        scores = dict(zip(task.labels, fused[0].tolist(), strict=True))
        label = max(task.labels, key=scores.__getitem__)
        confidence = scores[label]
        threshold = self.thresholds_.get(stage)
        trusted = threshold is not None and confidence >= threshold
        final = round >= max_rounds - 1
        used = ", ".join(f"{k} w={w:.2f}" for k, w in weights.items())
        why = (
            f"stage {stage}: fused {len(ratios)} source(s) ({used}): {label} {confidence:.3f} "
            + (
                f">= threshold {threshold:.3f}"
                if trusted
                else f"< threshold {threshold:.3f}"
                if threshold is not None
                else "(stage never trusted alone)"
            )
        )
        if notes:
            why += "; " + "; ".join(notes)
        to_ask = [] if trusted else self.agents_to_ask([p.agent for p in sources])
        out_label: str | None = label
        if final and not trusted and confidence < self.abstain_below:
            out_label = None
            why += f"; abstains: confidence below {self.abstain_below:.3f}"
        return Assessment(
            policy=self.name,
            round=round,
            scores=scores,
            label=out_label,
            confidence=confidence,
            trusted=trusted,
            weights=weights,
            reevaluate=to_ask,
            prediction_set=prediction_set(scores, self.set_coverage),
            reason=why,
        )

    def _abstain(self, task: Task, round_: int, why: str, notes: list[str]) -> Assessment:
        return Assessment.abstention(
            policy=self.name,
            labels=task.labels,
            round=round_,
            reason="; ".join([why, *notes]),
            trusted=False,
        )
