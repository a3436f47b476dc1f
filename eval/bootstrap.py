"""Seeded percentile-bootstrap intervals for accuracy, ECE and CCC, vectorised over resamples.

Each resample draws n rows with replacement (a multinomial count per row), so one matrix
product gives every resample's statistic at once: 1000 resamples of 160 rows take a few ms.
ECE uses the same equal-width bins as ``eval.metrics`` (a test checks it equals netcal's value
on the full data). A resample where the CCC is undefined (constant confidence or correctness)
is left out of the CCC interval; the interval is None when none is defined.
"""

from __future__ import annotations

import numpy as np

from eval.metrics import DEFAULT_BINS, bin_index, check_confidence_correct

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
INTERVAL_KEYS = ("accuracy", "ece", "ccc")
"""The statistics ``bootstrap_intervals`` gives intervals of."""


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] how often each row is drawn in each resample (seeded)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def ece_of_weights(
    weights: np.ndarray, confidence: np.ndarray, correct: np.ndarray, bins: int
) -> np.ndarray:
    """ECE of each weighting of the rows (rows of ``weights``), equal-width bins."""
    onehot = np.zeros((confidence.size, bins))
    onehot[np.arange(confidence.size), bin_index(confidence, bins)] = 1.0
    count = weights @ onehot
    sum_conf = weights @ (onehot * confidence[:, None])
    sum_corr = weights @ (onehot * correct[:, None])
    total = count.sum(axis=1)
    return np.abs(sum_corr - sum_conf).sum(axis=1) / np.maximum(total, 1e-300)


def pearson_of_weights(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of x and y under each weighting; NaN where a variance is 0."""
    total = weights.sum(axis=1)
    mx = weights @ x / total
    my = weights @ y / total
    cov = weights @ (x * y) / total - mx * my
    vx = weights @ (x * x) / total - mx**2
    vy = weights @ (y * y) / total - my**2
    tiny = 1e-12
    ok = (vx > tiny) & (vy > tiny)
    r = np.full(total.shape, np.nan)
    r[ok] = cov[ok] / np.sqrt(vx[ok] * vy[ok])
    return np.clip(r, -1.0, 1.0)


def _interval(values: np.ndarray, level: float) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_intervals(
    correct_all: object,
    confidence: object,
    correct: object,
    *,
    bins: int = DEFAULT_BINS,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, tuple[float, float]]:
    """95% (``level``) percentile intervals: ``accuracy`` over ``correct_all`` (every row,
    invalid predictions as wrong), ``ece`` and ``ccc`` over the rows with a valid prediction
    (``confidence``, ``correct``). Rows are resampled separately for the two sets.

    Keys whose statistic is undefined in every resample are left out.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    acc_rows = np.asarray(correct_all, dtype=np.float64)
    if acc_rows.ndim != 1 or acc_rows.size == 0:
        raise ValueError("correct_all must be a non-empty 1-D array")
    out: dict[str, tuple[float, float]] = {}
    w_all = resample_counts(acc_rows.size, resamples, seed)
    acc = _interval(w_all @ acc_rows / acc_rows.size, level)
    if acc is not None:
        out["accuracy"] = acc
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.size == 0:
        return out
    conf, corr = check_confidence_correct(conf, correct)
    w = resample_counts(conf.size, resamples, seed + 1)
    ece = _interval(ece_of_weights(w, conf, corr, bins), level)
    if ece is not None:
        out["ece"] = ece
    ccc = _interval(pearson_of_weights(w, conf, corr), level)
    if ccc is not None:
        out["ccc"] = ccc
    return out
