"""Conformal prediction sets in the replay benchmark (``trustorch eval replay --alpha``).

Calibration rows are never rows the fusion was fitted on, and never test rows: within each
outer training fold, a stratified quarter of the rows (``CALIBRATION_FRACTION``, drawn with the
replay's seed) is set aside; the policy is fitted on the other three quarters, then decides the
calibration quarter, whose fused distributions calibrate the sets (``eval.conformal``), and the
held-out fold, whose sets are scored (ties broken by ``eval.conformal.tie_breaks`` of each
row's id and the seed). The replay's own figures (accuracy, ECE, ...) still come
from the policy fitted on the whole training fold; the sets, their coverage and the singleton
rule's accuracy come from the policy fitted on three quarters of it, the one that a policy
file written with ``--save-policy --alpha`` holds.

Why a plain split and not inner cross-fitting (calibration scores for every training row from
policies fitted without it, sets from the policy fitted on all of it): a fused distribution of
coarse VLM confidences takes few distinct values, and each refitted policy puts those values in
slightly different places. The calibration scores then spread over a range where the test
fold's scores are one tight group, which falls wholly inside the set: on Case 1 the
cross-fitted sets covered 0.93-0.95 at ``alpha = 0.1`` (mean of seeds 0-4), the split ones
0.90, because calibration and test scores come from the same policy (the exchangeability that
the guarantee needs). A quarter rather than a half: the half gave the same coverage and set
sizes with a weaker policy (singleton accuracy 0.972 against 0.983 on Case 3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InputError
from eval.conformal import (
    DEFAULT_SCORE,
    SplitConformal,
    check_alpha,
    confidence_sweep,
    defer_unless_singleton,
    set_metrics,
    tie_breaks,
)
from eval.folds import stratified_folds
from orchestrator.policies.base import FusionPolicy
from orchestrator.replay.arrays import RowDecision

CALIBRATION_FRACTION = 0.25

FitOn = Callable[[Sequence[str]], FusionPolicy]
"""Fits the policy on the rows with these ids."""
Decide = Callable[[FusionPolicy, Sequence[int]], Sequence[RowDecision]]
"""The fitted policy's decisions on these rows (positions in the replayed file)."""


@dataclass(frozen=True)
class ConformalSettings:
    """What ``eval replay --alpha`` asks for."""

    alphas: tuple[float, ...]
    score: str = DEFAULT_SCORE
    mondrian: bool = False
    randomized: bool = True
    calibration_fraction: float = CALIBRATION_FRACTION

    def __post_init__(self) -> None:
        if not self.alphas:
            raise InputError("conformal sets need at least one alpha")
        object.__setattr__(self, "alphas", tuple(dict.fromkeys(map(check_alpha, self.alphas))))
        if not 0.0 < self.calibration_fraction <= 0.5:
            raise InputError(
                f"the calibration fraction must be in (0, 0.5], got {self.calibration_fraction}"
            )

    def estimator(self, alpha: float, seed: int) -> SplitConformal:
        return SplitConformal(
            alpha=alpha,
            score=self.score,
            mondrian=self.mondrian,
            randomized=self.randomized,
            seed=seed,
        )


@dataclass(frozen=True)
class ConformalFold:
    """One outer fold's calibration and test distributions, from the same fitted policy."""

    calibration: np.ndarray
    calibration_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    fit_ids: tuple[str, ...]
    calibration_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    policy: FusionPolicy
    """The policy fitted on ``fit_ids``, which gave both distributions."""


def calibration_split(
    truth: Sequence[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``truth``) of the fitting rows and of the calibration rows: a stratified
    ``fraction`` of every class (``eval.folds``), drawn with ``seed``."""
    parts = round(1.0 / fraction)
    assignment = stratified_folds(list(truth), parts, seed)
    return np.flatnonzero(assignment != 0), np.flatnonzero(assignment == 0)


def _distributions(decisions: Sequence[RowDecision], labels: Sequence[str]) -> np.ndarray:
    rows = [d.probabilities for d in decisions]
    if any(len(r) != len(labels) for r in rows):
        raise InputError("a decision without its fused distribution: no conformal set for it")
    return np.array(rows, dtype=float).reshape(len(rows), len(labels))


def conformal_fold(
    *,
    ids: Sequence[str],
    truth: Sequence[str],
    labels: Sequence[str],
    train_rows: Sequence[int],
    test_rows: Sequence[int],
    fit_on: FitOn,
    decide: Decide,
    fraction: float,
    seed: int,
) -> ConformalFold:
    """Split ``train_rows`` into fitting and calibration rows, fit the policy on the first,
    and decide the calibration rows and ``test_rows`` (possibly none) with it."""
    train = np.asarray(train_rows)
    fit_pos, cal_pos = calibration_split([truth[i] for i in train], fraction, seed)
    fit_rows, cal_rows = train[fit_pos].tolist(), train[cal_pos].tolist()
    policy = fit_on([ids[i] for i in fit_rows])
    index = {y: k for k, y in enumerate(labels)}
    return ConformalFold(
        calibration=_distributions(decide(policy, cal_rows), labels),
        calibration_labels=np.array([index[truth[i]] for i in cal_rows], dtype=np.int64),
        test=_distributions(decide(policy, list(test_rows)) if len(test_rows) else [], labels),
        test_labels=np.array([index[truth[i]] for i in test_rows], dtype=np.int64),
        fit_ids=tuple(ids[i] for i in fit_rows),
        calibration_ids=tuple(ids[i] for i in cal_rows),
        test_ids=tuple(ids[i] for i in test_rows),
        policy=policy,
    )


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def conformal_report(
    folds: Sequence[ConformalFold],
    labels: Sequence[str],
    settings: ConformalSettings,
    *,
    seed: int,
) -> dict[str, Any]:
    """Per alpha, the held-out sets' coverage (overall and per class), mean size and the
    singleton rule's figures; the risk-coverage curves; each fold's calibration rows."""
    test = np.concatenate([f.test for f in folds])
    truth = np.concatenate([f.test_labels for f in folds])
    levels = []
    for alpha in settings.alphas:
        fitted = [
            settings.estimator(alpha, seed).fit(f.calibration, f.calibration_labels) for f in folds
        ]
        sets = np.concatenate(
            [
                c.transform(f.test, tie_breaks(f.test_ids, seed))
                for c, f in zip(fitted, folds, strict=True)
            ]
        )
        metrics = set_metrics(sets, truth, label_names=labels, probabilities=test).to_dict()
        levels.append(
            {
                "alpha": alpha,
                "target_coverage": 1.0 - alpha,
                **metrics,
                "deferred": int((defer_unless_singleton(sets, test) < 0).sum()),
                "thresholds": [
                    [None if np.isinf(t) else t for t in c.thresholds_.tolist()] for c in fitted
                ],
            }
        )
    return {
        "score": settings.score,
        "mondrian": settings.mondrian,
        "randomized": settings.randomized,
        "calibration": (
            f"split: a stratified {settings.calibration_fraction:g} of each training fold, "
            "the policy fitted on the rest"
        ),
        "levels": levels,
        "risk_coverage": {
            "singleton": [
                {
                    "alpha": lv["alpha"],
                    "answered": lv["singleton_rate"],
                    "accuracy": lv["singleton_accuracy"],
                }
                for lv in levels
            ],
            "confidence": [p.to_dict() for p in confidence_sweep(test, truth)],
        },
        "folds": [
            {
                "n_fit": len(f.fit_ids),
                "n_calibration": len(f.calibration_ids),
                "n_test": int(f.test_labels.size),
                "fit_ids_sha256": _digest(f.fit_ids),
                "calibration_ids_sha256": _digest(f.calibration_ids),
            }
            for f in folds
        ],
    }


CONFORMAL_MEAN_KEYS = (
    "coverage",
    "mean_set_size",
    "empty_rate",
    "singleton_rate",
    "singleton_accuracy",
)


def conformal_seeds_mean(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per alpha, the means over seeds of the ``conformal`` blocks of several replay reports
    (per class coverage too)."""
    blocks = [r["conformal"] for r in reports]
    out = []
    for i, level in enumerate(blocks[0]["levels"]):
        per_seed = [b["levels"][i] for b in blocks]
        entry: dict[str, Any] = {
            "alpha": level["alpha"],
            "target_coverage": level["target_coverage"],
        }
        for key in CONFORMAL_MEAN_KEYS:
            values = [lv[key] for lv in per_seed if lv[key] is not None]
            entry[key] = sum(values) / len(values) if values else None
        entry["coverage_per_class"] = {
            name: _mean([lv["coverage_per_class"][name] for lv in per_seed])
            for name in level["coverage_per_class"]
        }
        out.append(entry)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
