"""The schema of a trust profile file: what ``load_trust_profiles`` accepts, field by field.

A file is ``{format, version, profiles: {agent: profile}}``; a profile is a ``TrustProfile``
(its fields and their checks live on the model, in ``eval.profile``) whose ``recalibration`` is
one of the maps below, told apart by ``method``. Every number is finite, every probability in
[0, 1], every count a whole number >= 0, and a field the schema does not know is refused, so a
file that loads can be applied to every image. ``trust_profile_file_schema()`` is the JSON
Schema of the whole file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.validation import (
    Count,
    FiniteFloat,
    Name,
    PositiveCount,
    PositiveFloat,
    Probability,
    check_strictly_increasing,
)
from eval.profile import TrustProfile
from eval.recalibration import SCORE_EPS


class _Map(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TemperatureMap(_Map):
    """Temperature scaling of a full score distribution over ``n_labels`` labels."""

    method: Literal["temperature"]
    temperature: PositiveFloat
    eps: Probability = SCORE_EPS
    n_labels: Annotated[int, Field(strict=True, ge=2)]
    n_fit: Count


class _KnotsAndValues(_Map):
    values: Annotated[list[Probability], Field(min_length=1)]
    n_fit: Count


class IsotonicMap(_KnotsAndValues):
    """Isotonic regression: ``values`` at the strictly increasing confidences ``knots``."""

    method: Literal["isotonic"]
    knots: Annotated[list[FiniteFloat], Field(min_length=1)]

    @model_validator(mode="after")
    def _knots_match_values(self) -> IsotonicMap:
        check_strictly_increasing(self.knots, "knots")
        if len(self.knots) != len(self.values):
            raise ValueError(
                f"'knots' and 'values' differ in length ({len(self.knots)} and {len(self.values)})"
            )
        return self


class HistogramMap(_KnotsAndValues):
    """Histogram binning: one value per bin between consecutive ``edges``."""

    method: Literal["histogram"]
    edges: Annotated[list[FiniteFloat], Field(min_length=2)]
    bins: PositiveCount = 10

    @model_validator(mode="after")
    def _one_value_per_bin(self) -> HistogramMap:
        check_strictly_increasing(self.edges, "edges")
        if len(self.edges) != len(self.values) + 1:
            raise ValueError(
                f"'edges' must be one longer than 'values' ({len(self.edges)} edges, "
                f"{len(self.values)} values)"
            )
        return self


class ShrinkMap(_Map):
    """No data: ``prior + weight * (confidence - prior)``."""

    method: Literal["shrink"]
    prior: Probability
    weight: Probability


RecalibrationMap = Annotated[
    TemperatureMap | IsotonicMap | HistogramMap | ShrinkMap, Field(discriminator="method")
]


class StoredTrustProfile(TrustProfile):
    """A ``TrustProfile`` as a file holds it: its ``recalibration`` checked as a map."""

    recalibration: RecalibrationMap  # type: ignore[assignment]

    @model_validator(mode="after")
    def _map_fits_labels(self) -> StoredTrustProfile:
        mapping = self.recalibration
        if isinstance(mapping, TemperatureMap) and mapping.n_labels != len(self.labels):
            raise ValueError(
                f"'recalibration.n_labels' is {mapping.n_labels} for {len(self.labels)} labels"
            )
        return self

    def to_profile(self) -> TrustProfile:
        """The runtime profile (its map as the plain dict ``recalibrator_from_dict`` reads)."""
        return TrustProfile.model_validate(self.model_dump())


class TrustProfileFile(BaseModel):
    """A whole trust profile file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["trustorch-trust-profiles"]  # eval.profile_io.FILE_FORMAT
    version: Literal[1]  # eval.profile_io.FILE_VERSION
    profiles: dict[Name, StoredTrustProfile]


def trust_profile_file_schema() -> dict[str, Any]:
    """The JSON Schema of a trust profile file."""
    return TrustProfileFile.model_json_schema()
