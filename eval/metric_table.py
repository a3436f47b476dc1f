"""The table of calibration metrics that every report iterates.

Each ``CalibrationMetric`` names one number measured over (confidence, correct) arrays: its key
(the field of ``TrustProfile``, the key in every JSON output), how it is displayed, the pure
function that measures it (``eval.metrics``) and the reports it appears in. Trust profiles, the
``eval`` tables and JSON, the held-out figures, the retrieval evaluation, the run summary, the
replay reports and the llm policy's prompt all read this table, so a new metric is its function
plus one entry in ``CALIBRATION_METRICS``.

Order matters: it is the order of the profile's fields and of the calibration table's rows. A
metric with ``part_of`` is a detail of the metric before it (CCC's p-value) and is displayed with
it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np

from eval.metrics import (
    DEFAULT_BINS,
    DEFAULT_OCR_THRESHOLD,
    brier_top_label,
    check_bins,
    check_confidence_correct,
    confidence_correctness_correlation,
    confidence_means,
    expected_calibration_error,
    maximum_calibration_error,
    overconfidence_rate,
)


class Report(Enum):
    """Where a metric appears besides the trust profile and the calibration table."""

    HELD_OUT = "held-out"
    """``cross_validated_metrics``: measured again after recalibration, on held-out folds."""
    COMPARED = "compared"
    """Held-out value beside the value before recalibration (``<key>_before``), shown as
    ``held-out <name>`` in the calibration table and ``CV <name>`` in the trust table."""
    BRIEF = "brief"
    """The one-line summaries: the trust table and JSON, the replay reports."""
    RUN_SUMMARY = "run summary"
    """``orchestrator.runner.summarise`` over the decisions of a labelled run."""
    RETRIEVAL = "retrieval"
    """Each vote rule's leave-one-out evaluation (``eval.retrieval``)."""
    PROMPT = "prompt"
    """The llm policy's description of each agent's calibration."""


ALL_REPORTS = frozenset(Report)


@dataclass(frozen=True)
class MetricSettings:
    """The settings a metric may depend on: equal-width ``bins`` and the OCR threshold."""

    bins: int = DEFAULT_BINS
    ocr_threshold: float = DEFAULT_OCR_THRESHOLD


Measure = Callable[[np.ndarray, np.ndarray, MetricSettings], float | None]


def three_decimals(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def pvalue_text(value: float | None) -> str:
    """Four decimals, scientific notation below 0.001."""
    if value is None:
        return "-"
    return f"{value:.4f}" if value >= 1e-3 else f"{value:.1e}"


@dataclass(frozen=True)
class CalibrationMetric:
    """One calibration metric (see the module docstring).

    ``label``: its row in the calibration table, formatted with the ``MetricSettings`` fields
    (``"ECE ({bins} bins)"``). ``name``: its short name in column headers and the llm prompt.
    ``higher_is_better``: None where neither is (mean confidence, a p-value).
    ``display``: the value as the tables show it.
    ``setting``: (key, ``MetricSettings`` field) of the setting recorded right after the metric.
    ``at_chance``: its value in the default profile of an agent without data, which is assumed
    right at chance (argument 1/k) while certain; None there when not given.
    ``required``: trust profile files must hold it (files from before a metric was added do not,
    so a new metric is optional and loads as None from them).
    """

    key: str
    name: str
    label: str
    measure: Measure
    higher_is_better: bool | None
    display: Callable[[float | None], str] = three_decimals
    part_of: str | None = None
    setting: tuple[str, str] | None = None
    at_chance: Callable[[float], float] | None = None
    reports: frozenset[Report] = ALL_REPORTS
    required: bool = False

    def display_label(self, settings: MetricSettings) -> str:
        return self.label.format(**asdict(settings))


def _chance_error(chance: float) -> float:
    return 1.0 - chance


def _certain(chance: float) -> float:
    return 1.0


_PROFILE_ONLY: frozenset[Report] = frozenset()
_SUMMARISED = frozenset({Report.HELD_OUT, Report.RUN_SUMMARY, Report.RETRIEVAL})

CALIBRATION_METRICS: tuple[CalibrationMetric, ...] = (
    CalibrationMetric(
        key="ece",
        name="ECE",
        label="ECE ({bins} bins)",
        measure=lambda c, k, s: expected_calibration_error(c, k, bins=s.bins),
        higher_is_better=False,
        setting=("ece_bins", "bins"),
        at_chance=_chance_error,
        required=True,
    ),
    CalibrationMetric(
        key="mce",
        name="MCE",
        label="MCE",
        measure=lambda c, k, s: maximum_calibration_error(c, k, bins=s.bins),
        higher_is_better=False,
        at_chance=_chance_error,
        reports=frozenset({Report.HELD_OUT}),
        required=True,
    ),
    CalibrationMetric(
        key="ocr",
        name="OCR",
        label="OCR (conf > {ocr_threshold:g})",
        measure=lambda c, k, s: overconfidence_rate(c, k, threshold=s.ocr_threshold),
        higher_is_better=False,
        setting=("ocr_threshold", "ocr_threshold"),
        reports=frozenset({Report.HELD_OUT, Report.RUN_SUMMARY, Report.PROMPT}),
        required=True,
    ),
    CalibrationMetric(
        key="ccc",
        name="CCC",
        label="CCC",
        measure=lambda c, k, s: confidence_correctness_correlation(c, k).r,
        higher_is_better=True,
        reports=_SUMMARISED | {Report.PROMPT},
        required=True,
    ),
    CalibrationMetric(
        key="ccc_pvalue",
        name="CCC p-value",
        label="  p-value",
        measure=lambda c, k, s: confidence_correctness_correlation(c, k).pvalue,
        higher_is_better=None,
        display=pvalue_text,
        part_of="ccc",
        reports=_PROFILE_ONLY,
        required=True,
    ),
    CalibrationMetric(
        key="brier",
        name="Brier",
        label="Brier (top label)",
        measure=lambda c, k, s: brier_top_label(c, k),
        higher_is_better=False,
        at_chance=_chance_error,
        reports=_SUMMARISED | {Report.COMPARED},
        required=True,
    ),
    CalibrationMetric(
        key="mean_confidence",
        name="mean conf",
        label="mean confidence",
        measure=lambda c, k, s: confidence_means(c, k).overall,
        higher_is_better=None,
        at_chance=_certain,
        reports=_SUMMARISED,
        required=True,
    ),
    CalibrationMetric(
        key="mean_confidence_correct",
        name="mean conf when correct",
        label="  when correct",
        measure=lambda c, k, s: confidence_means(c, k).correct,
        higher_is_better=None,
        part_of="mean_confidence",
        reports=_PROFILE_ONLY,
        required=True,
    ),
    CalibrationMetric(
        key="mean_confidence_wrong",
        name="mean conf when wrong",
        label="  when wrong",
        measure=lambda c, k, s: confidence_means(c, k).wrong,
        higher_is_better=None,
        part_of="mean_confidence",
        reports=_PROFILE_ONLY,
        required=True,
    ),
)


def metrics_in(report: Report | None = None) -> tuple[CalibrationMetric, ...]:
    """The metrics of one report, in table order (all of them for None)."""
    if report is None:
        return CALIBRATION_METRICS
    return tuple(m for m in CALIBRATION_METRICS if report in m.reports)


def metric_groups() -> Iterator[tuple[CalibrationMetric, ...]]:
    """Each headline metric followed by its parts (``part_of``), in table order."""
    group: list[CalibrationMetric] = []
    for metric in CALIBRATION_METRICS:
        if metric.part_of is None and group:
            yield tuple(group)
            group = []
        group.append(metric)
    if group:
        yield tuple(group)


@dataclass(frozen=True)
class CalibrationMetrics:
    """The metrics of one agent's confidences: ``values[key]`` in table order (None where
    undefined), with the count and the settings they were measured with."""

    n: int
    settings: MetricSettings
    values: Mapping[str, float | None]

    def __getitem__(self, key: str) -> float | None:
        return self.values[key]

    def values_with_settings(self) -> dict[str, float | int | None]:
        """The values with each metric's setting right after it (``ece``, ``ece_bins``, ...)."""
        out: dict[str, float | int | None] = {}
        for metric in CALIBRATION_METRICS:
            if metric.key in self.values:
                out[metric.key] = self.values[metric.key]
                if metric.setting is not None:
                    key, field = metric.setting
                    out[key] = getattr(self.settings, field)
        return out


SETTING_FIELDS: dict[str, str] = dict(m.setting for m in CALIBRATION_METRICS if m.setting)
"""Recorded setting key -> ``MetricSettings`` field (``ece_bins`` -> ``bins``)."""


def recorded_settings(settings: MetricSettings) -> dict[str, int | float]:
    """The settings under the keys that profiles and summaries record them with."""
    return {key: getattr(settings, field) for key, field in SETTING_FIELDS.items()}


def calibration_metrics(
    confidence: object,
    correct: object,
    *,
    bins: int = DEFAULT_BINS,
    ocr_threshold: float = DEFAULT_OCR_THRESHOLD,
    report: Report | None = None,
) -> CalibrationMetrics:
    """The metrics of ``report`` (every one for None) over one agent's confidences."""
    conf, corr = check_confidence_correct(confidence, correct)
    settings = MetricSettings(bins=check_bins(bins), ocr_threshold=float(ocr_threshold))
    values = {m.key: m.measure(conf, corr, settings) for m in metrics_in(report)}
    return CalibrationMetrics(n=int(conf.size), settings=settings, values=values)
