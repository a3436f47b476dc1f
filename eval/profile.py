"""TrustProfile: what labelled data says about one agent, and its fitted recalibration map.

Failed or out-of-label predictions (``Record.pred is None``) count as wrong in accuracy, the
macro scores and the confusion matrix (its extra last column), and are left out of the
confidence metrics (ECE, MCE, Brier, OCR, CCC, mean confidences, recalibration): a failed answer
states no confidence in any label. ``n`` counts every row, ``n_invalid`` the failed ones. An agent
without one valid prediction has no confidence metrics (None) and keeps the conservative default
map (``default_trust_profile``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr, StrictBool, create_model, model_validator

from agents.types import Prediction
from core.errors import InputError
from core.validation import (
    Count,
    FiniteFloat,
    Name,
    PositiveCount,
    Probability,
    check_strictly_increasing,
)
from eval.bootstrap import bootstrap_intervals
from eval.metric_table import (
    CALIBRATION_METRICS,
    SETTING_FIELDS,
    CalibrationMetrics,
    MetricSettings,
    calibration_metrics,
    recorded_settings,
)
from eval.metrics import (
    DEFAULT_BINS,
    DEFAULT_OCR_THRESHOLD,
    classification_metrics,
    reliability_bins,
)
from eval.profile_io import FILE_FORMAT, FILE_VERSION, load_trust_profiles, save_trust_profiles
from eval.recalibration import (
    CalibrationData,
    Recalibrator,
    ShrinkCalibrator,
    TemperatureScaler,
    cross_validated_metrics,
    make_recalibrator,
    recalibrator_from_dict,
)
from eval.recorded.records import Record, RecordSet
from eval.scores import peaked_scores

DEFAULT_SHRINK_WEIGHT = 0.2
DEFAULT_SETTINGS = MetricSettings()

__all__ = [
    "FILE_FORMAT",
    "FILE_VERSION",
    "ReliabilityTable",
    "TrustProfile",
    "agent_arrays",
    "default_trust_profile",
    "fit_trust_profile",
    "fit_trust_profiles",
    "load_trust_profiles",
    "records_sha256",
    "save_trust_profiles",
]


class ReliabilityTable(BaseModel):
    """Per equal-width bin: count, mean confidence and accuracy (0.0 where the count is 0)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    edges: list[FiniteFloat]
    counts: list[Count]
    mean_confidence: list[Probability]
    accuracy: list[Probability]

    @model_validator(mode="after")
    def _one_value_per_bin(self) -> ReliabilityTable:
        check_strictly_increasing(self.edges, "edges")
        bins = len(self.edges) - 1
        for key in ("counts", "mean_confidence", "accuracy"):
            if len(getattr(self, key)) != bins:
                raise ValueError(
                    f"{key} has {len(getattr(self, key))} values for {bins} bins "
                    f"({len(self.edges)} edges)"
                )
        return self


class _ProfileCounts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: Name
    labels: tuple[Name, ...]
    n: Count
    accuracy: Probability
    macro_precision: Probability
    macro_recall: Probability
    macro_f1: Probability
    per_class_recall: dict[str, Probability]
    confusion: list[list[Count]]


# The type of each recorded metric setting, by the type of its default (bins, OCR threshold).
_SETTING_TYPES: dict[type, Any] = {int: PositiveCount, float: Probability}


def _metric_fields() -> dict[str, Any]:
    """One field per calibration metric, each followed by the setting it records."""
    fields: dict[str, Any] = {}
    for metric in CALIBRATION_METRICS:
        fields[metric.key] = (FiniteFloat | None, ... if metric.required else None)
        if metric.setting is not None:
            key, setting = metric.setting
            fields[key] = (_SETTING_TYPES[type(getattr(DEFAULT_SETTINGS, setting))], ...)
    return fields


_ProfileMetrics = create_model(
    "_ProfileMetrics", __base__=_ProfileCounts, __module__=__name__, **_metric_fields()
)


class TrustProfile(_ProfileMetrics):
    """Measured trustworthiness of one agent on one task's labels (see the module docstring).

    ``confusion``: rows = true label, columns = predicted label, in ``labels`` order, plus a
    final column of failed / out-of-label predictions when ``confusion_has_invalid``.
    Then one field per metric of ``eval.metric_table.CALIBRATION_METRICS`` (``ece``,
    ``ece_bins``, ``mce``, ``ocr``, ``ocr_threshold``, ``ccc``, ...), None where undefined.
    ``intervals``: seeded percentile-bootstrap 95% intervals of accuracy, ece and ccc.
    ``recalibration``: the fitted map (``eval.recalibration.recalibrator_from_dict``).
    ``recalibrated``: held-out (cross-validated) metrics after recalibration.
    ``default``: True for the conservative profile of an agent without labelled data.
    ``reliability``: what the reliability diagram draws (None without valid predictions).
    """

    intervals: dict[str, tuple[FiniteFloat, FiniteFloat]]
    recalibration: dict[str, Any]
    recalibrated: dict[str, FiniteFloat]
    data_sha256: str
    default: StrictBool = False
    n_invalid: Count = 0
    confusion_has_invalid: StrictBool = False
    seed: Count = 0
    bootstrap: Count = 0
    reliability: ReliabilityTable | None = None

    _map: Recalibrator | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self) -> TrustProfile:
        """The counts agree with the labels (what a loaded file must satisfy to be used)."""
        k = len(self.labels)
        if k < 2:
            raise ValueError(f"'labels' needs at least two labels, got {list(self.labels)}")
        if len(set(self.labels)) != k:
            raise ValueError(f"'labels' names a label twice: {list(self.labels)}")
        unknown = sorted(set(self.per_class_recall) - set(self.labels))
        if unknown:
            raise ValueError(f"'per_class_recall' names labels not in 'labels': {unknown}")
        columns = k + int(self.confusion_has_invalid)
        if len(self.confusion) != k or any(len(row) != columns for row in self.confusion):
            shape = f"{len(self.confusion)} x {sorted({len(row) for row in self.confusion})}"
            raise ValueError(
                f"'confusion' is {shape}, not {k} x {columns} ({k} labels"
                + (", plus the column of failed answers)" if self.confusion_has_invalid else ")")
            )
        if self.n_invalid > self.n:
            raise ValueError(f"'n_invalid' ({self.n_invalid}) is more than 'n' ({self.n})")
        for key, bounds in self.intervals.items():
            if bounds[0] > bounds[1]:
                raise ValueError(f"'intervals.{key}' runs from {bounds[0]} down to {bounds[1]}")
        return self

    @property
    def settings(self) -> MetricSettings:
        """The settings its metrics were measured with."""
        return MetricSettings(
            **{field: getattr(self, key) for key, field in SETTING_FIELDS.items()}
        )

    def __eq__(self, other: object) -> bool:
        """Equal fields (the cached map does not count)."""
        if not isinstance(other, TrustProfile):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    @property
    def recalibrator(self) -> Recalibrator:
        """The fitted map, rebuilt once from ``recalibration``."""
        if self._map is None:
            self._map = recalibrator_from_dict(self.recalibration)
        return self._map

    def _label_index(self, prediction: Prediction) -> int | None:
        if prediction.label is None:
            return None
        try:
            return self.labels.index(prediction.label)
        except ValueError:
            raise InputError(
                f"prediction label {prediction.label!r} of agent {prediction.agent!r} is not one "
                f"of the profile's labels {list(self.labels)}"
            ) from None

    def _scores_vector(self, prediction: Prediction, index: int) -> np.ndarray:
        if prediction.scores:
            vec = np.array([prediction.scores.get(lb, 0.0) for lb in self.labels], dtype=float)
            if vec.sum() > 0:
                return vec / vec.sum()
        return peaked_scores(
            np.array([prediction.confidence]), np.array([index]), len(self.labels)
        )[0]

    def calibrated_confidence(self, prediction: Prediction) -> float:
        """Recalibrated probability that ``prediction.label`` is right (0.0 for a failure)."""
        index = self._label_index(prediction)
        if index is None:
            return 0.0
        mapping = self.recalibrator
        if isinstance(mapping, TemperatureScaler):
            return float(mapping.transform(self._scores_vector(prediction, index))[index])
        return float(mapping.transform(np.array([prediction.confidence]))[0])

    def class_prior(self) -> dict[str, float]:
        """P(truth = label) from the confusion rows, Laplace-smoothed (uniform without data)."""
        rows = np.asarray(self.confusion, dtype=float).reshape(len(self.labels), -1).sum(axis=1)
        prior = (rows + 1.0) / (rows.sum() + len(self.labels))
        return {lb: float(p) for lb, p in zip(self.labels, prior, strict=True)}

    def smoothed_column(self, index: int, *, alpha: float = 1.0) -> np.ndarray:
        """How often each true label lay behind the answer ``labels[index]`` (its confusion
        column), plus ``alpha`` pseudo-answers per label spread by the class prior (an
        m-estimate). Smoothing towards the prior, not a flat +alpha, keeps a label rare among
        the training truths from taking a share far above its prior: with a flat pseudo-count
        every answer would read as evidence for it."""
        k = len(self.labels)
        matrix = np.asarray(self.confusion, dtype=float).reshape(k, -1)
        prior = self.class_prior()
        return matrix[:, index] + alpha * k * np.array([prior[lb] for lb in self.labels])

    def calibrated_scores(self, prediction: Prediction) -> dict[str, float]:
        """Calibrated distribution over ``labels`` (sums to 1); see the contract in DESIGN."""
        index = self._label_index(prediction)
        if index is None:
            return self.class_prior()
        mapping = self.recalibrator
        if isinstance(mapping, TemperatureScaler):
            dist = mapping.transform(self._scores_vector(prediction, index))
            return {lb: float(p) for lb, p in zip(self.labels, dist, strict=True)}
        top = self.calibrated_confidence(prediction)
        column = self.smoothed_column(index)  # the rest of the mass follows the answer's column
        column[index] = 0.0
        rest = (1.0 - top) * column / column.sum()
        rest[index] = top
        rest /= rest.sum()
        return {lb: float(p) for lb, p in zip(self.labels, rest, strict=True)}


def records_sha256(records: Sequence[Record]) -> str:
    """Hash of the records' content (id, truth, pred, confidence, scores), order-independent."""
    lines = sorted(
        json.dumps(
            [r.id, r.agent, r.round, r.truth, r.pred, r.confidence, r.scores], sort_keys=True
        )
        for r in records
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def agent_arrays(
    agent: str, records: Sequence[Record], labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, CalibrationData]:
    """(truth indices, predicted indices with -1 for failures, the valid rows' data)."""
    index = {label: i for i, label in enumerate(labels)}
    truth = np.empty(len(records), dtype=np.int64)
    pred = np.empty(len(records), dtype=np.int64)
    for row, r in enumerate(records):
        if r.truth not in index:
            raise InputError(
                f"true label {r.truth!r} of agent {agent!r} is not one of {list(labels)}",
                line=r.line or None,
            )
        truth[row] = index[r.truth]
        pred[row] = index.get(r.pred, -1) if r.pred is not None else -1
    valid = np.flatnonzero(pred >= 0)
    conf = np.array([records[i].confidence for i in valid], dtype=np.float64)
    scores = None
    if valid.size and all(records[i].scores for i in valid):
        scores = np.array(
            [[records[i].scores.get(lb, 0.0) for lb in labels] for i in valid], dtype=np.float64
        )
        scores /= np.maximum(scores.sum(axis=1, keepdims=True), 1e-300)
    data = CalibrationData(confidence=conf, pred=pred[valid], truth=truth[valid], scores=scores)
    return truth, pred, data


def fit_trust_profile(
    agent: str,
    records: Sequence[Record],
    labels: Sequence[str],
    *,
    bins: int = DEFAULT_BINS,
    ocr_threshold: float = DEFAULT_OCR_THRESHOLD,
    method: str = "auto",
    data_sha256: str = "",
    seed: int = 0,
    bootstrap: int = 1000,
    cv_folds: int = 5,
) -> TrustProfile:
    """Measure one agent on its labelled records and fit its recalibration map.

    ``bootstrap=0`` skips the intervals; ``cv_folds=0`` skips the held-out metrics.
    ``data_sha256`` defaults to a hash of the records' content.
    """
    labels = tuple(labels)
    if len(labels) < 2:
        raise InputError(f"need at least two labels, got {list(labels)}")
    if not records:
        raise InputError(f"no records for agent {agent!r}")
    truth, pred, data = agent_arrays(agent, records, labels)
    cls = classification_metrics(truth, pred, len(labels))
    base = default_trust_profile(agent, labels)
    fields: dict[str, Any] = dict.fromkeys(m.key for m in CALIBRATION_METRICS)
    if data.n:
        cal = calibration_metrics(
            data.confidence, data.correct, bins=bins, ocr_threshold=ocr_threshold
        )
        fields = dict(cal.values)
        rel = reliability_bins(data.confidence, data.correct, bins=bins)
        fields["reliability"] = ReliabilityTable(
            edges=list(rel.edges),
            counts=list(rel.counts),
            mean_confidence=np.nan_to_num(rel.mean_confidence, nan=0.0).tolist(),
            accuracy=np.nan_to_num(rel.accuracy, nan=0.0).tolist(),
        )
        mapping = make_recalibrator(method, data, n_labels=len(labels), bins=bins).fit(data)
        fields["recalibration"] = mapping.to_dict()
        fields["recalibrated"] = cross_validated_metrics(
            data,
            method=method,
            n_labels=len(labels),
            folds=cv_folds,
            seed=seed,
            bins=bins,
            ocr_threshold=ocr_threshold,
        )
    intervals: dict[str, tuple[float, float]] = {}
    if bootstrap > 0:
        intervals = bootstrap_intervals(
            (pred == truth).astype(float),
            data.confidence,
            data.correct,
            bins=bins,
            resamples=bootstrap,
            seed=seed,
        )
    return base.model_copy(
        update={
            **fields,
            "n": cls.n,
            "n_invalid": cls.n_invalid,
            "accuracy": cls.accuracy,
            "macro_precision": cls.macro_precision,
            "macro_recall": cls.macro_recall,
            "macro_f1": cls.macro_f1,
            "per_class_recall": dict(zip(labels, cls.per_class_recall, strict=True)),
            "confusion": [list(row) for row in cls.confusion],
            "confusion_has_invalid": cls.has_invalid_column,
            **recorded_settings(MetricSettings(bins=int(bins), ocr_threshold=float(ocr_threshold))),
            "intervals": intervals,
            "data_sha256": data_sha256 or records_sha256(records),
            "default": False,
            "seed": seed,
            "bootstrap": bootstrap,
        }
    )


def fit_trust_profiles(
    records: RecordSet, *, agents: Sequence[str] | None = None, **kwargs: Any
) -> dict[str, TrustProfile]:
    """One profile per agent of a record set (all agents by default), hashed with the file."""
    kwargs.setdefault("data_sha256", records.sha256)
    return {
        agent: fit_trust_profile(agent, records.for_agent(agent), records.labels, **kwargs)
        for agent in (agents if agents is not None else records.agents)
    }


def _metrics_at_chance(chance: float) -> dict[str, Any]:
    """Each metric's value in the default profile, with the default settings."""
    values = {
        m.key: None if m.at_chance is None else m.at_chance(chance) for m in CALIBRATION_METRICS
    }
    return CalibrationMetrics(n=0, settings=DEFAULT_SETTINGS, values=values).values_with_settings()


def default_trust_profile(agent: str, labels: Sequence[str]) -> TrustProfile:
    """A conservative profile without data: the agent is assumed right at chance (1/k) while
    claiming certainty, and its confidence is shrunk strongly toward 1/k."""
    labels = tuple(labels)
    k = len(labels)
    if k < 2:
        raise InputError(f"need at least two labels, got {list(labels)}")
    chance = 1.0 / k
    return TrustProfile(
        agent=agent,
        labels=labels,
        n=0,
        accuracy=chance,
        macro_precision=chance,
        macro_recall=chance,
        macro_f1=chance,
        per_class_recall={label: chance for label in labels},
        confusion=[[0] * k for _ in labels],
        **_metrics_at_chance(chance),
        intervals={},
        recalibration=ShrinkCalibrator(prior=chance, weight=DEFAULT_SHRINK_WEIGHT).to_dict(),
        recalibrated={},
        data_sha256="",
        default=True,
    )
