"""The array fusion core: properties of ``fuse`` and ``cascade``, and agreement with the graph's
single-row trust policy."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.types import Prediction
from core.errors import InputError, NotFittedError
from core.task import Task
from eval.profile import fit_trust_profile
from eval.recorded.records import Record
from orchestrator.policies.fusion import (
    cascade,
    fuse,
    fused_log_probabilities,
    pooled_logits,
)
from orchestrator.policies.trust import TrustPolicy
from orchestrator.policies.trust_sources import log_ratio

LABELS = ("black-rot", "healthy", "rust", "scab")


def random_ratios(seed: int, rows: int, sources: int, labels: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(scale=3.0, size=(rows, sources, labels)), rng.uniform(0, 5, sources)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 20),
    sources=st.integers(1, 5),
    labels=st.integers(2, 6),
)
def test_rows_sum_to_one_and_match_the_log_probabilities(seed, rows, sources, labels):
    ratios, weights = random_ratios(seed, rows, sources, labels)
    p = fuse(ratios, weights)
    assert p.shape == (rows, labels)
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(fused_log_probabilities(ratios, weights)), p, rtol=1e-12)
    flat = np.full(labels, math.log(1.0 / labels))
    np.testing.assert_allclose(fuse(ratios, weights, log_prior=flat), p, rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), order=st.permutations(range(5)))
def test_renaming_labels_permutes_the_result(seed, order):
    ratios, weights = random_ratios(seed, 8, 3, 5)
    permuted = fuse(ratios[:, :, order], weights)
    np.testing.assert_allclose(permuted, fuse(ratios, weights)[:, order], rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(2, 40))
def test_fusing_many_rows_gives_each_row_alone_to_the_bit(seed, rows):
    ratios, weights = random_ratios(seed, rows, 4, 4)
    together = fuse(ratios, weights)
    for n in range(rows):
        np.testing.assert_array_equal(fuse(ratios[n : n + 1], weights), together[n : n + 1])


def test_a_source_without_answer_is_left_out():
    ratios, weights = random_ratios(0, 6, 3, 4)
    missing = ratios.copy()
    missing[:, 2] = 0.0
    np.testing.assert_allclose(fuse(missing, weights), fuse(ratios[:, :2], weights[:2]))
    np.testing.assert_array_equal(pooled_logits(ratios, np.zeros(3)), np.zeros((6, 4)))
    with pytest.raises(InputError, match="one weight per source"):
        fuse(ratios, weights[:2])


def test_cascade_trusts_reevaluates_and_abstains():
    first = np.array([[0.95, 0.05], [0.6, 0.4], [0.55, 0.45]])
    second = np.array([[0.5, 0.5], [0.1, 0.9], [0.52, 0.48]])
    out = cascade(first, second, threshold=0.9, reeval_threshold=0.9, abstain_below=0.53)
    assert out.reevaluated.tolist() == [False, True, True]
    assert out.labels.tolist() == [0, 1, -1]
    np.testing.assert_array_equal(out.probabilities, [first[0], second[1], second[2]])


def test_the_graph_policy_agrees_with_the_array_core():
    records = [
        Record(id=f"{agent}-{i}", agent=agent, truth=t, pred=p, confidence=0.8)
        for agent in ("a", "b")
        for i, (t, p) in enumerate(
            [(y, y) for y in LABELS] * 4 + [("rust", "scab"), ("scab", "rust")]
        )
    ]
    profiles = {
        agent: fit_trust_profile(
            agent, [r for r in records if r.agent == agent], LABELS, bootstrap=0, cv_folds=0
        )
        for agent in ("a", "b")
    }
    weights = {"a": 0.7, "b": 1.9}
    policy = TrustPolicy.from_profiles(profiles, weights={"first": weights})
    task = Task(name="t", labels=LABELS, descriptions={y: y for y in LABELS})
    answers = [
        Prediction(agent="a", label="scab", confidence=0.8),
        Prediction(agent="b", label="rust", confidence=0.8),
    ]
    assessed = asyncio.run(
        policy.assess(task=task, predictions=answers, evidence=None, round=0, max_rounds=2)
    )
    ratios = np.array(
        [
            [
                [log_ratio(profiles[p.agent], p, agent_model="confusion")[y] for y in LABELS]
                for p in answers
            ]
        ]
    )
    row = fuse(ratios, np.array(list(weights.values())), np.full(4, math.log(1 / 4)))[0]
    assert [assessed.scores[y] for y in LABELS] == row.tolist()


def test_an_unfitted_policy_says_so():
    with pytest.raises(NotFittedError, match="not fitted"):
        TrustPolicy().to_dict()
    with pytest.raises(NotFittedError):
        TrustPolicy.from_profiles({}).decide_records(None, [])  # type: ignore[arg-type]


def test_unfitted_source_profiles_say_so():
    from orchestrator.policies.trust_sources import SourceColumns, SourceProfiles

    with pytest.raises(NotFittedError, match="not fitted"):
        SourceProfiles(columns=[SourceColumns(agent="a", first="a")]).transform(None, [])  # type: ignore[arg-type]


@pytest.mark.parametrize("agent_model", ["confusion", "joint", "calibrated"])
def test_a_label_absent_from_the_training_truths_gains_no_evidence(agent_model: str):
    # no training row is black-rot: a smoothed posterior flat over labels would give it the
    # same share as any unseen pairing, far above its prior, and every answer would vote for it
    pairs = [("healthy", "healthy")] * 30 + [("rust", "rust")] * 30 + [("scab", "scab")] * 25
    pairs += [("scab", "rust")] * 5 + [("rust", "scab")] * 5
    records = [
        Record(id=str(i), agent="a", truth=t, pred=p, confidence=0.9)
        for i, (t, p) in enumerate(pairs)
    ]
    profile = fit_trust_profile("a", records, LABELS, bootstrap=0, cv_folds=0)
    for answer in ("scab", "rust", "healthy"):
        ratio = log_ratio(
            profile, Prediction(agent="a", label=answer, confidence=0.9), agent_model=agent_model
        )
        assert ratio["black-rot"] < 0.0
        assert ratio[answer] == max(ratio.values())
