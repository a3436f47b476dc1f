"""Recalibration maps: agreement with netcal, serialisation, and held-out improvement."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InputError, NotFittedError
from eval.folds import stratified_folds
from eval.metrics import expected_calibration_error
from eval.recalibration import (
    CalibrationData,
    ShrinkCalibrator,
    TemperatureScaler,
    TopLabelCalibrator,
    cross_validated_metrics,
    make_recalibrator,
    recalibrator_from_dict,
    softmax_with_temperature,
)


def overconfident_top_label(seed: int, n: int = 300) -> CalibrationData:
    """A model that says 0.85-1.0 but is right with probability 0.35-0.75."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.85, 1.0, n)
    p_right = 0.35 + (conf - 0.85) / 0.15 * 0.4
    truth = rng.integers(0, 4, n)
    right = rng.uniform(size=n) < p_right
    pred = np.where(right, truth, (truth + rng.integers(1, 4, n)) % 4)
    return CalibrationData(confidence=conf, pred=pred, truth=truth)


def overconfident_scores(seed: int, n: int = 300, k: int = 4, sharpen: float = 4.0):
    """Softmax of calibrated logits raised to a power: temperature 1/sharpen is the truth."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (n, k))
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(k, p=row) for row in calibrated])
    scores = calibrated**sharpen
    scores /= scores.sum(axis=1, keepdims=True)
    pred = scores.argmax(axis=1)
    return CalibrationData(
        confidence=scores.max(axis=1), pred=pred, truth=truth, scores=scores
    ), sharpen


@given(seed=st.integers(0, 2**31 - 1), method=st.sampled_from(["isotonic", "histogram"]))
@settings(max_examples=12, deadline=None)
def test_recalibration_lowers_held_out_ece_top_label(seed, method):
    data = overconfident_top_label(seed)
    before = expected_calibration_error(data.confidence, data.correct)
    assert before > 0.25
    cv = cross_validated_metrics(data, method=method, n_labels=4, folds=5, seed=seed)
    assert cv["ece_before"] == pytest.approx(before)
    assert cv["ece"] < before / 2
    assert cv["brier"] < cv["brier_before"]


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=8, deadline=None)
def test_recalibration_lowers_held_out_ece_temperature(seed):
    data, sharpen = overconfident_scores(seed)
    cv = cross_validated_metrics(data, method="auto", n_labels=4, folds=5, seed=seed)
    assert cv["ece"] < cv["ece_before"]
    assert cv["brier"] < cv["brier_before"]
    fitted = TemperatureScaler(n_labels=4).fit(data)
    assert fitted.temperature_ == pytest.approx(sharpen, rel=0.35)


def test_temperature_matches_netcal():
    from netcal.scaling import TemperatureScaling

    data, _ = overconfident_scores(7, n=400)
    ours = TemperatureScaler(n_labels=4).fit(data)
    theirs = TemperatureScaling().fit(data.scores, data.truth)
    netcal_temperature = 1.0 / float(np.asarray(theirs.weights).reshape(-1)[0])
    assert ours.temperature_ == pytest.approx(netcal_temperature, rel=0.02)
    # away from our 1e-6 floor on scores the two maps are the same function
    rows = data.scores.min(axis=1) > 1e-5
    assert rows.sum() > 200
    np.testing.assert_allclose(
        ours.transform(data.scores[rows]), theirs.transform(data.scores[rows]), atol=0.01
    )


@pytest.mark.parametrize("method", ["isotonic", "histogram"])
def test_top_label_map_matches_netcal_and_survives_json(method):
    from netcal.binning import HistogramBinning, IsotonicRegression

    data = overconfident_top_label(3, n=200)
    ours = TopLabelCalibrator(method=method).fit(data)
    netcal_map = (IsotonicRegression() if method == "isotonic" else HistogramBinning(bins=10)).fit(
        data.confidence + 1e-9, data.correct.astype(int)
    )
    probe = np.random.default_rng(0).uniform(0.8, 1.0, 100)
    lo = 1 / (data.n + 2)
    expected = np.clip(netcal_map.transform(probe + 1e-9), lo, 1 - lo)
    np.testing.assert_allclose(ours.transform(probe), expected, atol=1e-9)
    loaded = recalibrator_from_dict(json.loads(json.dumps(ours.to_dict())))
    np.testing.assert_array_equal(loaded.transform(probe), ours.transform(probe))
    assert loaded.to_dict() == ours.to_dict()


def test_temperature_survives_json_and_rows_sum_to_one():
    data, _ = overconfident_scores(1)
    fitted = TemperatureScaler(n_labels=4).fit(data)
    loaded = recalibrator_from_dict(json.loads(json.dumps(fitted.to_dict())))
    out = loaded.transform(data.scores)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_allclose(out, fitted.transform(data.scores))
    assert (softmax_with_temperature(np.array([[1.0, 0.0]]), 1.0)[0, 1]) == pytest.approx(1e-6)


def test_map_never_claims_certainty():
    conf = np.array([0.9, 0.95, 0.99, 0.97])
    data = CalibrationData(confidence=conf, pred=np.zeros(4, int), truth=np.zeros(4, int))
    fitted = TopLabelCalibrator().fit(data)
    assert fitted.transform(np.array([0.99]))[0] == pytest.approx(5 / 6)


def test_single_class_fit_keeps_stdout_clean(capsys):
    data = CalibrationData(
        confidence=np.array([0.9, 0.8]), pred=np.array([1, 1]), truth=np.array([1, 1])
    )
    TopLabelCalibrator(method="histogram").fit(data)
    TopLabelCalibrator(method="isotonic").fit(data)
    assert capsys.readouterr().out == ""


def test_unfitted_and_malformed():
    with pytest.raises(NotFittedError):
        TopLabelCalibrator().transform(np.array([0.5]))
    with pytest.raises(NotFittedError):
        TemperatureScaler(n_labels=3).to_dict()
    with pytest.raises(ValueError, match="unknown recalibration method"):
        recalibrator_from_dict({"method": "magic"})
    with pytest.raises(ValueError, match="malformed"):
        recalibrator_from_dict({"method": "isotonic", "values": [0.5]})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        recalibrator_from_dict(
            {"method": "temperature", "temperature": 0, "n_labels": 2, "n_fit": 1}
        )


def test_method_resolution():
    top = overconfident_top_label(0, n=10)
    scored, _ = overconfident_scores(0, n=10)
    assert isinstance(make_recalibrator("auto", top, n_labels=4), TopLabelCalibrator)
    assert isinstance(make_recalibrator("auto", scored, n_labels=4), TemperatureScaler)
    assert make_recalibrator("histogram", scored, n_labels=4).method == "histogram"
    with pytest.raises(InputError, match="needs full score distributions"):
        make_recalibrator("temperature", top, n_labels=4)
    with pytest.raises(InputError, match="unknown recalibration method"):
        make_recalibrator("platt", top, n_labels=4)


def test_shrink_toward_chance():
    m = ShrinkCalibrator(prior=0.25, weight=0.2)
    np.testing.assert_allclose(m.transform(np.array([1.0, 0.25, 0.0])), [0.4, 0.25, 0.2])
    assert recalibrator_from_dict(m.to_dict()).to_dict() == m.to_dict()


def test_folds_are_stratified_and_seeded():
    correct = np.array([1.0] * 10 + [0.0] * 5)
    a = stratified_folds(correct, 5, seed=1)
    assert (a == stratified_folds(correct, 5, seed=1)).all()
    for fold in range(5):
        assert (correct[a == fold] == 1).sum() == 2 and (correct[a == fold] == 0).sum() == 1
    tiny = CalibrationData(
        confidence=np.array([0.9] * 3), pred=np.zeros(3, int), truth=np.zeros(3, int)
    )
    assert cross_validated_metrics(tiny, method="auto", n_labels=2) == {}
