"""Calibration metrics, recalibration maps, trust profiles and reliability plots."""

from eval.metric_table import (
    CALIBRATION_METRICS,
    CalibrationMetric,
    CalibrationMetrics,
    calibration_metrics,
)
from eval.metrics import (
    ClassificationMetrics,
    classification_metrics,
    expected_calibration_error,
    maximum_calibration_error,
)
from eval.profile import (
    TrustProfile,
    default_trust_profile,
    fit_trust_profile,
    fit_trust_profiles,
    load_trust_profiles,
    save_trust_profiles,
)

__all__ = [
    "CALIBRATION_METRICS",
    "CalibrationMetric",
    "CalibrationMetrics",
    "ClassificationMetrics",
    "TrustProfile",
    "calibration_metrics",
    "classification_metrics",
    "default_trust_profile",
    "expected_calibration_error",
    "fit_trust_profile",
    "fit_trust_profiles",
    "load_trust_profiles",
    "maximum_calibration_error",
    "save_trust_profiles",
]
