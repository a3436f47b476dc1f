"""Leave-one-out evaluation of the retrieval vote over an index.

Every indexed item is queried with its own stored vector; it is removed from its own neighbour
list (by id), leaving its k nearest other items. Each vote rule turns those lists into class
scores: accuracy, macro-F1, log loss and the calibration metrics of ``Report.RETRIEVAL`` (ECE,
CCC, Brier, mean confidence) per rule.

The fitted ``softmax`` rule is cross-fitted: the items are split into ``folds`` folds (seeded);
the scores of a fold come from a vote fitted on the leave-one-out neighbour lists of the other
folds only, so no item's own query enters its fit (an item may still appear as a neighbour in
other items' lists). The reported parameters are those of a fit on all items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.cli import progress_bar
from core.errors import InputError
from core.task import Task
from eval.metric_table import Report, calibration_metrics
from eval.metrics import classification_metrics
from rag.store import ImageIndex
from rag.vote import SimilarityShareVote, SoftmaxVote, neighbour_arrays, share_scores

# Query rows (queries x (k + 1)) per Chroma call: its SQLite allows 32,766 variables a statement.
MAX_RESULT_ROWS = 30_000


@dataclass(frozen=True)
class LooNeighbours:
    """Each item's k nearest other items: ``similarities`` / ``label_idx`` [n, k]."""

    ids: list[str]
    truth_idx: np.ndarray
    similarities: np.ndarray
    label_idx: np.ndarray
    labels: tuple[str, ...]


@dataclass(frozen=True)
class VoteMetrics:
    """One vote rule's scores; ``calibration``: the metrics of ``Report.RETRIEVAL`` by key."""

    rule: str
    accuracy: float
    macro_f1: float
    calibration: dict[str, float | None]
    log_loss: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrievalEvaluation:
    task: str
    model: str
    location: str
    n: int
    k: int
    bins: int
    folds: int
    variants: list[VoteMetrics]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": self.model,
            "location": self.location,
            "n": self.n,
            "k": self.k,
            "ece_bins": self.bins,
            "softmax_folds": self.folds,
            "variants": {
                v.rule: {
                    "accuracy": v.accuracy,
                    "macro_f1": v.macro_f1,
                    **v.calibration,
                    "log_loss": v.log_loss,
                    "params": v.params,
                }
                for v in self.variants
            },
        }


def loo_neighbours(
    index: ImageIndex,
    task: Task,
    k: int,
    *,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> LooNeighbours:
    """Query every stored item (in batches) and drop itself from its neighbour list.

    A batch holds at most ``MAX_RESULT_ROWS // (k + 1)`` queries (``batch_size`` lowers it):
    Chroma looks up every returned row in one SQL statement."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    stored = index.all_vectors()
    n = len(stored.ids)
    if n < 3:
        raise InputError(
            f"index '{index.name}' at {index.location} holds {n} item(s); leave-one-out needs "
            "at least 3 (add images with `trustorch index build`)"
        )
    if k >= n:
        raise InputError(
            f"k={k} is too large: index '{index.name}' holds {n} items, so each has at most "
            f"{n - 1} other neighbours; use -k {n - 1} or less"
        )
    position = {label: i for i, label in enumerate(task.labels)}
    truth = np.array([position.get(label, -1) for label in stored.labels], dtype=np.int64)
    if (truth < 0).any():
        bad = stored.labels[int(np.flatnonzero(truth < 0)[0])]
        raise InputError(f"index {index.name!r} holds label {bad!r} outside task {task.name}")
    batch_size = max(1, min(batch_size or n, MAX_RESULT_ROWS // (k + 1)))
    rows: list[list[Any]] = []
    with progress_bar(disable=not show_progress) as bar:
        job = bar.add_task("leave-one-out queries", total=len(stored.ids))
        for start in range(0, len(stored.ids), batch_size):
            found = index.query(
                stored.vectors[start : start + batch_size], k + 1, model=index.model
            )
            for offset, neighbours in enumerate(found):
                own = stored.ids[start + offset]
                others = [n for n in neighbours if n.id != own]
                rows.append(others[:k])
            bar.advance(job, len(found))
    sims, idx = neighbour_arrays(rows, task.labels, k)
    return LooNeighbours(stored.ids, truth, sims, idx, tuple(task.labels))


def vote_metrics(
    rule: str, scores: np.ndarray, truth: np.ndarray, *, bins: int = 10, params: dict | None = None
) -> VoteMetrics:
    """Metrics of class scores [n, C] against true class indices [n], the calibration metrics
    over the top label; ``log_loss`` the mean negative log score of the true class (floored at
    1e-12)."""
    pred = scores.argmax(axis=1)
    confidence = np.clip(scores[np.arange(len(pred)), pred], 0.0, 1.0)
    classes = classification_metrics(truth, pred, scores.shape[1])
    calibration = calibration_metrics(confidence, pred == truth, bins=bins, report=Report.RETRIEVAL)
    return VoteMetrics(
        rule=rule,
        accuracy=classes.accuracy,
        macro_f1=classes.macro_f1,
        calibration=dict(calibration.values),
        log_loss=float(-np.mean(np.log(np.maximum(scores[np.arange(len(truth)), truth], 1e-12)))),
        params=params or {},
    )


def cross_fitted_softmax(
    loo: LooNeighbours, *, folds: int = 10, seed: int = 0
) -> tuple[np.ndarray, SoftmaxVote]:
    """Softmax-vote scores of each fold from a vote fitted on the other folds; and a full fit."""
    n, n_classes = len(loo.truth_idx), len(loo.labels)
    folds = max(2, min(folds, n))
    assignment = np.random.default_rng(seed).permutation(n) % folds
    scores = np.zeros((n, n_classes))
    for f in range(folds):
        test, train = assignment == f, assignment != f
        vote = SoftmaxVote().fit(
            loo.similarities[train], loo.label_idx[train], loo.truth_idx[train], n_classes
        )
        scores[test] = vote.transform(loo.similarities[test], loo.label_idx[test], n_classes)
    full = SoftmaxVote().fit(loo.similarities, loo.label_idx, loo.truth_idx, n_classes)
    return scores, full


def fit_softmax_vote(index: ImageIndex, task: Task, *, k: int = 10) -> SoftmaxVote:
    """A softmax vote fitted on the leave-one-out neighbour lists of every indexed item."""
    loo = loo_neighbours(index, task, k)
    return SoftmaxVote().fit(loo.similarities, loo.label_idx, loo.truth_idx, len(task.labels))


def evaluate_loo(
    index: ImageIndex,
    task: Task,
    *,
    k: int = 10,
    folds: int = 10,
    bins: int = 10,
    seed: int = 0,
    show_progress: bool = False,
) -> RetrievalEvaluation:
    """Leave-one-out metrics of every vote rule over ``index``."""
    loo = loo_neighbours(index, task, k, show_progress=show_progress)
    n_classes = len(task.labels)
    share = share_scores(loo.similarities, loo.label_idx, n_classes)
    softmax, full = cross_fitted_softmax(loo, folds=folds, seed=seed)
    variants = [
        vote_metrics(
            SimilarityShareVote.name, share, loo.truth_idx, bins=bins, params={"rule": "study"}
        ),
        vote_metrics(SoftmaxVote.name, softmax, loo.truth_idx, bins=bins, params=full.to_dict()),
    ]
    return RetrievalEvaluation(
        task=task.name,
        model=index.model,
        location=index.location,
        n=len(loo.ids),
        k=k,
        bins=bins,
        folds=max(2, min(folds, len(loo.ids))),
        variants=variants,
    )
