"""Recalibration maps fitted on labelled predictions and applied to new ones.

- ``TemperatureScaler`` (agents with a full score distribution): softmax(log(clip(p, eps)) / T),
  T fitted by maximum likelihood (Guo et al. 2017), the model of netcal's ``TemperatureScaling``.
  netcal fits it through torch and L-BFGS (about 0.15 s per fit here), too slow for fitting
  inside replay loops, so T is fitted with a bounded scalar search on the same negative
  log-likelihood (about 1 ms); a test checks both give the same temperature.
- ``TopLabelCalibrator`` (agents with one confidence): netcal ``IsotonicRegression`` or
  ``HistogramBinning`` of correctness on the top-label confidence. The fitted map is kept as
  plain numbers (isotonic knots, or bin edges and values) and applied with numpy, so applying
  a loaded map needs neither netcal nor torch. A map fitted on n rows never claims more than
  Laplace's rule allows: its output is clipped to [1/(n+2), (n+1)/(n+2)].
- ``ShrinkCalibrator``: no data; confidence pulled toward the chance level 1/k (the default
  profile's conservative map).

Every map serialises to a plain dict (``to_dict``) and back (``recalibrator_from_dict``).
``cross_validated_metrics`` measures the metrics after recalibration on held-out folds.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from core.errors import InputError, NotFittedError
from eval.folds import stratified_folds
from eval.metric_table import Report, calibration_metrics, metrics_in
from eval.metrics import DEFAULT_BINS, DEFAULT_OCR_THRESHOLD, nudge
from eval.scores import peaked_scores

METHODS = ("auto", "temperature", "isotonic", "histogram")
SCORE_EPS = 1e-6


@dataclass(frozen=True)
class CalibrationData:
    """One agent's valid (non-failed) labelled predictions as arrays; label indices."""

    confidence: np.ndarray
    pred: np.ndarray
    truth: np.ndarray
    scores: np.ndarray | None = None

    @property
    def correct(self) -> np.ndarray:
        return (self.pred == self.truth).astype(np.float64)

    @property
    def n(self) -> int:
        return int(self.confidence.size)

    def subset(self, rows: np.ndarray) -> CalibrationData:
        return CalibrationData(
            confidence=self.confidence[rows],
            pred=self.pred[rows],
            truth=self.truth[rows],
            scores=None if self.scores is None else self.scores[rows],
        )


def softmax_with_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(clip(scores, eps)) / T) row-wise."""
    logits = np.log(np.clip(np.asarray(scores, dtype=np.float64), SCORE_EPS, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


class _Recalibrator:
    method: ClassVar[str]

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit first")

    def fit(self, data: CalibrationData) -> _Recalibrator:
        raise NotImplementedError

    def calibrated_confidence(self, data: CalibrationData) -> np.ndarray:
        """Recalibrated probability that each predicted label is right."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


class TemperatureScaler(_Recalibrator):
    method = "temperature"

    def __init__(self, *, n_labels: int) -> None:
        self.n_labels = n_labels

    def fit(self, data: CalibrationData) -> TemperatureScaler:
        if data.scores is None:
            raise ValueError("temperature scaling needs full score distributions")
        from scipy.optimize import minimize_scalar

        logp = np.log(np.clip(data.scores, SCORE_EPS, 1.0))
        rows = np.arange(data.n)

        def nll(log_t: float) -> float:
            z = logp / math.exp(log_t)
            z = z - z.max(axis=1, keepdims=True)
            return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, data.truth]))

        result = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded")
        self.temperature_ = float(math.exp(result.x))
        self.n_fit_ = data.n
        self.fitted_ = True
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated distributions [n, k] from score distributions [n, k]."""
        self._check_fitted()
        return softmax_with_temperature(scores, self.temperature_)

    def calibrated_confidence(self, data: CalibrationData) -> np.ndarray:
        scores = data.scores
        if scores is None:
            scores = peaked_scores(data.confidence, data.pred, self.n_labels)
        return self.transform(scores)[np.arange(data.n), data.pred]

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "method": self.method,
            "temperature": self.temperature_,
            "eps": SCORE_EPS,
            "n_labels": self.n_labels,
            "n_fit": self.n_fit_,
        }


class TopLabelCalibrator(_Recalibrator):
    """Isotonic regression or histogram binning of correctness on top-label confidence."""

    def __init__(self, *, method: str = "isotonic", bins: int = DEFAULT_BINS) -> None:
        if method not in ("isotonic", "histogram"):
            raise ValueError(f"method must be 'isotonic' or 'histogram', got {method!r}")
        self.method = method  # type: ignore[misc]
        self.bins = bins

    def fit(self, data: CalibrationData) -> TopLabelCalibrator:
        conf = data.confidence.astype(np.float64)
        correct = data.correct.astype(np.int64)
        # netcal prints a warning on stdout when every row is right (or wrong): keep stdout clean
        with contextlib.redirect_stdout(io.StringIO()):
            if self.method == "isotonic":
                from netcal.binning import IsotonicRegression

                iso = IsotonicRegression().fit(conf, correct)
                self.x_ = np.asarray(iso._iso.X_thresholds_, dtype=np.float64)
                self.y_ = np.asarray(iso._iso.y_thresholds_, dtype=np.float64)
            else:
                from netcal.binning import HistogramBinning

                hist = HistogramBinning(bins=self.bins).fit(nudge(conf), correct)
                self.x_ = np.asarray(hist._bin_bounds[0], dtype=np.float64)
                self.y_ = np.asarray(hist._bin_map, dtype=np.float64).reshape(-1)
        self.n_fit_ = data.n
        self.fitted_ = True
        return self

    def transform(self, confidence: np.ndarray) -> np.ndarray:
        """Calibrated confidences of top-label confidences."""
        self._check_fitted()
        conf = np.asarray(confidence, dtype=np.float64)
        if self.method == "isotonic":
            out = np.interp(conf, self.x_, self.y_)
        else:
            eps = np.finfo(np.float64).eps
            clipped = np.clip(nudge(conf), eps, 1.0 - eps)
            idx = np.searchsorted(self.x_, clipped, side="right") - 1
            out = self.y_[np.clip(idx, 0, self.y_.size - 1)]
        lo = 1.0 / (self.n_fit_ + 2)
        return np.clip(out, lo, 1.0 - lo)

    def calibrated_confidence(self, data: CalibrationData) -> np.ndarray:
        return self.transform(data.confidence)

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        key = "knots" if self.method == "isotonic" else "edges"
        return {
            "method": self.method,
            key: self.x_.tolist(),
            "values": self.y_.tolist(),
            "n_fit": self.n_fit_,
            **({"bins": self.bins} if self.method == "histogram" else {}),
        }


class ShrinkCalibrator(_Recalibrator):
    """prior + weight * (confidence - prior): a map for agents without labelled data."""

    method = "shrink"

    def __init__(self, *, prior: float, weight: float = 0.2) -> None:
        if not 0.0 <= prior <= 1.0 or not 0.0 <= weight <= 1.0:
            raise ValueError(f"prior and weight must be in [0, 1], got {prior}, {weight}")
        self.prior = prior
        self.weight = weight
        self.fitted_ = True

    def fit(self, data: CalibrationData) -> ShrinkCalibrator:
        return self

    def transform(self, confidence: np.ndarray) -> np.ndarray:
        conf = np.asarray(confidence, dtype=np.float64)
        return self.prior + self.weight * (conf - self.prior)

    def calibrated_confidence(self, data: CalibrationData) -> np.ndarray:
        return self.transform(data.confidence)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "prior": self.prior, "weight": self.weight}


Recalibrator = TemperatureScaler | TopLabelCalibrator | ShrinkCalibrator


def resolve_method(method: str, data: CalibrationData) -> str:
    """``auto``: temperature when every prediction has scores, else isotonic."""
    if method not in METHODS:
        raise InputError(f"unknown recalibration method {method!r} (choose from {list(METHODS)})")
    if method == "auto":
        return "temperature" if data.scores is not None else "isotonic"
    if method == "temperature" and data.scores is None:
        raise InputError("temperature scaling needs full score distributions for every row")
    return method


def make_recalibrator(
    method: str, data: CalibrationData, *, n_labels: int, bins: int = DEFAULT_BINS
) -> Recalibrator:
    """An unfitted map for ``method`` (``auto`` resolved against ``data``)."""
    resolved = resolve_method(method, data)
    if resolved == "temperature":
        return TemperatureScaler(n_labels=n_labels)
    return TopLabelCalibrator(method=resolved, bins=bins)


def recalibrator_from_dict(data: dict[str, Any]) -> Recalibrator:
    """Rebuild a fitted map from ``to_dict`` output (ValueError on a malformed dict)."""
    try:
        method = data["method"]
        if method == "temperature":
            t = TemperatureScaler(n_labels=int(data["n_labels"]))
            t.temperature_ = float(data["temperature"])
            t.n_fit_ = int(data["n_fit"])
            t.fitted_ = True
            if not t.temperature_ > 0:
                raise ValueError("temperature must be > 0")
            return t
        if method in ("isotonic", "histogram"):
            c = TopLabelCalibrator(method=method, bins=int(data.get("bins", DEFAULT_BINS)))
            c.x_ = np.asarray(data["knots" if method == "isotonic" else "edges"], dtype=float)
            c.y_ = np.asarray(data["values"], dtype=float)
            c.n_fit_ = int(data["n_fit"])
            c.fitted_ = True
            if c.x_.ndim != 1 or c.y_.ndim != 1 or c.x_.size == 0 or c.y_.size == 0:
                raise ValueError("empty map")
            return c
        if method == "shrink":
            return ShrinkCalibrator(prior=float(data["prior"]), weight=float(data["weight"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed recalibration map: {e!r}") from None
    raise ValueError(f"unknown recalibration method {data.get('method')!r}")


def cross_validated_metrics(
    data: CalibrationData,
    *,
    method: str,
    n_labels: int,
    folds: int = 5,
    seed: int = 0,
    bins: int = DEFAULT_BINS,
    ocr_threshold: float = DEFAULT_OCR_THRESHOLD,
) -> dict[str, float]:
    """Metrics of the recalibrated confidences on held-out folds.

    Each row's confidence is recalibrated by a map fitted on the other folds. Keys: the metrics
    of ``Report.HELD_OUT`` after recalibration (``ece``, ``mce``, ...), ``<key>_before`` for
    those of ``Report.COMPARED`` on the same rows (``ece_before``, ``brier_before``), ``folds``
    and ``n``. Undefined values are left out; an empty dict when fewer than 4 rows (nothing to
    hold out).
    """
    if data.n < 4 or folds < 2:
        return {}
    k = min(folds, int(max(data.correct.sum(), data.n - data.correct.sum())))
    assignment = stratified_folds(data.correct, k, seed)
    calibrated = np.empty(data.n)
    for fold in range(k):
        held = assignment == fold
        if not held.any():
            continue
        fitted = make_recalibrator(method, data, n_labels=n_labels, bins=bins)
        fitted.fit(data.subset(~held))
        calibrated[held] = fitted.calibrated_confidence(data.subset(held))
    settings = {"bins": bins, "ocr_threshold": ocr_threshold}
    after = calibration_metrics(calibrated, data.correct, report=Report.HELD_OUT, **settings)
    before = calibration_metrics(data.confidence, data.correct, report=Report.COMPARED, **settings)
    out = {
        **after.values,
        **{f"{m.key}_before": before[m.key] for m in metrics_in(Report.COMPARED)},
        "folds": float(k),
        "n": float(data.n),
    }
    return {key: float(v) for key, v in out.items() if v is not None}
