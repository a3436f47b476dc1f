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
the agent's confusion column (how often each true label lies behind that answer).
``orchestrator.policies.trust_fit`` fits weights and thresholds on labelled records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from agents.types import REEVAL_SUFFIX, RETRIEVAL_AGENT, Prediction
from core.errors import InputError
from core.task import Task
from eval.profile import TrustProfile, default_trust_profile
from orchestrator.decision import Assessment
from rag.evidence import Evidence

STAGES = ("first", "evidence", "reeval")
DEFAULT_THRESHOLDS: dict[str, float | None] = {"first": 0.99, "evidence": 0.9, "reeval": 0.9}
PROB_FLOOR = 1e-4
EVIDENCE_SOURCE = RETRIEVAL_AGENT
"""The retrieval vote's source name when the policy is not told the retriever's agent name (the
default name of ``rag.agent.RetrievalAgent``)."""
AGENT_MODELS = ("calibrated", "confusion", "joint")


def profile_key(agent: str, round_: int) -> str:
    """The profile name of an agent's answer in a round: ``qwen`` then ``qwen@reeval``."""
    return agent if round_ == 0 else f"{agent}{REEVAL_SUFFIX}"


def stage_of(predictions: Sequence[Prediction], evidence: Evidence | None) -> str:
    if any(p.round > 0 for p in predictions):
        return "reeval"
    return "first" if evidence is None else "evidence"


def confusion_scores(
    profile: TrustProfile, prediction: Prediction, *, alpha: float = 1.0
) -> dict[str, float]:
    """P(truth | answered label) from the profile's confusion column (Laplace ``alpha``)."""
    k = len(profile.labels)
    column = [
        float(row[profile.labels.index(str(prediction.label))]) + alpha
        for row in profile.confusion[:k]
    ]
    total = sum(column)
    return {y: c / total for y, c in zip(profile.labels, column, strict=True)}


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
    """log q(y) - log prior(y) of one calibrated source (its evidence for each label).

    ``agent_model``: ``calibrated`` uses ``profile.calibrated_scores``; ``confusion`` uses the
    confusion column of the answered label for answers without scores (label-specific
    precision, the confidence ignored); ``joint`` also folds in the stated confidence.
    """
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


def fuse(
    labels: Sequence[str],
    ratios: Mapping[str, Mapping[str, float]],
    weights: Mapping[str, float],
    prior: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Weighted log-linear pooling: softmax(log prior + sum_s w_s * ratio_s)."""
    logits = {
        y: math.log(prior[y] if prior else 1.0 / len(labels))
        + sum(weights[s] * r[y] for s, r in ratios.items())
        for y in labels
    }
    top = max(logits.values())
    exp = {y: math.exp(v - top) for y, v in logits.items()}
    total = sum(exp.values())
    return {y: exp[y] / total for y in labels}


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


def evidence_prediction(evidence: Evidence, source: str) -> Prediction:
    top = evidence.top_label
    return Prediction(
        agent=source,
        label=top,
        confidence=min(1.0, evidence.vote[top]) if top else 0.0,
        scores=dict(evidence.vote),
    )


class TrustPolicy:
    """Calibrated, trust-weighted fusion (see the module docstring). Deterministic."""

    name = "trust"
    assess_after_retrieval = True

    def __init__(
        self,
        *,
        profiles: Mapping[str, TrustProfile],
        weights: Mapping[str, Mapping[str, float]] | None = None,
        thresholds: Mapping[str, float | None] | None = None,
        abstain_below: float = 0.5,
        set_coverage: float = 0.95,
        default_weight: float = 0.5,
        retrieval_source: str | None = None,
        reevaluate: Sequence[str] | None = None,
        agent_model: str = "confusion",
        keep_first_looks: bool = False,
    ) -> None:
        self.keep_first_looks = keep_first_looks
        if agent_model not in AGENT_MODELS:
            raise InputError(f"agent_model must be one of {AGENT_MODELS}, got {agent_model!r}")
        self.agent_model = agent_model
        self.profiles = dict(profiles)
        self.weights = {stage: dict(w) for stage, w in (weights or {}).items()}
        self.thresholds = {**DEFAULT_THRESHOLDS, **dict(thresholds or {})}
        self.abstain_below = abstain_below
        self.set_coverage = set_coverage
        self.default_weight = default_weight
        self.retrieval_source = retrieval_source
        self.reevaluate = None if reevaluate is None else list(reevaluate)
        self.fit_summary_: dict[str, Any] | None = None

    def _profile(self, key: str, agent: str, task: Task) -> tuple[TrustProfile, bool]:
        profile = self.profiles.get(key) or self.profiles.get(agent)
        if profile is None:
            return default_trust_profile(agent, task.labels), True
        return profile, profile.default

    def _weight(self, stage: str, key: str, is_default: bool) -> float:
        stage_weights = self.weights.get(stage, {})
        if key in stage_weights:
            return float(stage_weights[key])
        return self.default_weight if is_default else 1.0

    def to_dict(self) -> dict[str, Any]:
        """The fitted settings (profiles are saved on their own)."""
        return {
            "name": self.name,
            "weights": self.weights,
            "thresholds": self.thresholds,
            "abstain_below": self.abstain_below,
            "set_coverage": self.set_coverage,
            "default_weight": self.default_weight,
            "retrieval_source": self.retrieval_source,
            "reevaluate": self.reevaluate,
            "agent_model": self.agent_model,
            "keep_first_looks": self.keep_first_looks,
        }

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment:
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
        scores = fuse(task.labels, ratios, weights)
        label = max(task.labels, key=scores.__getitem__)
        confidence = scores[label]
        threshold = self.thresholds.get(stage)
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
        to_ask: list[str] = []
        if not trusted:
            agents = list(
                dict.fromkeys(
                    p.agent
                    for p in sources
                    if p.agent not in (self.retrieval_source, EVIDENCE_SOURCE)
                )
            )
            to_ask = [a for a in agents if self.reevaluate is None or a in self.reevaluate]
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
