"""Class votes of retrieved neighbours.

Neighbours arrive as arrays: ``similarities`` [n, k] (cosine) and ``label_idx`` [n, k] (index
into the task's labels, -1 where a row has fewer than k neighbours). A vote returns [n, C] rows
that sum to 1.

- ``SimilarityShareVote`` (``similarity-share``): the reference study's rule. Per class, the sum
  of the similarities of the neighbours with that label over the sum for all k neighbours.
  Negative similarities count as 0 (no evidence for a class); when all are <= 0 the plain share
  of neighbour labels is used; a row with no neighbour gets the uniform vote.
- ``SoftmaxVote`` (``softmax``): each neighbour weighs exp((s - s_max) / T) and every class gets
  a pseudo-count lambda: p_c = (W_c + lambda) / (W + C * lambda). T and lambda are fitted on
  labelled neighbour lists by minimising log-loss, so a unanimous vote is not certainty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from agents.types import Neighbour
from core.errors import InputError, NotFittedError

_EPS = 1e-12


class VoteRule(Protocol):
    name: str

    def transform(
        self, similarities: np.ndarray, label_idx: np.ndarray, n_classes: int
    ) -> np.ndarray: ...

    def to_dict(self) -> dict[str, Any]: ...


def _check(similarities: np.ndarray, label_idx: np.ndarray, n_classes: int) -> tuple:
    sims = np.asarray(similarities, dtype=np.float64)
    idx = np.asarray(label_idx, dtype=np.int64)
    if sims.ndim != 2 or sims.shape != idx.shape:
        raise ValueError(
            f"similarities {sims.shape} and label_idx {idx.shape} must be equal 2-d shapes"
        )
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if idx.size and (idx.max() >= n_classes or idx.min() < -1):
        raise ValueError(f"label_idx has values outside [-1, {n_classes - 1}]")
    return sims, idx


def _class_sums(weights: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
    onehot = (idx[:, :, None] == np.arange(n_classes)[None, None, :]).astype(np.float64)
    return np.einsum("nk,nkc->nc", weights, onehot)


def share_scores(similarities: np.ndarray, label_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """The reference study's similarity-share vote, [n, C]."""
    sims, idx = _check(similarities, label_idx, n_classes)
    valid = idx >= 0
    weights = np.where(valid, np.clip(sims, 0.0, None), 0.0)
    sums = _class_sums(weights, idx, n_classes)
    counts = _class_sums(valid.astype(np.float64), idx, n_classes)
    total = sums.sum(axis=1, keepdims=True)
    n_valid = counts.sum(axis=1, keepdims=True)
    out = np.full(sums.shape, 1.0 / n_classes)
    by_sim = total[:, 0] > _EPS
    by_count = ~by_sim & (n_valid[:, 0] > 0)
    out[by_sim] = sums[by_sim] / total[by_sim]
    out[by_count] = counts[by_count] / n_valid[by_count]
    return out


def softmax_scores(
    similarities: np.ndarray,
    label_idx: np.ndarray,
    n_classes: int,
    *,
    temperature: float,
    smoothing: float,
) -> np.ndarray:
    """Softmax-weighted vote with a per-class pseudo-count, [n, C]."""
    sims, idx = _check(similarities, label_idx, n_classes)
    return _Prepared(sims, idx, n_classes).scores(temperature, smoothing)


class _Prepared:
    """Neighbour arrays with the parts that do not depend on (T, lambda) computed once."""

    def __init__(self, sims: np.ndarray, idx: np.ndarray, n_classes: int) -> None:
        valid = idx >= 0
        top = np.where(valid, sims, -np.inf).max(axis=1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        self.gap = np.where(valid, np.minimum(sims - top, 0.0), -np.inf)
        self.onehot = (idx[:, :, None] == np.arange(n_classes)[None, None, :]).astype(np.float64)

    def scores(self, temperature: float, smoothing: float) -> np.ndarray:
        weights = np.exp(self.gap / temperature)
        sums = np.einsum("nk,nkc->nc", weights, self.onehot) + smoothing
        return sums / sums.sum(axis=1, keepdims=True)


class SimilarityShareVote:
    """The reference study's rule; nothing to fit."""

    name = "similarity-share"

    def fit(self, *args: Any, **kwargs: Any) -> SimilarityShareVote:
        return self

    def transform(
        self, similarities: np.ndarray, label_idx: np.ndarray, n_classes: int
    ) -> np.ndarray:
        return share_scores(similarities, label_idx, n_classes)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.name}


class SoftmaxVote:
    """Softmax over similarities with temperature ``T`` and pseudo-count ``lambda``, both
    fitted by log-loss minimisation (grid search, then L-BFGS-B in log space)."""

    name = "softmax"

    def __init__(
        self,
        *,
        temperature_bounds: tuple[float, float] = (1e-3, 1.0),
        smoothing_bounds: tuple[float, float] = (1e-6, 10.0),
    ) -> None:
        self.temperature_bounds = temperature_bounds
        self.smoothing_bounds = smoothing_bounds

    def fit(
        self,
        similarities: np.ndarray,
        label_idx: np.ndarray,
        truth_idx: np.ndarray,
        n_classes: int,
    ) -> SoftmaxVote:
        from scipy.optimize import minimize

        sims, idx = _check(similarities, label_idx, n_classes)
        truth = np.asarray(truth_idx, dtype=np.int64)
        if truth.shape != (len(sims),) or len(truth) == 0:
            raise ValueError(f"truth_idx must have shape ({len(sims)},) and not be empty")
        if truth.min() < 0 or truth.max() >= n_classes:
            raise ValueError(f"truth_idx has values outside [0, {n_classes - 1}]")
        prepared = _Prepared(sims, idx, n_classes)
        rows = np.arange(len(truth))

        def loss(theta: np.ndarray) -> float:
            p = prepared.scores(float(np.exp(theta[0])), float(np.exp(theta[1])))
            return float(-np.mean(np.log(np.maximum(p[rows, truth], _EPS))))

        t_lo, t_hi = np.log(self.temperature_bounds)
        s_lo, s_hi = np.log(self.smoothing_bounds)
        grid = [
            np.array([t, s])
            for t in np.linspace(t_lo, t_hi, 13)
            for s in np.linspace(s_lo, s_hi, 13)
        ]
        start = min(grid, key=loss)
        result = minimize(loss, start, method="L-BFGS-B", bounds=[(t_lo, t_hi), (s_lo, s_hi)])
        best = result.x if result.fun <= loss(start) else start
        self.temperature_ = float(np.exp(best[0]))
        self.smoothing_ = float(np.exp(best[1]))
        self.log_loss_ = float(min(result.fun, loss(start)))
        self.n_fit_ = len(truth)
        return self

    def _require_fitted(self) -> None:
        if not hasattr(self, "temperature_"):
            raise NotFittedError(
                "SoftmaxVote is not fitted: call fit() on labelled neighbours "
                "(or load fitted values with SoftmaxVote.from_dict)"
            )

    def transform(
        self, similarities: np.ndarray, label_idx: np.ndarray, n_classes: int
    ) -> np.ndarray:
        self._require_fitted()
        return softmax_scores(
            similarities,
            label_idx,
            n_classes,
            temperature=self.temperature_,
            smoothing=self.smoothing_,
        )

    def to_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {
            "rule": self.name,
            "temperature": self.temperature_,
            "smoothing": self.smoothing_,
            "log_loss": self.log_loss_,
            "n_fit": self.n_fit_,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SoftmaxVote:
        vote = cls()
        vote.temperature_ = float(data["temperature"])
        vote.smoothing_ = float(data["smoothing"])
        vote.log_loss_ = float(data.get("log_loss", float("nan")))
        vote.n_fit_ = int(data.get("n_fit", 0))
        return vote


VOTE_RULES = ("similarity-share", "softmax")


def vote_from_dict(data: Mapping[str, Any]) -> VoteRule:
    rule = data.get("rule")
    if rule == SimilarityShareVote.name:
        return SimilarityShareVote()
    if rule == SoftmaxVote.name:
        return SoftmaxVote.from_dict(data)
    raise InputError(f"unknown vote rule '{rule}' (known: {', '.join(VOTE_RULES)})")


def neighbour_arrays(
    neighbours: Sequence[Sequence[Neighbour]], labels: Sequence[str], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists as ``similarities`` and ``label_idx`` arrays [n, k] (padded with -1)."""
    position = {label: i for i, label in enumerate(labels)}
    sims = np.zeros((len(neighbours), k), dtype=np.float64)
    idx = np.full((len(neighbours), k), -1, dtype=np.int64)
    for row, found in enumerate(neighbours):
        for col, n in enumerate(found[:k]):
            sims[row, col] = n.similarity
            idx[row, col] = position.get(n.label, -1)
    return sims, idx


def vote_dict(rule: VoteRule, neighbours: Sequence[Neighbour], labels: Sequence[str]) -> dict:
    """One image's vote as ``{label: score}`` over all labels (plain floats)."""
    sims, idx = neighbour_arrays([neighbours], labels, max(len(neighbours), 1))
    scores = rule.transform(sims, idx, len(labels))[0]
    return {label: float(s) for label, s in zip(labels, scores, strict=True)}
