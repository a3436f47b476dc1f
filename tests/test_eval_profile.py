"""TrustProfile: fitting on real records, calibrated scores, JSON save/load, invariances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.types import Prediction
from core.errors import InputError
from eval.metrics import expected_calibration_error
from eval.profile import (
    TrustProfile,
    default_trust_profile,
    fit_trust_profile,
    fit_trust_profiles,
    load_trust_profiles,
    save_trust_profiles,
)
from eval.recorded.records import Record, read_records

LABELS = ("black-rot", "healthy", "rust", "scab")


@pytest.fixture(scope="module")
def case1(paper_dir: Path):
    return read_records(paper_dir / "case1_zero_shot.csv")


@pytest.fixture(scope="module")
def case3(paper_dir: Path):
    return read_records(paper_dir / "case3_trust_rag.csv")


@pytest.fixture(scope="module")
def case1_profiles(case1):
    return fit_trust_profiles(case1, bootstrap=200)


def synthetic_records(seed: int, n: int = 80, labels=LABELS, scores: bool = False) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        truth = int(rng.integers(len(labels)))
        right = rng.uniform() < 0.6
        pred = truth if right else int((truth + rng.integers(1, len(labels))) % len(labels))
        conf = float(rng.uniform(0.8, 1.0))
        dist = None
        if scores:
            rest = rng.dirichlet(np.ones(len(labels) - 1)) * (1 - conf)
            others = [j for j in range(len(labels)) if j != pred]
            dist = {
                labels[pred]: conf,
                **{labels[j]: float(v) for j, v in zip(others, rest, strict=True)},
            }
        out.append(Record(str(i), "a", labels[truth], labels[pred], conf, dist))
    return out


def test_case1_profile_numbers(case1, case1_profiles):
    assert list(case1_profiles) == ["qwen", "gpt", "orchestrator"]
    qwen = case1_profiles["qwen"]
    assert qwen.n == 160 and qwen.accuracy == 72 / 160 and qwen.labels == LABELS
    rows = case1.for_agent("qwen")
    conf = [r.confidence for r in rows]
    correct = [int(r.pred == r.truth) for r in rows]
    assert qwen.ece == pytest.approx(expected_calibration_error(conf, correct))
    assert qwen.ece_bins == 10 and qwen.ocr_threshold == 0.5
    assert qwen.data_sha256 == case1.sha256
    assert qwen.confusion[2] == [0, 0, 5, 35]  # rust leaves called scab 35 times of 40
    assert set(qwen.intervals) == {"accuracy", "ece", "ccc"}
    assert qwen.recalibration["method"] == "isotonic"
    assert qwen.recalibrated["ece"] < qwen.recalibrated["ece_before"] == pytest.approx(qwen.ece)
    assert not qwen.default
    rel = qwen.reliability
    assert sum(rel.counts) == 160 and rel.counts[9] == 146  # 16 x 0.9, 105 x 0.95, 25 x 1.0
    assert rel.accuracy[9] == pytest.approx(
        sum(correct[i] for i in range(160) if conf[i] >= 0.9) / 146
    )


def test_case3_rag_gets_temperature_scaling(case3):
    rag = fit_trust_profile("rag", case3.for_agent("rag"), case3.labels, bootstrap=0)
    assert rag.recalibration["method"] == "temperature"
    assert rag.accuracy == pytest.approx(154 / 160)
    assert rag.intervals == {}
    assert rag.recalibrated["ece"] < rag.recalibrated["ece_before"]
    pred = Prediction(agent="rag", label="rust", confidence=0.6, scores={"rust": 0.6, "scab": 0.4})
    scores = rag.calibrated_scores(pred)
    assert sum(scores.values()) == pytest.approx(1.0)
    assert scores["rust"] == pytest.approx(rag.calibrated_confidence(pred))
    assert scores["rust"] > scores["scab"] > scores["healthy"]


def test_top_label_scores_follow_measured_confusion(case1_profiles):
    qwen = case1_profiles["qwen"]
    pred = Prediction(agent="qwen", label="scab", confidence=0.95)
    scores = qwen.calibrated_scores(pred)
    top = qwen.calibrated_confidence(pred)
    assert scores["scab"] == pytest.approx(top)
    assert top < 0.5  # qwen's "scab" is right 28 times of 95
    # the rest follows the scab column of the confusion (truth black-rot 30, healthy 2, rust 35)
    rest = 1 - top
    assert scores["rust"] == pytest.approx(rest * 36 / 70)
    assert scores["black-rot"] == pytest.approx(rest * 31 / 70)
    assert scores["healthy"] == pytest.approx(rest * 3 / 70)
    failed = qwen.calibrated_scores(Prediction.failure("qwen", "timeout"))
    assert failed == pytest.approx({lb: 0.25 for lb in LABELS})  # 40 true images per class
    assert qwen.calibrated_confidence(Prediction.failure("qwen", "timeout")) == 0.0
    with pytest.raises(InputError, match="not one of the profile's labels"):
        qwen.calibrated_confidence(Prediction(agent="qwen", label="mildew", confidence=0.5))


@given(
    seed=st.integers(0, 10_000),
    label=st.sampled_from([*LABELS, None]),
    conf=st.floats(0.0, 1.0),
    with_scores=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_calibrated_scores_rows_sum_to_one(seed, label, conf, with_scores):
    records = synthetic_records(seed % 7, n=40, scores=with_scores)
    profile = fit_trust_profile("a", records, LABELS, bootstrap=0, cv_folds=0)
    dist = None
    if with_scores and label is not None:
        dist = {label: conf, LABELS[(LABELS.index(label) + 1) % 4]: 1 - conf}
    prediction = Prediction(agent="a", label=label, confidence=conf, scores=dist)
    for p in (profile, default_trust_profile("a", LABELS)):
        scores = p.calibrated_scores(prediction)
        assert list(scores) == list(LABELS)
        assert all(type(v) is float and 0.0 <= v <= 1.0 for v in scores.values())
        assert sum(scores.values()) == pytest.approx(1.0)
        assert 0.0 <= p.calibrated_confidence(prediction) <= 1.0


@given(seed=st.integers(0, 10_000), names=st.permutations(["w", "x", "y", "z"]))
@settings(max_examples=15, deadline=None)
def test_results_invariant_to_renaming_labels(seed, names):
    records = synthetic_records(seed, n=60)
    rename = dict(zip(LABELS, names, strict=True))
    renamed = [
        Record(r.id, r.agent, rename[r.truth], rename[r.pred], r.confidence) for r in records
    ]
    a = fit_trust_profile("a", records, LABELS, bootstrap=100, seed=seed)
    b = fit_trust_profile("a", renamed, [rename[lb] for lb in LABELS], bootstrap=100, seed=seed)
    for key in ("accuracy", "macro_f1", "ece", "mce", "ocr", "ccc", "brier", "confusion"):
        assert getattr(a, key) == getattr(b, key)
    assert a.intervals == b.intervals and a.recalibrated == b.recalibrated
    assert a.per_class_recall == {lb: b.per_class_recall[rename[lb]] for lb in LABELS}
    pa = a.calibrated_scores(Prediction(agent="a", label="rust", confidence=0.9))
    pb = b.calibrated_scores(Prediction(agent="a", label=rename["rust"], confidence=0.9))
    assert pa == pytest.approx({lb: pb[rename[lb]] for lb in LABELS})


def test_invalid_predictions_are_wrong_but_not_calibrated():
    records = [
        Record("1", "a", "rust", "rust", 0.9),
        Record("2", "a", "scab", None, 0.0),
        Record("3", "a", "scab", "scab", 0.8),
        Record("4", "a", "rust", "scab", 0.7),
    ]
    p = fit_trust_profile("a", records, ["rust", "scab"], bootstrap=0)
    assert p.n == 4 and p.n_invalid == 1 and p.confusion_has_invalid
    assert p.confusion == [[1, 1, 0], [0, 1, 1]]
    assert p.accuracy == 0.5
    assert p.mean_confidence == pytest.approx(0.8)  # the failed row states no confidence
    assert (
        p.data_sha256
        and p.data_sha256
        == fit_trust_profile("a", records[::-1], ["rust", "scab"], bootstrap=0).data_sha256
    )


def test_default_profile_is_conservative():
    d = default_trust_profile("new", LABELS)
    assert d.default and d.n == 0 and d.recalibration["method"] == "shrink"
    sure = Prediction(agent="new", label="rust", confidence=1.0)
    assert d.calibrated_confidence(sure) == pytest.approx(0.25 + 0.2 * 0.75)
    assert d.calibrated_scores(Prediction.failure("new", "x")) == pytest.approx(
        {lb: 0.25 for lb in LABELS}
    )


def test_save_load_roundtrip_is_atomic(tmp_path, case1_profiles):
    target = tmp_path / "sub" / "profiles.json"
    save_trust_profiles(target, case1_profiles)
    assert [p.name for p in target.parent.iterdir()] == ["profiles.json"]
    loaded = load_trust_profiles(target)
    assert loaded == case1_profiles
    pred = Prediction(agent="gpt", label="scab", confidence=0.85)
    assert loaded["gpt"].calibrated_scores(pred) == case1_profiles["gpt"].calibrated_scores(pred)
    data = json.loads(target.read_text())
    assert data["format"] == "trustorch-trust-profiles"
    assert data["profiles"]["qwen"]["intervals"]["accuracy"] == list(
        case1_profiles["qwen"].intervals["accuracy"]
    )


def test_load_errors_name_the_file(tmp_path, case1_profiles):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json:1: invalid JSON"):
        load_trust_profiles(bad)
    with pytest.raises(InputError, match="no such trust profile file"):
        load_trust_profiles(tmp_path / "missing.json")
    good = tmp_path / "p.json"
    save_trust_profiles(good, case1_profiles)
    data = json.loads(good.read_text())
    del data["profiles"]["gpt"]["ece"]
    good.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"p\.json: profile 'gpt', field 'ece': is missing$"):
        load_trust_profiles(good)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="not a trust profile file"):
        load_trust_profiles(bad)


def test_profile_is_frozen_and_fit_rejects_bad_input(case1_profiles):
    with pytest.raises(ValueError):
        case1_profiles["qwen"].accuracy = 1.0  # type: ignore[misc]
    with pytest.raises(InputError, match="no records"):
        fit_trust_profile("a", [], LABELS)
    with pytest.raises(InputError, match="true label 'mildew'"):
        fit_trust_profile("a", [Record("1", "a", "mildew", "rust", 0.5)], LABELS)
    assert isinstance(case1_profiles["gpt"], TrustProfile)


def test_agent_without_valid_predictions_has_no_confidence_numbers(tmp_path):
    records = [Record(str(i), "a", LABELS[i % 4], None, 0.0) for i in range(20)]
    p = fit_trust_profile("a", records, LABELS, bootstrap=50)
    assert (p.n, p.n_invalid, p.accuracy, p.default) == (20, 20, 0.0, False)
    assert p.confusion == [[0, 0, 0, 0, 5]] * 4 and p.confusion_has_invalid
    for key in ("ece", "mce", "ocr", "ccc", "brier", "mean_confidence", "reliability"):
        assert getattr(p, key) is None, key
    assert p.recalibrated == {} and set(p.intervals) == {"accuracy"}
    assert p.recalibration["method"] == "shrink"
    sure = Prediction(agent="a", label="rust", confidence=1.0)
    assert p.calibrated_confidence(sure) == pytest.approx(0.25 + 0.2 * 0.75)
    scores = p.calibrated_scores(sure)
    assert sum(scores.values()) == pytest.approx(1.0)
    assert scores["rust"] == pytest.approx(0.4)
    assert scores["healthy"] == pytest.approx(0.2)
    assert p.calibrated_scores(Prediction.failure("a", "x")) == pytest.approx(
        {lb: 0.25 for lb in LABELS}
    )
    target = tmp_path / "p.json"
    save_trust_profiles(target, {"a": p})
    assert json.loads(target.read_text())["profiles"]["a"]["ece"] is None
    loaded = load_trust_profiles(target)["a"]
    assert loaded == p and loaded.calibrated_scores(sure) == scores
