"""The metric table: every report lists what the table says, in its order, and the descriptors
agree with the functions they name."""

from __future__ import annotations

import numpy as np
import pytest

from core.task import Task
from eval.metric_table import (
    CALIBRATION_METRICS,
    SETTING_FIELDS,
    MetricSettings,
    Report,
    calibration_metrics,
    metric_groups,
    metrics_in,
    recorded_settings,
)
from eval.profile import TrustProfile, default_trust_profile
from eval.recalibration import CalibrationData, cross_validated_metrics
from orchestrator.runner import summarise

LABELS = ("black-rot", "healthy", "rust", "scab")


def overconfident(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Confidences near 0.9 on answers right 60% of the time."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.8, 1.0, n), (rng.uniform(size=n) < 0.6).astype(float)


def test_keys_are_unique_and_parts_follow_their_metric():
    keys = [m.key for m in CALIBRATION_METRICS]
    assert len(set(keys)) == len(keys)
    for group in metric_groups():
        assert group[0].part_of is None
        assert all(m.part_of == group[0].key for m in group[1:])
    assert [m for group in metric_groups() for m in group] == list(CALIBRATION_METRICS)


def test_profile_fields_follow_the_table_with_settings_after_their_metric():
    fields = list(TrustProfile.model_fields)
    expected = []
    for m in CALIBRATION_METRICS:
        expected += [m.key, *([m.setting[0]] if m.setting else [])]
    start = fields.index(expected[0])
    assert fields[start : start + len(expected)] == expected
    assert set(SETTING_FIELDS.values()) <= set(vars(MetricSettings()))


def test_required_metrics_fail_a_profile_without_them():
    body = default_trust_profile("a", LABELS).model_dump()
    for m in CALIBRATION_METRICS:
        trimmed = {k: v for k, v in body.items() if k != m.key}
        if m.required:
            with pytest.raises(ValueError, match="Field required"):
                TrustProfile.model_validate(trimmed)
        else:
            assert getattr(TrustProfile.model_validate(trimmed), m.key) is None


@pytest.mark.parametrize("report", [None, *Report])
def test_a_report_measures_exactly_its_metrics_in_table_order(report):
    conf, correct = overconfident(0)
    got = calibration_metrics(conf, correct, report=report)
    assert list(got.values) == [m.key for m in metrics_in(report)]
    every = calibration_metrics(conf, correct)
    assert all(got[k] == every[k] for k in got.values)


def test_values_with_settings_place_each_setting_after_its_metric():
    conf, correct = overconfident(1)
    got = calibration_metrics(conf, correct, bins=15, ocr_threshold=0.7)
    keys = list(got.values_with_settings())
    for m in CALIBRATION_METRICS:
        if m.setting:
            assert keys[keys.index(m.key) + 1] == m.setting[0]
    assert recorded_settings(got.settings) == {"ece_bins": 15, "ocr_threshold": 0.7}


def test_lower_is_better_metrics_do_not_worsen_when_confidence_matches_accuracy():
    conf, correct = overconfident(2)
    honest = np.full_like(conf, correct.mean())
    before = calibration_metrics(conf, correct)
    after = calibration_metrics(honest, correct)
    for m in CALIBRATION_METRICS:
        if m.higher_is_better is False and before[m.key] is not None:
            assert after[m.key] is not None and after[m.key] <= before[m.key], m.key
    assert after["ece"] < before["ece"] and after["brier"] < before["brier"]


def test_held_out_figures_list_the_held_out_and_compared_metrics():
    conf, correct = overconfident(3)
    pred = np.zeros(conf.size, dtype=np.int64)
    data = CalibrationData(
        confidence=conf, pred=pred, truth=np.where(correct == 1.0, 0, 1), scores=None
    )
    cv = cross_validated_metrics(data, method="isotonic", n_labels=4, folds=5)
    held_out = [m.key for m in metrics_in(Report.HELD_OUT) if m.key in cv]
    compared = [f"{m.key}_before" for m in metrics_in(Report.COMPARED)]
    assert list(cv) == [*held_out, *compared, "folds", "n"]


def test_run_summary_lists_its_metrics():
    task = Task(name="t", labels=LABELS, descriptions={y: y for y in LABELS})
    decisions = [
        {"truth": LABELS[i % 4], "label": LABELS[(i * 3) % 4], "confidence": 0.6 + 0.01 * i}
        for i in range(20)
    ]
    summary = summarise(decisions, task)
    for m in metrics_in(Report.RUN_SUMMARY):
        assert m.key in summary
        if m.setting:
            assert m.setting[0] in summary
    assert not {m.key for m in CALIBRATION_METRICS} - {
        m.key for m in metrics_in(Report.RUN_SUMMARY)
    } & set(summary)


def test_labels_take_the_settings():
    settings = MetricSettings(bins=15, ocr_threshold=0.9)
    labels = {m.key: m.display_label(settings) for m in CALIBRATION_METRICS}
    assert labels["ece"] == "ECE (15 bins)" and labels["ocr"] == "OCR (conf > 0.9)"
    pvalue = next(m for m in CALIBRATION_METRICS if m.key == "ccc_pvalue")
    assert (pvalue.display(0.01234), pvalue.display(1e-5), pvalue.display(None)) == (
        "0.0123",
        "1.0e-05",
        "-",
    )
