"""Calibration and classification metrics: pure functions over numpy arrays.

Every public function validates its input once, at entry (``ValueError`` showing the bad value),
and returns one type. Conventions:

- ``confidence``: the agent's confidence in its predicted label, in [0, 1];
  ``correct``: 0/1 (or bool), whether that predicted label was the true one.
- Equal-width bins: bin k of B is [k/B, (k+1)/B), the last one closed. A confidence exactly on
  an edge belongs to the upper bin, as in the definition. netcal bins with ``np.linspace`` edges,
  which are one ulp above 0.3, 0.6 and 0.7, so every binned metric here adds ``EDGE_NUDGE``
  (1e-9) to the confidences first: 0.7 then lands in [0.7, 0.8) and no value moves otherwise.
  ECE and MCE are rounded to 8 decimals, which removes the nudge's trace from the result.
- ECE (Naeini et al. 2015; netcal ``ECE``): sum over non-empty bins of n_k / n * |acc_k - conf_k|.
  MCE: the largest |acc_k - conf_k| over non-empty bins (netcal ``MCE``).
- Brier (top label): mean of (confidence - correct)^2.
- OCR (overconfidence rate): among predictions with confidence > t, the fraction that are wrong;
  ``None`` when no prediction is above t (the rate is undefined, not 0).
- CCC: Pearson correlation of confidence and 0/1 correctness with its two-sided p-value (scipy);
  ``None`` for both when either is constant (the correlation is undefined) or n < 3.

``eval.metric_table`` lists the calibration metrics that profiles and reports show.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

EDGE_NUDGE = 1e-9
DEFAULT_BINS = 10
DEFAULT_OCR_THRESHOLD = 0.5


@dataclass(frozen=True)
class ClassificationMetrics:
    """Accuracy, macro scores, per-class recall and the confusion matrix of one agent.

    ``confusion[i][j]``: rows are true labels, columns predicted labels in label order, plus a
    final column counting invalid predictions (label -1) when ``has_invalid_column``.
    Invalid predictions count as wrong everywhere.
    """

    n: int
    n_invalid: int
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class_recall: tuple[float, ...]
    per_class_precision: tuple[float, ...]
    confusion: tuple[tuple[int, ...], ...]
    has_invalid_column: bool


@dataclass(frozen=True)
class Correlation:
    """Pearson r with its two-sided p-value; both None when undefined."""

    r: float | None
    pvalue: float | None


@dataclass(frozen=True)
class ConfidenceMeans:
    overall: float
    correct: float | None
    wrong: float | None


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy (NaN where a bin is empty)."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    mean_confidence: tuple[float, ...]
    accuracy: tuple[float, ...]


def check_confidence_correct(confidence: object, correct: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (float64 confidences, float64 0/1 correctness)."""
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct)
    if conf.ndim != 1 or corr.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D (shapes {conf.shape}, {corr.shape})")
    if conf.shape != corr.shape:
        raise ValueError(f"confidence has {conf.size} values but correct has {corr.size}")
    if conf.size == 0:
        raise ValueError("no predictions given")
    bad = ~np.isfinite(conf) | (conf < 0.0) | (conf > 1.0)
    if bad.any():
        raise ValueError(f"confidence has values outside [0, 1]: {conf[bad][:5].tolist()}")
    corr_f = corr.astype(np.float64)
    if not np.isin(corr_f, (0.0, 1.0)).all():
        raise ValueError(f"correct must be 0/1, got {np.unique(corr_f)[:5].tolist()}")
    return conf, corr_f


def check_bins(bins: int) -> int:
    """``bins`` as an int, or ValueError when it is not a positive integer."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


def bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each confidence, exactly as netcal assigns the nudged values."""
    eps = np.finfo(np.float64).eps
    nudged = np.clip(confidence + EDGE_NUDGE, eps, 1.0 - eps)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, nudged, side="right") - 1, 0, bins - 1)


def expected_calibration_error(
    confidence: object, correct: object, *, bins: int = DEFAULT_BINS
) -> float:
    """ECE with ``bins`` equal-width bins, measured by netcal."""
    conf, corr = check_confidence_correct(confidence, correct)
    from netcal.metrics import ECE

    return round(float(ECE(check_bins(bins)).measure(nudge(conf), corr.astype(np.int64))), 8)


def maximum_calibration_error(
    confidence: object, correct: object, *, bins: int = DEFAULT_BINS
) -> float:
    """MCE with ``bins`` equal-width bins, measured by netcal."""
    conf, corr = check_confidence_correct(confidence, correct)
    from netcal.metrics import MCE

    return round(float(MCE(check_bins(bins)).measure(nudge(conf), corr.astype(np.int64))), 8)


def nudge(conf: np.ndarray) -> np.ndarray:
    """Confidences moved up by ``EDGE_NUDGE`` (capped at 1) so edges bin upward in netcal."""
    return np.minimum(conf + EDGE_NUDGE, 1.0)


def reliability_bins(
    confidence: object, correct: object, *, bins: int = DEFAULT_BINS
) -> ReliabilityBins:
    """What a reliability diagram draws: per-bin count, mean confidence and accuracy."""
    conf, corr = check_confidence_correct(confidence, correct)
    b = check_bins(bins)
    idx = bin_index(conf, b)
    counts = np.bincount(idx, minlength=b)
    sum_conf = np.bincount(idx, weights=conf, minlength=b)
    sum_corr = np.bincount(idx, weights=corr, minlength=b)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, sum_conf / np.maximum(counts, 1), np.nan)
        acc = np.where(counts > 0, sum_corr / np.maximum(counts, 1), np.nan)
    return ReliabilityBins(
        edges=tuple(np.linspace(0.0, 1.0, b + 1).tolist()),
        counts=tuple(int(c) for c in counts),
        mean_confidence=tuple(float(x) for x in mean_conf),
        accuracy=tuple(float(x) for x in acc),
    )


def brier_top_label(confidence: object, correct: object) -> float:
    """Mean squared difference between the top-label confidence and 0/1 correctness."""
    conf, corr = check_confidence_correct(confidence, correct)
    return float(np.mean((conf - corr) ** 2))


def overconfidence_rate(
    confidence: object, correct: object, *, threshold: float = DEFAULT_OCR_THRESHOLD
) -> float | None:
    """Among predictions with confidence > threshold, the fraction that are wrong (None: none)."""
    conf, corr = check_confidence_correct(confidence, correct)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    above = conf > threshold
    if not above.any():
        return None
    return float(1.0 - corr[above].mean())


def confidence_correctness_correlation(confidence: object, correct: object) -> Correlation:
    """CCC: Pearson r of confidence and 0/1 correctness, with its p-value (scipy)."""
    conf, corr = check_confidence_correct(confidence, correct)
    if conf.size < 3 or np.ptp(conf) == 0.0 or np.ptp(corr) == 0.0:
        return Correlation(None, None)
    from scipy.stats import pearsonr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pearsonr(conf, corr)
    r, p = float(result.statistic), float(result.pvalue)
    if math.isnan(r):
        return Correlation(None, None)
    return Correlation(r, p)


def confidence_means(confidence: object, correct: object) -> ConfidenceMeans:
    conf, corr = check_confidence_correct(confidence, correct)
    hit = corr == 1.0
    return ConfidenceMeans(
        overall=float(conf.mean()),
        correct=float(conf[hit].mean()) if hit.any() else None,
        wrong=float(conf[~hit].mean()) if (~hit).any() else None,
    )


def classification_metrics(truth: object, pred: object, n_labels: int) -> ClassificationMetrics:
    """Accuracy, macro precision/recall/F1 (unweighted mean over the labels), confusion.

    ``truth`` and ``pred`` are label indices in [0, n_labels); ``pred`` -1 marks an invalid
    prediction. A label never predicted has precision 0; one never true has recall 0 (as
    scikit-learn's ``zero_division=0``).
    """
    t = np.asarray(truth)
    p = np.asarray(pred)
    if t.ndim != 1 or p.shape != t.shape:
        raise ValueError(f"truth and pred must be 1-D of equal length ({t.shape}, {p.shape})")
    if t.size == 0:
        raise ValueError("no predictions given")
    if n_labels < 2:
        raise ValueError(f"need at least two labels, got {n_labels}")
    t = t.astype(np.int64)
    p = p.astype(np.int64)
    if ((t < 0) | (t >= n_labels)).any():
        raise ValueError(f"truth indices outside [0, {n_labels}): {np.unique(t)[:5].tolist()}")
    if ((p < -1) | (p >= n_labels)).any():
        raise ValueError(f"pred indices outside [-1, {n_labels}): {np.unique(p)[:5].tolist()}")
    invalid = p == -1
    cols = np.where(invalid, n_labels, p)
    full = np.zeros((n_labels, n_labels + 1), dtype=np.int64)
    np.add.at(full, (t, cols), 1)
    square = full[:, :n_labels]
    tp = np.diag(square).astype(np.float64)
    true_count = full.sum(axis=1).astype(np.float64)
    pred_count = square.sum(axis=0).astype(np.float64)
    recall = np.divide(tp, true_count, out=np.zeros_like(tp), where=true_count > 0)
    precision = np.divide(tp, pred_count, out=np.zeros_like(tp), where=pred_count > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    has_invalid = bool(invalid.any())
    matrix = full if has_invalid else square
    return ClassificationMetrics(
        n=int(t.size),
        n_invalid=int(invalid.sum()),
        accuracy=float(tp.sum() / t.size),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        per_class_recall=tuple(float(x) for x in recall),
        per_class_precision=tuple(float(x) for x in precision),
        confusion=tuple(tuple(int(v) for v in row) for row in matrix),
        has_invalid_column=has_invalid,
    )
