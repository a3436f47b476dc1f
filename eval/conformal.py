"""Split-conformal prediction sets over a probability matrix, and what they are worth.

Given probabilities (rows x labels) from any classifier and calibration rows it was not fitted
on, split-conformal prediction gives, for a miscoverage ``alpha``, a set of labels per row that
holds the true label with probability at least ``1 - alpha``, whatever the classifier, as long
as the calibration rows and the new rows are exchangeable (Vovk, Gammerman & Shafer 2005; LAC:
Sadinle, Lei & Wasserman 2019; APS: Romano, Sesia & Candes 2020).

The rule, as MAPIE implements it (``mapie.utils._compute_classification_quantile`` and its LAC
conformity score; ``tests/test_conformal.py`` checks the sets against it):

- every label y of a row gets a nonconformity score ``s(x, y)``: ``lac`` is ``1 - p(y)``;
  ``aps`` is the probability mass of the labels ranked at or above y (labels sorted by
  probability, best first, ties in label order);
- the calibration scores are those of the true labels, ``s_i = s(x_i, y_i)``; the threshold is
  their ``k``-th smallest value, ``k = ceil((n + 1)(1 - alpha))`` (the quantile of level
  ``k / n``), infinite when ``k > n``;
- a row's set is ``{y : s(x, y) <= threshold}`` (with MAPIE's 1e-8 tolerance).

Equivalently, label y is in the set when its conformal p-value ``(#{s_i > s} + u (#{s_i = s}
+ 1)) / (n + 1)`` exceeds ``alpha``, with ``u = 1``. With no ties, coverage lies in
``[1 - alpha, 1 - alpha + 1/(n + 1))``. The fused distributions of agents that report coarse
confidences take few distinct values, and a whole group of tied rows then falls on one side of
the threshold: on the study's Case 1 the rule above covers 0.95 of the rows at ``alpha = 0.1``.
``randomized=True`` (the default of ``SplitConformal``) draws ``u`` uniformly in (0, 1), one
per row (the smoothed p-value of Vovk et al.), which makes coverage ``1 - alpha`` exactly, in
expectation. ``tie_breaks`` derives ``u`` from a hash of each row's identity and a seed, so a row
gets the same set every time it is decided. The draws must be independent from row to row: one
``u`` shared by every row with the same distribution (a hash of the probabilities) leaves the
expectation right but puts a whole group of tied rows in or out together; with the few distinct
distributions of a majority vote, one seed's coverage on Case 3 fell to 0.74 at ``alpha = 0.1``.

``lac`` is the default score: of all rules with the same marginal coverage it gives the
smallest sets on average (Sadinle et al.), and an accurate classifier mostly gets singletons
from it. ``aps`` spreads coverage more evenly between easy and hard rows at the price of larger
sets. ``mondrian=True`` calibrates each label on the calibration rows of that class
(class-conditional coverage: ``1 - alpha`` within every class). A class with fewer than
``1/alpha - 1`` calibration rows has an infinite threshold: the deterministic rule always puts
its label in the set, the randomized one often enough to keep its coverage at ``1 - alpha``.

An empty set means that no label is plausible at this level, not even the best one.
``empty="keep"`` (the default, MAPIE's behaviour) keeps it and counts it as a miss, which is
what keeps coverage near ``1 - alpha`` rather than at the classifier's accuracy;
``empty="top"`` puts the best label in instead (coverage can only rise). Answering only on
singleton sets (``defer_unless_singleton``) defers on an empty set either way.

Selective answering is summed up by its risk-coverage curve: accuracy on the answered rows
against the fraction answered, for the singleton rule (one point per ``alpha``) and for a sweep
of a threshold on the top probability (``confidence_sweep``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InputError, NotFittedError

SCORES = ("lac", "aps")
DEFAULT_SCORE = "lac"
EMPTY_RULES = ("keep", "top")
TOLERANCE = 1e-8
"""Scores this close count as equal (MAPIE's ``EPSILON``)."""
_ROUNDING = 1e-9
"""Slack for ``(n + 1)(1 - alpha)`` and ``alpha (n + 1)``, whole numbers that floating point
can put a hair off."""


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in (0, 1); InputError otherwise."""
    value = float(alpha)
    if not 0.0 < value < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")
    return value


def _check_score(score: str) -> str:
    if score not in SCORES:
        raise InputError(f"score must be one of {SCORES}, got {score!r}")
    return score


def _probability_matrix(probabilities: Any, *, what: str = "probabilities") -> np.ndarray:
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 2 or p.shape[1] < 1:
        raise InputError(f"{what} must be a rows x labels matrix, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise InputError(f"{what} has values outside [0, 1]")
    return p


def _label_indices(labels: Any, rows: int, n_labels: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (rows,):
        raise InputError(f"need one label per row ({rows}), got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_labels):
        raise InputError(f"labels must be label indices in [0, {n_labels - 1}]")
    return y.astype(np.int64)


def label_scores(probabilities: Any, *, score: str = DEFAULT_SCORE) -> np.ndarray:
    """The nonconformity score of every label of every row (rows x labels): ``1 - p(y)`` for
    ``lac``, the mass ranked at or above y for ``aps``."""
    _check_score(score)
    p = _probability_matrix(probabilities)
    if score == "lac":
        return 1.0 - p
    order = np.argsort(-p, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
    out = np.empty_like(p)
    np.put_along_axis(out, order, cumulative, axis=1)
    return out


def conformity_scores(probabilities: Any, labels: Any, *, score: str = DEFAULT_SCORE) -> np.ndarray:
    """The score of each row's true label (``labels``: label indices)."""
    scores = label_scores(probabilities, score=score)
    y = _label_indices(labels, scores.shape[0], scores.shape[1])
    return scores[np.arange(y.size), y]


def conformal_rank(n: int, alpha: float) -> int:
    """``k = ceil((n + 1)(1 - alpha))``: the rank of the threshold among ``n`` scores."""
    return math.ceil((n + 1) * (1.0 - check_alpha(alpha)) - _ROUNDING)


def conformal_quantile(scores: Any, alpha: float) -> float:
    """The split-conformal threshold of calibration ``scores``: their ``k``-th smallest value,
    ``k = ceil((n + 1)(1 - alpha))``; ``inf`` when ``k > n`` (too few rows for this alpha)."""
    s = np.asarray(scores, dtype=float).ravel()
    if s.size == 0:
        raise InputError("conformal calibration needs at least one scored row, got none")
    if not np.isfinite(s).all():
        raise InputError("calibration scores must be finite")
    k = conformal_rank(s.size, alpha)
    return math.inf if k > s.size else float(np.sort(s)[k - 1])


def tie_breaks(keys: Sequence[str], seed: int = 0) -> np.ndarray:
    """One number in (0, 1) per key (a row's identity: an image id, its answers), from a hash
    of ``seed`` and the key: uniform and independent from key to key, and the same every time
    the same key is decided."""
    out = np.empty(len(keys))
    for i, key in enumerate(keys):
        digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
        out[i] = (int.from_bytes(digest[:8], "big") + 0.5) / 2.0**64
    return out


def _p_value_numerators(calibration: np.ndarray, scores: np.ndarray, tie_break: Any | None) -> Any:
    """``#{s_i > s} + u (#{s_i = s} + 1)`` for sorted ``calibration`` and each of ``scores``."""
    above = calibration.size - np.searchsorted(calibration, scores + TOLERANCE, side="right")
    equal = calibration.size - above - np.searchsorted(calibration, scores - TOLERANCE)
    u = np.ones(scores.shape[:1]) if tie_break is None else np.asarray(tie_break, dtype=float)
    if u.shape != scores.shape[:1]:
        raise InputError(f"need one tie break per row ({scores.shape[0]}), got shape {u.shape}")
    return above + u.reshape(u.shape + (1,) * (scores.ndim - 1)) * (equal + 1)


def conformal_p_values(
    calibration_scores: Any, scores: Any, tie_break: Any | None = None
) -> np.ndarray:
    """The conformal p-value of each score in ``scores`` (any shape; the leading axis is the
    row) against ``calibration_scores``: ``(#{s_i > s} + u (#{s_i = s} + 1)) / (n + 1)``,
    ``u`` one per row from ``tie_break`` (1 when None: the deterministic rule)."""
    cal = np.sort(np.asarray(calibration_scores, dtype=float).ravel())
    return _p_value_numerators(cal, np.asarray(scores, dtype=float), tie_break) / (cal.size + 1)


def prediction_sets(
    probabilities: Any,
    calibration_scores: Sequence[Any],
    alpha: float,
    *,
    score: str = DEFAULT_SCORE,
    tie_break: Any | None = None,
    empty: str = "keep",
) -> np.ndarray:
    """Which labels each row's set holds (rows x labels, bool): those whose conformal p-value
    exceeds ``alpha``. ``calibration_scores`` is one array for every label, or one per label
    (Mondrian: the scores of the calibration rows of that class)."""
    alpha = check_alpha(alpha)
    if empty not in EMPTY_RULES:
        raise InputError(f"empty must be one of {EMPTY_RULES}, got {empty!r}")
    p = _probability_matrix(probabilities)
    scores = label_scores(p, score=score)
    if len(calibration_scores) not in (1, p.shape[1]):
        raise InputError(
            f"need one set of calibration scores, or one per label ({p.shape[1]}), "
            f"got {len(calibration_scores)}"
        )
    sets = np.empty(p.shape, dtype=bool)
    for y in range(p.shape[1]):
        cal = np.sort(np.asarray(calibration_scores[0 if len(calibration_scores) == 1 else y]))
        numerators = _p_value_numerators(cal, scores[:, y], tie_break)
        sets[:, y] = numerators > alpha * (cal.size + 1) + _ROUNDING
    if empty == "top":
        blank = ~sets.any(axis=1)
        sets[blank, p[blank].argmax(axis=1)] = True
    return sets


def defer_unless_singleton(sets: Any, probabilities: Any | None = None) -> np.ndarray:
    """The conformal abstention rule: each row's label index when its set holds exactly one
    label, else -1 (defer: the set is empty or holds several labels).

    With ``probabilities`` (the rows the sets were made from), a singleton answers only when
    its label is also the row's most probable one. LAC and APS sets always hold the most
    probable labels first, so this changes nothing there; a Mondrian set need not, and a class
    with few calibration rows is in nearly every set whatever its probability, so a row whose
    best label fell out would be answered with that class.
    """
    s = np.asarray(sets, dtype=bool)
    if s.ndim != 2:
        raise InputError(f"sets must be a rows x labels matrix, got shape {s.shape}")
    single = s.sum(axis=1) == 1
    label = s.argmax(axis=1)
    if probabilities is not None:
        p = _probability_matrix(probabilities)
        if p.shape != s.shape:
            raise InputError(f"need probabilities of the sets' shape {s.shape}, got {p.shape}")
        rows = np.arange(s.shape[0])
        single &= p[rows, label] >= p.max(axis=1) - TOLERANCE
    return np.where(single, label, -1)


class SplitConformal:
    """Split-conformal prediction sets, fitted on calibration probabilities and labels.

    ``SplitConformal(alpha=0.1).fit(cal_probabilities, cal_labels).transform(probabilities)``
    gives the sets (rows x labels, bool). Settings: ``alpha``, ``score`` (``lac`` or ``aps``),
    ``mondrian`` (calibrate each label on its own class), ``randomized`` (tie breaks, see
    ``transform``), ``empty`` (``keep`` or ``top``), ``seed``. Learned:
    ``calibration_scores_`` (one sorted array, or one per label with Mondrian),
    ``thresholds_`` (the deterministic threshold of each label at ``alpha``, inf where there
    are too few rows) and ``n_calibration_`` (rows behind each label).
    """

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        score: str = DEFAULT_SCORE,
        mondrian: bool = False,
        randomized: bool = True,
        empty: str = "keep",
        seed: int = 0,
    ) -> None:
        self.alpha = check_alpha(alpha)
        self.score = _check_score(score)
        if empty not in EMPTY_RULES:
            raise InputError(f"empty must be one of {EMPTY_RULES}, got {empty!r}")
        self.mondrian = bool(mondrian)
        self.randomized = bool(randomized)
        self.empty = empty
        self.seed = int(seed)

    def fit(self, probabilities: Any, labels: Any) -> SplitConformal:
        """Calibrate on rows the classifier was not fitted on (``labels``: label indices)."""
        p = _probability_matrix(probabilities, what="calibration probabilities")
        if p.shape[0] == 0:
            raise InputError("conformal calibration needs at least one row, got none")
        y = _label_indices(labels, p.shape[0], p.shape[1])
        scores = conformity_scores(p, y, score=self.score)
        if self.mondrian:
            self.calibration_scores_ = [np.sort(scores[y == c]) for c in range(p.shape[1])]
        else:
            self.calibration_scores_ = [np.sort(scores)]
        self.n_labels_ = p.shape[1]
        self._learn_thresholds()
        return self

    def _learn_thresholds(self) -> None:
        per_label = [
            self.calibration_scores_[0 if len(self.calibration_scores_) == 1 else y]
            for y in range(self.n_labels_)
        ]
        self.thresholds_ = np.array(
            [conformal_quantile(s, self.alpha) if s.size else math.inf for s in per_label]
        )
        self.n_calibration_ = np.array([s.size for s in per_label])

    def _check_fitted(self) -> None:
        if not hasattr(self, "calibration_scores_"):
            raise NotFittedError("SplitConformal is not fitted; call fit or from_dict first")

    def transform(self, probabilities: Any, tie_break: Any | None = None) -> np.ndarray:
        """The prediction set of each row (rows x labels, bool). With ``randomized``, the tie
        breaks are ``tie_break`` (one per row, e.g. ``tie_breaks`` of the rows' ids) when
        given, else independent draws seeded with ``seed``: pass them when deciding row by
        row, or every row gets the same draw."""
        self._check_fitted()
        p = _probability_matrix(probabilities)
        if p.shape[1] != self.n_labels_:
            raise InputError(
                f"fitted on {self.n_labels_} labels, got probabilities over {p.shape[1]}"
            )
        u = None
        if self.randomized:
            u = tie_break
            if u is None:
                u = np.random.default_rng(self.seed).uniform(size=p.shape[0])
        return prediction_sets(
            p,
            self.calibration_scores_,
            self.alpha,
            score=self.score,
            tie_break=u,
            empty=self.empty,
        )

    def decide(self, probabilities: Any, tie_break: Any | None = None) -> np.ndarray:
        """Label index per row where its set is a singleton, -1 where it defers."""
        return defer_unless_singleton(self.transform(probabilities, tie_break), probabilities)

    def to_dict(self) -> dict[str, Any]:
        """Settings and calibration scores (enough to rebuild it at any alpha)."""
        self._check_fitted()
        return {
            "alpha": self.alpha,
            "score": self.score,
            "mondrian": self.mondrian,
            "randomized": self.randomized,
            "empty": self.empty,
            "seed": self.seed,
            "n_labels": self.n_labels_,
            "calibration_scores": [s.tolist() for s in self.calibration_scores_],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, alpha: float | None = None) -> SplitConformal:
        """The fitted estimator ``to_dict`` wrote, at its own alpha or at ``alpha``."""
        out = cls(
            alpha=data["alpha"] if alpha is None else alpha,
            score=data.get("score", DEFAULT_SCORE),
            mondrian=data.get("mondrian", False),
            randomized=data.get("randomized", True),
            empty=data.get("empty", "keep"),
            seed=data.get("seed", 0),
        )
        scores = [np.sort(np.asarray(s, dtype=float)) for s in data["calibration_scores"]]
        n_labels = int(data["n_labels"])
        if len(scores) != (n_labels if out.mondrian else 1):
            raise InputError(
                f"need {n_labels if out.mondrian else 1} list(s) of calibration scores, "
                f"got {len(scores)}"
            )
        out.calibration_scores_, out.n_labels_ = scores, n_labels
        out._learn_thresholds()
        return out


@dataclass(frozen=True)
class SetMetrics:
    """How prediction sets did on labelled rows."""

    n: int
    coverage: float
    """Fraction of rows whose set holds the true label."""
    coverage_per_class: dict[str, float | None]
    """The same among the rows of each true class (None for a class with no row)."""
    mean_set_size: float
    empty_rate: float
    singleton_rate: float
    """Fraction of rows answered by the singleton rule."""
    singleton_accuracy: float | None
    """Accuracy on those rows (None when no set is a singleton)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "coverage": self.coverage,
            "coverage_per_class": dict(self.coverage_per_class),
            "mean_set_size": self.mean_set_size,
            "empty_rate": self.empty_rate,
            "singleton_rate": self.singleton_rate,
            "singleton_accuracy": self.singleton_accuracy,
        }


def set_metrics(
    sets: Any,
    labels: Any,
    *,
    label_names: Sequence[str] | None = None,
    probabilities: Any | None = None,
) -> SetMetrics:
    """Coverage (overall and per class), mean set size and the singleton rule's figures
    (``defer_unless_singleton``, with ``probabilities`` when given)."""
    s = np.asarray(sets, dtype=bool)
    if s.ndim != 2 or s.shape[0] == 0:
        raise InputError(f"sets must be a non-empty rows x labels matrix, got shape {s.shape}")
    y = _label_indices(labels, s.shape[0], s.shape[1])
    names = list(label_names) if label_names is not None else [str(c) for c in range(s.shape[1])]
    if len(names) != s.shape[1]:
        raise InputError(f"need {s.shape[1]} label names, got {len(names)}")
    covered = s[np.arange(y.size), y]
    sizes = s.sum(axis=1)
    single = defer_unless_singleton(s, probabilities) >= 0
    return SetMetrics(
        n=int(y.size),
        coverage=float(covered.mean()),
        coverage_per_class={
            name: (float(covered[y == c].mean()) if (y == c).any() else None)
            for c, name in enumerate(names)
        },
        mean_set_size=float(sizes.mean()),
        empty_rate=float((sizes == 0).mean()),
        singleton_rate=float(single.mean()),
        singleton_accuracy=float(covered[single].mean()) if single.any() else None,
    )


@dataclass(frozen=True)
class SelectivePoint:
    """One point of a risk-coverage curve: answer the rows whose top probability reaches
    ``threshold``."""

    threshold: float
    answered: float
    """Fraction of rows answered."""
    accuracy: float
    """Accuracy on the answered rows."""

    def to_dict(self) -> dict[str, float]:
        return {"threshold": self.threshold, "answered": self.answered, "accuracy": self.accuracy}


def confidence_sweep(probabilities: Any, labels: Any) -> list[SelectivePoint]:
    """The risk-coverage curve of answering when the top probability reaches a threshold: one
    point per distinct top probability, most confident first (the last answers every row)."""
    p = _probability_matrix(probabilities)
    if p.shape[0] == 0:
        raise InputError("a risk-coverage curve needs at least one row, got none")
    y = _label_indices(labels, p.shape[0], p.shape[1])
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    order = np.argsort(-confidence, kind="stable")
    conf_sorted, right = confidence[order], np.cumsum(correct[order])
    # the last row of each run of equal confidences: a threshold answers all of them or none
    ends = np.flatnonzero(np.r_[conf_sorted[1:] != conf_sorted[:-1], True])
    return [
        SelectivePoint(
            threshold=float(conf_sorted[i]),
            answered=float((i + 1) / y.size),
            accuracy=float(right[i] / (i + 1)),
        )
        for i in ends
    ]
