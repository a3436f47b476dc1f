"""Metric functions: real recorded data against an independent hand computation, and properties."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import t as student_t

from eval.bootstrap import bootstrap_intervals, ece_of_weights
from eval.metric_table import calibration_metrics
from eval.metrics import (
    brier_top_label,
    classification_metrics,
    confidence_correctness_correlation,
    expected_calibration_error,
    maximum_calibration_error,
    overconfidence_rate,
    reliability_bins,
)

LABELS = ["black-rot", "healthy", "rust", "scab"]


def read_wide_by_hand(path: Path, agent: str) -> tuple[list[str], list[str], list[float]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return (
        [r["category"] for r in rows],
        [r[f"{agent}_pred"] for r in rows],
        [float(r[f"{agent}_conf"]) for r in rows],
    )


def hand_bins(conf: list[float], bins: int) -> list[int]:
    """Bin k = [k/B, (k+1)/B), last closed, in exact integer arithmetic (confidences with at
    most 6 decimals are exact after rounding to millionths)."""
    return [min(round(c * 1_000_000) * bins // 1_000_000, bins - 1) for c in conf]


def hand_ece_mce(conf: list[float], correct: list[int], bins: int) -> tuple[float, float]:
    groups: dict[int, list[int]] = {}
    for i, b in enumerate(hand_bins(conf, bins)):
        groups.setdefault(b, []).append(i)
    ece, mce = 0.0, 0.0
    for rows in groups.values():
        acc = sum(correct[i] for i in rows) / len(rows)
        mean_conf = sum(conf[i] for i in rows) / len(rows)
        ece += len(rows) / len(conf) * abs(acc - mean_conf)
        mce = max(mce, abs(acc - mean_conf))
    return ece, mce


def hand_pearson(x: list[float], y: list[int]) -> tuple[float, float]:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    r = sxy / math.sqrt(sxx * syy)
    t_stat = r * math.sqrt((n - 2) / (1 - r * r))
    return r, float(2 * student_t.sf(abs(t_stat), n - 2))


CASES = [
    ("case1_zero_shot.csv", "qwen"),
    ("case1_zero_shot.csv", "gpt"),
    ("case1_zero_shot.csv", "orchestrator"),
    ("case3_trust_rag.csv", "qwen_initial"),
    ("case3_trust_rag.csv", "gpt_initial"),
    ("case3_trust_rag.csv", "qwen"),
    ("case3_trust_rag.csv", "gpt"),
    ("case3_trust_rag.csv", "orchestrator"),
    ("case3_trust_rag.csv", "rag"),
]


@pytest.mark.parametrize(("file", "agent"), CASES)
@pytest.mark.parametrize("bins", [10, 15])
def test_real_files_match_hand_computation(paper_dir: Path, file: str, agent: str, bins: int):
    truth, pred, conf = read_wide_by_hand(paper_dir / file, agent)
    correct = [int(p == t) for p, t in zip(pred, truth, strict=True)]
    n = len(truth)
    ece, mce = hand_ece_mce(conf, correct, bins)
    r, p = hand_pearson(conf, correct)
    above = [c for c, k in zip(conf, correct, strict=True) if c > 0.5]
    wrong_above = sum(1 for c, k in zip(conf, correct, strict=True) if c > 0.5 and not k)

    got = calibration_metrics(conf, correct, bins=bins, ocr_threshold=0.5)
    assert got.n == n == 160
    assert got["ece"] == pytest.approx(ece, abs=1e-8)
    assert got["mce"] == pytest.approx(mce, abs=1e-8)
    assert got["ocr"] == pytest.approx(wrong_above / len(above))
    assert got["ccc"] == pytest.approx(r, rel=1e-9)
    assert got["ccc_pvalue"] == pytest.approx(p, rel=1e-6)
    assert got["brier"] == pytest.approx(
        sum((c - k) ** 2 for c, k in zip(conf, correct, strict=True)) / n
    )
    assert got["mean_confidence"] == pytest.approx(sum(conf) / n)
    right = [c for c, k in zip(conf, correct, strict=True) if k]
    assert got["mean_confidence_correct"] == pytest.approx(sum(right) / len(right))

    cls = classification_metrics(
        [LABELS.index(t) for t in truth], [LABELS.index(p) for p in pred], len(LABELS)
    )
    assert cls.accuracy == pytest.approx(sum(correct) / n)
    f1s = []
    for lab in LABELS:
        tp = sum(1 for a, b in zip(truth, pred, strict=True) if a == b == lab)
        npred = sum(1 for b in pred if b == lab)
        ntrue = sum(1 for a in truth if a == lab)
        prec = tp / npred if npred else 0.0
        rec = tp / ntrue
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
        assert cls.per_class_recall[LABELS.index(lab)] == pytest.approx(rec)
        assert cls.confusion[LABELS.index(lab)][LABELS.index(lab)] == tp
    assert cls.macro_f1 == pytest.approx(sum(f1s) / len(f1s))
    assert sum(map(sum, cls.confusion)) == n


def test_known_case1_figures(paper_dir: Path):
    """Accuracies of the study's zero-shot agents, counted from the file."""
    expected = {"qwen": 72, "gpt": 91, "orchestrator": 77}
    for agent, hits in expected.items():
        truth, pred, _ = read_wide_by_hand(paper_dir / "case1_zero_shot.csv", agent)
        cls = classification_metrics(
            [LABELS.index(t) for t in truth], [LABELS.index(p) for p in pred], 4
        )
        assert cls.accuracy == hits / 160


def test_edge_value_goes_to_upper_bin():
    # 0.7 belongs to [0.7, 0.8); np.linspace puts an edge one ulp above 0.7.
    conf = [0.7, 0.75, 0.75]
    correct = [1, 0, 0]
    rel = reliability_bins(conf, correct, bins=10)
    assert rel.counts[7] == 3 and rel.counts[6] == 0
    assert expected_calibration_error(conf, correct) == pytest.approx(abs(1 / 3 - 2.2 / 3))


def test_undefined_values_are_none_not_warnings(recwarn):
    assert overconfidence_rate([0.2, 0.4], [1, 0], threshold=0.5) is None
    assert overconfidence_rate([0.2, 0.9], [1, 0], threshold=0.5) == 1.0
    const = confidence_correctness_correlation([0.9, 0.9, 0.9], [1, 0, 1])
    assert (const.r, const.pvalue) == (None, None)
    all_right = confidence_correctness_correlation([0.9, 0.8, 0.7], [1, 1, 1])
    assert all_right.r is None
    m = calibration_metrics([0.9, 0.9], [1, 1])
    assert m["mean_confidence_wrong"] is None and m["ccc"] is None
    assert len(recwarn) == 0


@pytest.mark.parametrize(
    ("conf", "correct", "message"),
    [
        ([0.5, 1.2], [1, 0], r"outside \[0, 1\]: \[1.2\]"),
        ([0.5, float("nan")], [1, 0], "outside"),
        ([0.5], [2], "must be 0/1"),
        ([0.5, 0.4], [1], "2 values but correct has 1"),
        ([], [], "no predictions"),
    ],
)
def test_validation_shows_bad_value(conf, correct, message):
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(conf, correct)


def test_classification_metrics_invalid_column():
    cls = classification_metrics([0, 1, 1, 0], [0, -1, 1, 1], 2)
    assert cls.has_invalid_column and cls.n_invalid == 1
    assert cls.confusion == ((1, 1, 0), (0, 1, 1))
    assert cls.accuracy == 0.5
    assert cls.per_class_recall == (0.5, 0.5)


confidences = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=200)


@given(data=st.data(), bins=st.integers(1, 30))
@settings(max_examples=60, deadline=None)
def test_ece_in_unit_interval_and_below_mce(data, bins):
    conf = data.draw(confidences)
    correct = data.draw(st.lists(st.integers(0, 1), min_size=len(conf), max_size=len(conf)))
    ece = expected_calibration_error(conf, correct, bins=bins)
    mce = maximum_calibration_error(conf, correct, bins=bins)
    assert 0.0 <= ece <= 1.0
    assert ece <= mce + 1e-8
    # the vectorised bootstrap ECE uses the same bins as netcal
    weights = np.ones((1, len(conf)))
    mine = ece_of_weights(weights, np.array(conf), np.array(correct, dtype=float), bins)[0]
    assert mine == pytest.approx(ece, abs=2e-8)


@given(seed=st.integers(0, 2**32 - 1), bins=st.sampled_from([5, 10, 15]))
@settings(max_examples=15, deadline=None)
def test_perfectly_calibrated_data_has_small_ece(seed, bins):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.0, 1.0, 20_000)
    correct = (rng.uniform(size=conf.size) < conf).astype(int)
    assert expected_calibration_error(conf, correct, bins=bins) < 0.03
    overconfident = np.clip(conf + 0.3, 0, 1)
    assert expected_calibration_error(overconfident, correct, bins=bins) > 0.2


@given(seed=st.integers(0, 10_000))
@settings(max_examples=20, deadline=None)
def test_brier_and_ocr_bounds(seed):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(size=50)
    correct = rng.integers(0, 2, 50)
    assert 0.0 <= brier_top_label(conf, correct) <= 1.0
    ocr = overconfidence_rate(conf, correct, threshold=0.3)
    assert ocr is None or 0.0 <= ocr <= 1.0


def test_bootstrap_is_seeded_and_covers_the_estimate(paper_dir: Path):
    truth, pred, conf = read_wide_by_hand(paper_dir / "case1_zero_shot.csv", "gpt")
    correct = np.array([p == t for p, t in zip(pred, truth, strict=True)], dtype=float)
    a = bootstrap_intervals(correct, conf, correct, seed=3)
    b = bootstrap_intervals(correct, conf, correct, seed=3)
    c = bootstrap_intervals(correct, conf, correct, seed=4)
    assert a == b and a != c
    assert set(a) == {"accuracy", "ece", "ccc"}
    assert a["accuracy"][0] < correct.mean() < a["accuracy"][1]
    assert a["ece"][0] < expected_calibration_error(conf, correct) < a["ece"][1]
    width = a["accuracy"][1] - a["accuracy"][0]
    # normal-approximation width of a proportion: 2 * 1.96 * sqrt(p(1-p)/n)
    p = correct.mean()
    assert width == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / 160), rel=0.15)


def test_bootstrap_leaves_out_undefined_ccc():
    out = bootstrap_intervals([1.0, 1.0, 1.0], [0.9, 0.9, 0.9], [1, 1, 1], resamples=50)
    assert "ccc" not in out and out["accuracy"] == (1.0, 1.0)
