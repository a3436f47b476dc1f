"""Streaming accumulators of a run's series: latencies (count, mean, a bounded sample for the
percentiles) and confidences per equal-width bin (counts and sums, binned as ``eval.metrics``
bins them)."""

from __future__ import annotations

import bisect
import random

import numpy as np

from eval.metrics import DEFAULT_BINS, EDGE_NUDGE, check_bins

LATENCY_SAMPLE = 20_000


class LatencyStats:
    """Count and mean of a series, with percentiles from a seeded uniform sample of it."""

    def __init__(self, *, cap: int = LATENCY_SAMPLE, seed: int = 0) -> None:
        self.count = 0
        self.total = 0.0
        self.cap = cap
        self.sample: list[float] = []
        self.seed = seed
        self._rng: random.Random | None = None

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if len(self.sample) < self.cap:
            self.sample.append(value)
        else:
            self._rng = self._rng or random.Random(self.seed)
            slot = self._rng.randrange(self.count)
            if slot < self.cap:
                self.sample[slot] = value

    @property
    def exact(self) -> bool:
        return self.count <= self.cap

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.sample, q)) if self.sample else None


class ConfidenceBins:
    """Per equal-width bin: count, sum of confidences and of correctness, binned exactly as
    ``eval.metrics`` bins them, so ``ece`` equals ``expected_calibration_error``."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        self.bins = check_bins(bins)
        self.edges = np.linspace(0.0, 1.0, self.bins + 1).tolist()
        self.counts = [0] * self.bins
        self.sum_confidence = [0.0] * self.bins
        self.sum_correct = [0.0] * self.bins
        self.squared_error = 0.0

    def add(self, confidence: float, correct: bool = False) -> None:
        eps = float(np.finfo(np.float64).eps)
        edged = min(max(confidence + EDGE_NUDGE, eps), 1.0 - eps)
        k = min(max(bisect.bisect_right(self.edges, edged) - 1, 0), self.bins - 1)
        self.counts[k] += 1
        self.sum_confidence[k] += min(confidence + EDGE_NUDGE, 1.0)
        self.sum_correct[k] += float(correct)
        self.squared_error += (confidence - float(correct)) ** 2

    @property
    def n(self) -> int:
        return sum(self.counts)

    @property
    def ece(self) -> float | None:
        if not self.n:
            return None
        gap = sum(abs(a - c) for a, c in zip(self.sum_correct, self.sum_confidence, strict=True))
        return round(gap / self.n, 8)

    @property
    def brier(self) -> float | None:
        return self.squared_error / self.n if self.n else None

    def accuracy(self, k: int) -> float | None:
        return self.sum_correct[k] / self.counts[k] if self.counts[k] else None

    def mean_confidence(self, k: int) -> float | None:
        return self.sum_confidence[k] / self.counts[k] if self.counts[k] else None
