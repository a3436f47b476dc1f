"""Distributions read from a top-label answer (a label and a confidence, no scores)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def peaked_scores(confidence: np.ndarray, label: np.ndarray, n_labels: int) -> np.ndarray:
    """Per row, ``confidence`` on the row's ``label`` index and the rest spread evenly over the
    other ``n_labels - 1`` labels."""
    conf = np.asarray(confidence, dtype=np.float64)
    out = np.repeat(((1.0 - conf) / (n_labels - 1))[:, None], n_labels, axis=1)
    out[np.arange(conf.size), np.asarray(label)] = conf
    return out


def peaked_label_scores(labels: Sequence[str], label: str, confidence: float) -> dict[str, float]:
    """``peaked_scores`` of one answer, by label name."""
    row = peaked_scores(np.array([confidence]), np.array([list(labels).index(label)]), len(labels))
    return dict(zip(labels, row[0].tolist(), strict=True))
