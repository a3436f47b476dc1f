"""Fitting the ``trust`` policy on labelled records: stage weights and the trust threshold.

``TrustPolicy.fit`` calls ``fit_stacked``, which uses the records given (the training rows) and
nothing else:
1. one TrustProfile per source (``SourceProfiles``): each agent's first look (``qwen``), its
   re-evaluated answer (``qwen@reeval``) and the retrieval vote (``rag``);
2. stage weights by stacking: inner k-fold cross-fitting gives each training row calibrated
   log-likelihood ratios from profiles that did not see it; per stage the weights minimise the
   log-loss of the fused distribution (L2-regularised, in [0, MAX_WEIGHT]);
3. the trust threshold of the ``evidence`` stage: among the out-of-fold fused confidences, the
   cut that maximises the cascade's mean log-likelihood (``criterion="log_loss"``; or its
   accuracy, ``"accuracy"``) when the rows below the cut are re-evaluated, minus
   ``reeval_cost`` per unit of re-evaluation rate, within ``reeval_budget`` (``"budget"``
   spends the whole budget). The cut is placed midway between two observed confidences.

``save_trust_policy`` / ``load_trust_policy_settings`` (``orchestrator.policies.policy_file``,
with the file's schema): the fitted settings (weights, thresholds, ...; not the profiles) as a
JSON file, for ``trustorch run --policy-file``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.types import REEVAL_SUFFIX
from core.errors import InputError
from eval.folds import held_out_rows, stratified_folds
from eval.recorded.records import RecordSet
from orchestrator.policies.fusion import cascade, fused_log_probabilities
from orchestrator.policies.policy_file import (
    load_policy_selection,
    load_trust_policy_settings,
    save_trust_policy,
)
from orchestrator.policies.trust_sources import SourceColumns, SourceProfiles, profile_sources

MAX_WEIGHT = 5.0
CRITERIA = ("log_loss", "accuracy", "budget")


def fit_weights(
    ratios: np.ndarray, truth: np.ndarray, *, l2: float = 1e-3, start: np.ndarray | None = None
) -> np.ndarray:
    """Weights minimising the log-loss of the fused distribution (rows x sources x labels ratios,
    L2-regularised), in [0, MAX_WEIGHT], searched from ``start`` (all ones by default)."""
    from scipy.optimize import minimize

    by_source = np.ascontiguousarray(np.moveaxis(ratios, 1, 0))
    rows = np.arange(truth.size)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        logp = fused_log_probabilities(ratios, w)
        p = np.exp(logp)
        value = -logp[rows, truth].mean() + l2 * float(w @ w)
        onehot = np.zeros_like(p)
        onehot[rows, truth] = 1.0
        grad = np.einsum("snk,nk->s", by_source, p - onehot) / truth.size + 2 * l2 * w
        return float(value), grad

    sources = ratios.shape[1]
    x0 = np.ones(sources) if start is None else np.asarray(start, dtype=float)
    result = minimize(loss, x0, jac=True, bounds=[(0.0, MAX_WEIGHT)] * sources)
    return np.asarray(result.x, dtype=float)


def choose_threshold(
    first: np.ndarray,
    second: np.ndarray,
    truth: np.ndarray,
    *,
    budget: float,
    cost: float,
    criterion: str = "log_loss",
) -> tuple[float, dict[str, float]]:
    """The trust threshold on ``first``'s confidence for the cascade first -> second."""
    if criterion not in CRITERIA:
        raise InputError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    conf = first.max(axis=1)
    candidates = np.unique(np.concatenate([conf, [0.0]]))
    rows = np.arange(truth.size)
    best: tuple[tuple[float, float], float, dict[str, float]] | None = None
    for cut in candidates:
        again = conf < cut
        rate = float(again.mean())
        if rate > budget:
            break
        probs = np.where(again[:, None], second, first)
        acc = float((probs.argmax(axis=1) == truth).mean())
        ll = float(np.log(np.clip(probs[rows, truth], 1e-12, 1.0)).mean())
        key = {
            "accuracy": (round(acc - cost * rate, 12), ll),
            "log_loss": (round(ll - cost * rate, 12), acc),
            "budget": (rate, 0.0),
        }[criterion]
        if best is None or key > best[0]:
            below = conf[conf < cut]
            threshold = float((cut + below.max()) / 2) if below.size else float(cut)
            best = (key, threshold, {"accuracy": acc, "reeval_rate": rate, "log_lik": ll})
    assert best is not None
    return best[1], best[2]


def stage_sources(
    columns: Sequence[SourceColumns], retrieval: str | None, *, keep_first_looks: bool
) -> dict[str, list[str]]:
    """The source keys each stage fuses."""
    first_keys = [c.agent for c in columns]
    out = {"first": first_keys}
    if retrieval:
        out["evidence"] = [*first_keys, retrieval]
    reeval_keys = [f"{c.agent}{REEVAL_SUFFIX}" for c in columns if c.reeval]
    kept = first_keys if keep_first_looks else [c.agent for c in columns if not c.reeval]
    out["reeval"] = [*kept, *reeval_keys, *([retrieval] if retrieval else [])]
    return out


def out_of_fold_ratios(
    records: RecordSet,
    ids: Sequence[str],
    assignment: np.ndarray,
    source_profiles: Callable[[], SourceProfiles],
) -> np.ndarray:
    """rows x sources x labels: each row's ratios from profiles (``source_profiles()``) fitted
    on the rows of the other folds of ``assignment``."""
    oof: np.ndarray | None = None
    for held in held_out_rows(assignment):
        train = np.setdiff1d(np.arange(len(ids)), held)
        inner = source_profiles().fit(records, [ids[i] for i in train])
        ratios = inner.transform(records, [ids[i] for i in held])
        if oof is None:
            oof = np.zeros((len(ids), *ratios.shape[1:]))
        oof[held] = ratios
    assert oof is not None
    return oof


def repeated_cross_fit(
    records: RecordSet,
    columns: Sequence[SourceColumns],
    ids: Sequence[str],
    base: CrossFit,
    *,
    fold_seed: int,
    seed: int,
    retrieval: str | None,
    agent_model: str,
    keep_first_looks: bool,
    folds: int | None = None,
) -> CrossFit:
    """``base``'s cross-fitting again on other inner folds (``folds`` stratified folds, as many
    as ``base``'s by default, fewer when a class is smaller; seeded by ``fold_seed``), the
    profiles fitted as ``fit_stacked`` fits them (``seed``); the weights fitted on every row
    are kept."""
    folds = int(base.assignment.max()) + 1 if folds is None else folds
    assignment = inner_fold_assignment(base.truth, folds, fold_seed)

    def source_profiles() -> SourceProfiles:
        return SourceProfiles(
            columns=columns, retrieval=retrieval, agent_model=agent_model, seed=seed
        )

    oof = out_of_fold_ratios(records, ids, assignment, source_profiles)
    keys = list(profile_sources(columns, retrieval))
    stages = stage_sources(columns, retrieval, keep_first_looks=keep_first_looks)
    return CrossFit(
        truth=base.truth,
        assignment=assignment,
        stage_ratios={st: oof[:, [keys.index(k) for k in ks]] for st, ks in stages.items()},
        weights=base.weights,
    )


@dataclass(frozen=True)
class StackedFit:
    """What ``fit_stacked`` learns."""

    sources: SourceProfiles
    weights: dict[str, dict[str, float]]
    thresholds: dict[str, float | None]
    summary: dict[str, Any]
    cross_fit: CrossFit | None = None


@dataclass(frozen=True)
class CrossFit:
    """The inner cross-fitting of ``fit_stacked``: what its out-of-fold score reads."""

    truth: np.ndarray
    """Index of each training row's true label."""
    assignment: np.ndarray
    """Inner fold of each training row (``eval.folds.stratified_folds``)."""
    stage_ratios: dict[str, np.ndarray]
    """Per stage, rows x stage sources x labels: each row's ratios from profiles fitted on the
    other inner folds."""
    weights: dict[str, np.ndarray]
    """Per stage, the weights fitted on every row's out-of-fold ratios."""


def inner_fold_assignment(truth: np.ndarray, inner_folds: int, seed: int) -> np.ndarray:
    """The inner folds of training rows whose true label indices are ``truth``: ``inner_folds``
    stratified folds, fewer when the smallest class has fewer rows (at least 2)."""
    counts = np.bincount(truth)
    folds = max(2, min(inner_folds, int(counts[counts > 0].min())))
    return stratified_folds(truth, folds, seed)


def fit_stacked(
    records: RecordSet,
    columns: Sequence[SourceColumns],
    ids: Sequence[str],
    *,
    retrieval: str | None,
    inner_folds: int,
    seed: int,
    reeval_budget: float,
    reeval_cost: float,
    agent_model: str,
    criterion: str,
    keep_first_looks: bool,
    trust_threshold: float | None,
) -> StackedFit:
    """Profiles, stage weights and thresholds fitted on the rows ``ids`` (module docstring).

    ``trust_threshold`` replaces the fitted threshold by a fixed one (a risk tolerance: re-evaluate
    when the calibrated fused confidence is below it); the weights are fitted all the same.
    """
    ids = list(ids)
    labels = list(records.labels)
    truth_of = {r.id: r.truth for r in records.records}
    truth = np.array([labels.index(truth_of[i]) for i in ids])

    def source_profiles() -> SourceProfiles:
        return SourceProfiles(
            columns=columns, retrieval=retrieval, agent_model=agent_model, seed=seed
        )

    fitted = source_profiles().fit(records, ids)
    keys = fitted.sources_
    assignment = inner_fold_assignment(truth, inner_folds, seed)
    folds = int(assignment.max()) + 1
    oof = out_of_fold_ratios(records, ids, assignment, source_profiles)

    weights: dict[str, dict[str, float]] = {}
    fused: dict[str, np.ndarray] = {}
    stage_ratios: dict[str, np.ndarray] = {}
    stage_weights: dict[str, np.ndarray] = {}
    stages = stage_sources(columns, retrieval, keep_first_looks=keep_first_looks)
    for stage, stage_keys in stages.items():
        stage_ratios[stage] = oof[:, [keys.index(k) for k in stage_keys]]
        w = stage_weights[stage] = fit_weights(stage_ratios[stage], truth)
        weights[stage] = {k: float(v) for k, v in zip(stage_keys, w, strict=True)}
        fused[stage] = np.exp(fused_log_probabilities(stage_ratios[stage], w))
    base = "evidence" if retrieval else "first"
    threshold, summary = choose_threshold(
        fused[base],
        fused["reeval"],
        truth,
        budget=reeval_budget,
        cost=reeval_cost,
        criterion=criterion,
    )
    if trust_threshold is not None:
        threshold = trust_threshold
    thresholds: dict[str, float | None] = {"evidence": threshold, "reeval": threshold}
    thresholds["first"] = None if retrieval else threshold
    return StackedFit(
        sources=fitted,
        weights=weights,
        thresholds=thresholds,
        summary={"n": len(ids), "inner_folds": folds, "oof_cascade": summary, "ids": ids},
        cross_fit=CrossFit(
            truth=truth, assignment=assignment, stage_ratios=stage_ratios, weights=stage_weights
        ),
    )


def cross_validated_cascade(
    cross_fit: CrossFit,
    *,
    has_retrieval: bool,
    second_looks: bool,
    reeval_budget: float,
    reeval_cost: float,
    criterion: str,
    trust_threshold: float | None,
    abstain_below: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The trust policy's decisions on its own training rows, each inner fold decided by
    weights and a threshold fitted on the other folds: (rows x labels distributions, decided
    label index or -1 for an abstention), the policy's inner cross-validated estimate.

    The held-out fold's ratios come from profiles fitted on the other folds, as a policy fitted
    on those folds would compute them; the weights are searched from the ones fitted on every
    row (a warm start, not a constraint). With re-evaluating agents the decision is the
    cascade of ``TrustPolicy.decide_records``; without, the first stage alone (abstaining where
    it is not trusted and below ``abstain_below``), as the graph decides with one round.
    """
    base = "evidence" if has_retrieval else "first"
    truth, assignment = cross_fit.truth, cross_fit.assignment
    probabilities = np.zeros_like(cross_fit.stage_ratios[base][:, 0, :])
    decided = np.zeros(truth.size, dtype=np.int64)
    for held in held_out_rows(assignment):
        train = np.setdiff1d(np.arange(truth.size), held)
        fused_train: dict[str, np.ndarray] = {}
        fused_held: dict[str, np.ndarray] = {}
        for stage in (base, "reeval"):
            ratios = cross_fit.stage_ratios[stage]
            w = fit_weights(ratios[train], truth[train], start=cross_fit.weights[stage])
            fused_train[stage] = np.exp(fused_log_probabilities(ratios[train], w))
            fused_held[stage] = np.exp(fused_log_probabilities(ratios[held], w))
        threshold, _ = choose_threshold(
            fused_train[base],
            fused_train["reeval"],
            truth[train],
            budget=reeval_budget,
            cost=reeval_cost,
            criterion=criterion,
        )
        if trust_threshold is not None:
            threshold = trust_threshold
        if second_looks:
            decisions = cascade(
                fused_held[base],
                fused_held["reeval"],
                threshold=threshold,
                reeval_threshold=threshold,
                abstain_below=abstain_below,
            )
            probabilities[held], decided[held] = decisions.probabilities, decisions.labels
        else:
            first = fused_held[base]
            confidence = first.max(axis=1)
            abstain = (confidence < threshold) & (confidence < abstain_below)
            probabilities[held] = first
            decided[held] = np.where(abstain, -1, first.argmax(axis=1))
    return probabilities, decided


__all__ = [
    "CRITERIA",
    "MAX_WEIGHT",
    "CrossFit",
    "StackedFit",
    "choose_threshold",
    "cross_validated_cascade",
    "fit_stacked",
    "fit_weights",
    "inner_fold_assignment",
    "load_policy_selection",
    "load_trust_policy_settings",
    "out_of_fold_ratios",
    "repeated_cross_fit",
    "save_trust_policy",
    "stage_sources",
]
