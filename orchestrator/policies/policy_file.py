"""The trust policy file: the fitted settings of a ``TrustPolicy`` (weights, thresholds, ...;
not the profiles) that ``trustorch eval replay --save-policy`` writes and ``trustorch run
--policy-file`` reads, checked whole against the schema below when it is read.

A file is ``{format, version, fitted_on, policy}`` and, written from the ``select`` policy,
``selection``; written with ``--alpha``, ``conformal`` (``orchestrator.policies.conformal``).
In ``policy``, ``name``, ``weights`` (per stage, per source: a finite weight >= 0) and
``thresholds`` (per stage: a probability, or null for a stage that is never trusted early) are
required; the other settings are optional (the policy's defaults). ``selection`` records the
choice of ``orchestrator.policies.select``: the family chosen, the labels its parameters index,
the inner folds, every family's inner-CV scores and the chosen family's fitted parameters (null
for trust, whose settings are ``policy``); files without it (written before it existed) load as
they did. ``trustorch run`` decides with the chosen family (``load_fitted_policy``). A field the
schema does not know is refused. ``policy_file_schema()`` is the JSON Schema of the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeInt,
    PositiveInt,
    StrictBool,
    ValidationError,
)

from core.errors import InputError
from core.files import write_text_atomically
from core.jsonio import dumps_json, read_json_file
from core.validation import Name, NonNegativeFloat, Probability, field_path, first_error
from orchestrator.policies.conformal import ConformalBlock

if TYPE_CHECKING:
    from orchestrator.policies.select import SelectPolicy
    from orchestrator.policies.trust import TrustPolicy

POLICY_FILE_FORMAT = "trustorch-trust-policy"
POLICY_FILE_VERSION = 1

Stage = Literal["first", "evidence", "reeval"]
"""The stages of ``orchestrator.policies.trust`` (``STAGES``)."""


class PolicySettings(BaseModel):
    """What ``TrustPolicy.to_dict`` writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["trust"]
    weights: dict[Stage, dict[Name, NonNegativeFloat]]
    thresholds: dict[Stage, Probability | None]
    abstain_below: Probability = 0.5
    set_coverage: Probability = 0.95
    default_weight: NonNegativeFloat = 0.5
    retrieval_source: Name | None = None
    reevaluate: list[Name] | None = None
    agent_model: Literal["calibrated", "confusion", "joint"] = "confusion"
    keep_first_looks: StrictBool = False


Family = Literal["best-single", "trust", "dawid-skene", "stacking", "second-look"]
"""The families of ``orchestrator.policies.select`` (``FAMILIES``)."""


class FamilyScores(BaseModel):
    """One family's inner-CV scores and, past the first family, its challenge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accuracy: Probability
    log_loss: NonNegativeFloat
    against: Family | None = None
    wins: NonNegativeInt | None = None
    losses: NonNegativeInt | None = None
    margin_z: NonNegativeFloat | None = None


class Selection(BaseModel):
    """What ``SelectPolicy.selection`` writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chosen: Family
    labels: list[str] | None = None
    inner_folds: PositiveInt
    scores: dict[Family, FamilyScores]
    family: dict[str, Any] | None = None


class PolicyFile(BaseModel):
    """A whole trust policy file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["trustorch-trust-policy"]  # POLICY_FILE_FORMAT
    version: Literal[1]  # POLICY_FILE_VERSION
    fitted_on: dict[str, Any] = {}
    policy: PolicySettings
    selection: Selection | None = None
    conformal: ConformalBlock | None = None


def policy_file_schema() -> dict[str, Any]:
    """The JSON Schema of a trust policy file."""
    return PolicyFile.model_json_schema()


def save_trust_policy(
    path: str | Path,
    policy: TrustPolicy | SelectPolicy,
    *,
    fitted_on: Mapping[str, Any],
    conformal: Mapping[str, Any] | None = None,
) -> None:
    """Write the policy's fitted settings (``TrustPolicy.to_dict``) and what they were fitted on;
    for a ``SelectPolicy``, the settings of its trust policy and its ``selection``; when given,
    its conformal calibration (``orchestrator.policies.conformal``)."""
    from orchestrator.policies.select import SelectPolicy

    selection = policy.selection() if isinstance(policy, SelectPolicy) else None
    trust = policy.trust_ if isinstance(policy, SelectPolicy) else policy
    payload: dict[str, Any] = {
        "format": POLICY_FILE_FORMAT,
        "version": POLICY_FILE_VERSION,
        "fitted_on": dict(fitted_on),
        "policy": trust.to_dict(),
    }
    if selection is not None:
        payload["selection"] = selection
    if conformal is not None:
        payload["conformal"] = dict(conformal)
    write_text_atomically(path, dumps_json(payload, indent=2) + "\n", what="the policy file")


def load_trust_policy_settings(path: str | Path) -> dict[str, Any]:
    """The keyword settings of ``TrustPolicy`` saved by ``save_trust_policy`` (those the file
    gives, without ``name`` and ``retrieval_source``: the run names its own retriever); an
    InputError naming the file and the field when anything in it is unusable."""
    stored = read_policy_file(path)
    return stored.policy.model_dump(exclude_unset=True, exclude={"name", "retrieval_source"})


@dataclass(frozen=True)
class FittedPolicyFile:
    """What ``trustorch run --policy-file`` takes from a policy file: the trust policy's
    settings (``load_trust_policy_settings``) and the ``selection`` (None for a file written
    from the trust policy); ``chosen`` is the family that decides."""

    path: str
    trust_settings: dict[str, Any]
    selection: dict[str, Any] | None

    @property
    def chosen(self) -> str:
        return self.selection["chosen"] if self.selection is not None else "trust"


def load_fitted_policy(path: str | Path) -> FittedPolicyFile:
    """The policy file ``path``, read and checked once (InputError naming the field)."""
    stored = read_policy_file(path)
    return FittedPolicyFile(
        path=str(path),
        trust_settings=stored.policy.model_dump(
            exclude_unset=True, exclude={"name", "retrieval_source"}
        ),
        selection=stored.selection.model_dump() if stored.selection is not None else None,
    )


def load_policy_selection(path: str | Path) -> dict[str, Any] | None:
    """The ``selection`` of a policy file (None for a file written from the trust policy)."""
    stored = read_policy_file(path)
    return stored.selection.model_dump() if stored.selection is not None else None


def read_policy_file(path: str | Path) -> PolicyFile:
    """A policy file, checked whole against the schema (InputError naming the field)."""
    p = Path(path)
    data = read_json_file(p, what="policy file")
    if not isinstance(data, dict) or data.get("format") != POLICY_FILE_FORMAT:
        raise InputError(
            f"not a trust policy file (expected format {POLICY_FILE_FORMAT!r}; "
            "write one with trustorch eval replay --save-policy)",
            path=str(p),
        )
    try:
        stored = PolicyFile.model_validate(data)
    except ValidationError as e:
        loc, message = first_error(e)
        raise InputError(f"field {field_path(loc)!r}: {message}", path=str(p)) from None
    return stored
