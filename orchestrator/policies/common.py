"""Small readings of the agents' answers that several policies share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from agents.types import Prediction
from eval.scores import peaked_label_scores


def latest_answers(predictions: Sequence[Prediction]) -> list[Prediction]:
    """The latest answer of every agent, in the order the agents first answered."""
    latest: dict[str, Prediction] = {}
    for p in predictions:
        if p.agent not in latest or p.round >= latest[p.agent].round:
            latest[p.agent] = p
    return list(latest.values())


def answer_distribution(prediction: Prediction, labels: Sequence[str]) -> dict[str, float]:
    """The answer's own scores, else its confidence on its label and the rest spread evenly."""
    if prediction.scores and sum(prediction.scores.values()) > 0:
        total = sum(prediction.scores.get(y, 0.0) for y in labels)
        return {y: prediction.scores.get(y, 0.0) / total for y in labels}
    return peaked_label_scores(labels, str(prediction.label), prediction.confidence)


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with BLAS on one thread. Fitting works on arrays of a few hundred rows,
    where BLAS threads only wait for each other (on a busy machine a logistic regression or a
    weight search takes ten times longer with them)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
