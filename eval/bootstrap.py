"""Seeded percentile-bootstrap intervals for accuracy, ECE and CCC, vectorised over resamples.

Each resample draws n rows with replacement (a multinomial count per row), so one matrix
product gives a chunk of resamples' statistics at once: 1000 resamples of 160 rows take a few
ms. Chunks hold at most ``CHUNK_ELEMENTS`` counts, so 100,000 rows need no 800 MB matrix.
ECE uses the same equal-width bins as ``eval.metrics`` (a test checks it equals netcal's value
on the full data). A resample where the CCC is undefined (constant confidence or correctness)
is left out of the CCC interval; the interval is None when none is defined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from eval.metrics import DEFAULT_BINS, bin_index, check_confidence_correct

DEFAULT_RESAMPLES = 1000
CHUNK_ELEMENTS = 2_000_000
"""Resample counts held at once (16 MB of float64), whatever the number of rows: memory is
O(rows + resamples), not O(rows * resamples)."""
DEFAULT_LEVEL = 0.95
INTERVAL_KEYS = ("accuracy", "ece", "ccc")
"""The statistics ``bootstrap_intervals`` gives intervals of."""


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] how often each row is drawn in each resample (seeded)."""
    return np.concatenate(list(resample_count_chunks(n, resamples, seed)))


def resample_count_chunks(
    n: int, resamples: int, seed: int, *, max_elements: int | None = None
) -> Iterator[np.ndarray]:
    """``resample_counts`` a few resamples at a time (at most ``max_elements`` counts per
    chunk, default ``CHUNK_ELEMENTS``; at least one resample): the same draws, in the same
    order, for any chunk size."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, (max_elements or CHUNK_ELEMENTS) // max(n, 1))
    for start in range(0, resamples, per_chunk):
        size = min(per_chunk, resamples - start)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)


def _per_resample(
    n: int, resamples: int, seed: int, statistics: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``statistics`` (a row per weighting) of every resample, computed chunk by chunk."""
    return np.concatenate([statistics(w) for w in resample_count_chunks(n, resamples, seed)])


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
    accuracy = _per_resample(acc_rows.size, resamples, seed, lambda w: w @ acc_rows / acc_rows.size)
    acc = _interval(accuracy, level)
    if acc is not None:
        out["accuracy"] = acc
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.size == 0:
        return out
    conf, corr = check_confidence_correct(conf, correct)

    def ece_and_ccc(w: np.ndarray) -> np.ndarray:
        return np.stack([ece_of_weights(w, conf, corr, bins), pearson_of_weights(w, conf, corr)], 1)

    both = _per_resample(conf.size, resamples, seed + 1, ece_and_ccc)
    ece = _interval(both[:, 0], level)
    if ece is not None:
        out["ece"] = ece
    ccc = _interval(both[:, 1], level)
    if ccc is not None:
        out["ccc"] = ccc
    return out
