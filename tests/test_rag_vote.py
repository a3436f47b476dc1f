"""Class votes: the reference study's similarity share and the fitted softmax vote."""

from __future__ import annotations

import numpy as np
import pytest

from agents.types import Neighbour
from core.errors import InputError, NotFittedError
from rag.vote import (
    SimilarityShareVote,
    SoftmaxVote,
    neighbour_arrays,
    share_scores,
    softmax_scores,
    vote_dict,
    vote_from_dict,
)


def test_share_matches_the_study_formula() -> None:
    sims = np.array([[0.9, 0.8, 0.7, 0.6]])
    idx = np.array([[0, 1, 0, 2]])
    out = share_scores(sims, idx, 4)
    total = 0.9 + 0.8 + 0.7 + 0.6
    np.testing.assert_allclose(out[0], [(0.9 + 0.7) / total, 0.8 / total, 0.6 / total, 0.0])


def test_share_edge_cases_negative_zero_and_padding() -> None:
    sims = np.array(
        [
            [0.5, -0.5, 0.0],  # negative similarity is no evidence
            [-0.2, -0.3, 0.0],  # all <= 0: share of labels (padding ignored)
            [0.0, 0.0, 0.0],  # no neighbours at all: uniform
            [0.4, 0.4, 0.0],  # padded row
        ]
    )
    idx = np.array([[0, 1, 1], [0, 1, -1], [-1, -1, -1], [2, 2, -1]])
    out = share_scores(sims, idx, 3)
    np.testing.assert_allclose(out[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out[1], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(out[2], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(out[3], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_share_is_equivariant_to_renaming_labels() -> None:
    rng = np.random.default_rng(3)
    sims = rng.uniform(0.5, 1.0, size=(50, 10))
    idx = rng.integers(0, 4, size=(50, 10))
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(
        share_scores(sims, perm[idx], 4)[:, perm], share_scores(sims, idx, 4)
    )


def test_bad_shapes_and_indices_are_refused() -> None:
    with pytest.raises(ValueError, match="equal 2-d shapes"):
        share_scores(np.zeros((2, 3)), np.zeros((2, 2), dtype=int), 3)
    with pytest.raises(ValueError, match=r"outside \[-1, 2\]"):
        share_scores(np.zeros((1, 2)), np.array([[0, 3]]), 3)


def _noisy_neighbours(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour lists where the true class holds ~70% of the 10 neighbours on average."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, size=n)
    same = rng.uniform(size=(n, 10)) < rng.uniform(0.3, 1.0, size=(n, 1))
    other = (truth[:, None] + rng.integers(1, 4, size=(n, 10))) % 4
    idx = np.where(same, truth[:, None], other)
    sims = np.where(same, rng.normal(0.9, 0.03, (n, 10)), rng.normal(0.85, 0.03, (n, 10)))
    order = np.argsort(-sims, axis=1)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1), truth


def _log_loss(p: np.ndarray, truth: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(truth)), truth], 1e-12))))


def test_softmax_vote_fit_transform_contract() -> None:
    sims, idx, truth = _noisy_neighbours(400, seed=0)
    vote = SoftmaxVote()
    with pytest.raises(NotFittedError, match="not fitted"):
        vote.transform(sims, idx, 4)
    with pytest.raises(TypeError):
        SoftmaxVote((1e-3, 1.0))  # type: ignore[misc]
    assert vote.fit(sims, idx, truth, 4) is vote
    assert 1e-3 <= vote.temperature_ <= 1.0 and 1e-6 <= vote.smoothing_ <= 10.0
    p = vote.transform(sims, idx, 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p.min() > 0.0  # the pseudo-count keeps every class possible
    restored = vote_from_dict(vote.to_dict())
    np.testing.assert_allclose(restored.transform(sims, idx, 4), p)
    assert vote.to_dict()["rule"] == "softmax" and vote.to_dict()["n_fit"] == 400


def test_softmax_vote_is_better_calibrated_on_held_out_lists() -> None:
    sims, idx, truth = _noisy_neighbours(600, seed=1)
    test_sims, test_idx, test_truth = _noisy_neighbours(600, seed=2)
    vote = SoftmaxVote().fit(sims, idx, truth, 4)
    fitted = _log_loss(vote.transform(test_sims, test_idx, 4), test_truth)
    share = _log_loss(share_scores(test_sims, test_idx, 4), test_truth)
    assert fitted < share - 0.1
    # the fit is at a minimum: nearby parameters are not better on the fit data
    best = _log_loss(vote.transform(sims, idx, 4), truth)
    for t_factor, s_factor in [(1.3, 1.0), (0.7, 1.0), (1.0, 1.5), (1.0, 0.6)]:
        near = softmax_scores(
            sims,
            idx,
            4,
            temperature=vote.temperature_ * t_factor,
            smoothing=vote.smoothing_ * s_factor,
        )
        assert _log_loss(near, truth) >= best - 1e-6


def test_vote_dict_over_neighbours_covers_every_label() -> None:
    labels = ("black-rot", "healthy", "rust", "scab")
    neighbours = [
        Neighbour("a", "rust", 0.95),
        Neighbour("b", "rust", 0.90),
        Neighbour("c", "scab", 0.85),
        Neighbour("d", "unknown", 0.99),  # a label outside the task is ignored
    ]
    out = vote_dict(SimilarityShareVote(), neighbours, labels)
    assert list(out) == list(labels)
    assert out["rust"] == pytest.approx(1.85 / 2.7)
    assert out["scab"] == pytest.approx(0.85 / 2.7)
    assert out["healthy"] == 0.0 and isinstance(out["healthy"], float)
    _, idx = neighbour_arrays([neighbours[:2], []], labels, 3)
    np.testing.assert_array_equal(idx, [[2, 2, -1], [-1, -1, -1]])
    assert vote_dict(SimilarityShareVote(), [], labels) == {label: 0.25 for label in labels}


def test_unknown_rule_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown vote rule 'median'"):
        vote_from_dict({"rule": "median"})
    assert isinstance(vote_from_dict({"rule": "similarity-share"}), SimilarityShareVote)
