"""The array fusion core: weighted log-linear pooling of calibrated sources, and the cascade.

Arrays are laid out rows x sources x labels. ``ratios[n, s, y]`` is source s's evidence for
label y on row n, ``log q_s(y) - log prior_s(y)`` (0 everywhere for a source that has no usable
answer on that row, which leaves it out of the product). The fused distribution of a row is

    p(y) = softmax_y( log_prior(y) + sum_s w_s * ratios[n, s, y] )

(a product of experts; without ``log_prior`` the prior term is left out, which is the same
distribution as a flat prior up to rounding). The graph's trust policy fuses one row at a
time, its fitting fuses every training row at once, and the replay benchmarks fuse whole folds:
all of them pool with ``pooled_logits``; the graph and the replay read ``fuse`` and the fitting
reads ``fused_log_probabilities`` (each rounds exactly as it did before the core was shared, so
the fitted thresholds and the graph's confidences are unchanged to the last bit).

``cascade`` is the policy's two-stage decision on arrays: trust the first stage when its
confidence reaches the threshold, else take the re-evaluated stage, and abstain when that too
stays below ``abstain_below``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax over the last axis, shifted by the row maximum for stability."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def pooled_logits(ratios: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_s weights[s] * ratios[:, s, :]``: rows x labels (unnormalised log-probabilities).

    Summed source by source, in order, so a row's result does not depend on how many rows are
    pooled with it (a matrix product may round differently from one shape to another).
    """
    if ratios.ndim != 3 or weights.shape != (ratios.shape[1],):
        raise InputError(
            f"need ratios of shape (rows, sources, labels) and one weight per source, got "
            f"ratios {ratios.shape} and weights {weights.shape}"
        )
    total = np.zeros((ratios.shape[0], ratios.shape[2]))
    for source, weight in enumerate(weights):
        total = total + weight * ratios[:, source, :]
    return total


def fuse(
    ratios: np.ndarray, weights: np.ndarray, log_prior: np.ndarray | None = None
) -> np.ndarray:
    """The fused distribution of every row (rows x labels, each row sums to 1).

    ``log_prior`` (one value per label) is added to every row's pooled logits before the
    softmax; the graph's policy passes its flat prior.
    """
    logits = pooled_logits(ratios, weights)
    if log_prior is not None:
        logits = log_prior + logits
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def fused_log_probabilities(ratios: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log of the fused distribution without a prior term (rows x labels), computed as a
    log-softmax: what the fitting's log-loss and its threshold search read."""
    return log_softmax(pooled_logits(ratios, weights))


@dataclass(frozen=True)
class CascadeDecisions:
    """What the two-stage cascade decides per row."""

    probabilities: np.ndarray
    """rows x labels: the distribution the decision is read from (first or second stage)."""
    labels: np.ndarray
    """Index of the decided label, -1 for an abstention."""
    reevaluated: np.ndarray
    """Whether the row went on to the second stage (first-stage confidence below threshold)."""


def cascade(
    first: np.ndarray,
    second: np.ndarray,
    *,
    threshold: float,
    reeval_threshold: float | None,
    abstain_below: float,
) -> CascadeDecisions:
    """Trust ``first`` where its confidence reaches ``threshold``; elsewhere decide on
    ``second``, abstaining where it is neither trusted (``reeval_threshold``) nor above
    ``abstain_below``."""
    again = first.max(axis=1) < threshold
    final = np.where(again[:, None], second, first)
    confidence = final.max(axis=1)
    trusted = (
        confidence >= reeval_threshold
        if reeval_threshold is not None
        else np.zeros(len(final), dtype=bool)
    )
    abstain = again & ~trusted & (confidence < abstain_below)
    return CascadeDecisions(
        probabilities=final,
        labels=np.where(abstain, -1, final.argmax(axis=1)),
        reevaluated=again,
    )
