"""What a fusion policy says after each round (Assessment) and the final Decision with its trace."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.types import Prediction


@dataclass(frozen=True)
class Assessment:
    """One policy verdict on the answers so far.

    ``scores`` is the fused distribution over the task's labels; ``trusted`` says whether the
    graph may finalize now; ``reevaluate`` names the agents to ask again when not trusted;
    ``weights`` are the per-source weights used; ``reason`` explains the routing choice;
    ``fallback`` says why a policy could not decide its own way and used its fallback rule
    (empty when it did not: e.g. the ``llm`` policy without a valid reply).
    """

    policy: str
    round: int
    scores: dict[str, float]
    label: str | None
    confidence: float
    trusted: bool
    weights: dict[str, float] = field(default_factory=dict)
    reevaluate: list[str] = field(default_factory=list)
    prediction_set: list[str] = field(default_factory=list)
    reason: str = ""
    cost_usd: float = 0.0
    latency_s: float = 0.0
    fallback: str = ""

    def __post_init__(self) -> None:
        # Plain Python values only: the graph's checkpoints store this object as it is.
        object.__setattr__(self, "scores", {str(k): float(v) for k, v in self.scores.items()})
        object.__setattr__(self, "weights", {str(k): float(v) for k, v in self.weights.items()})
        object.__setattr__(self, "confidence", float(self.confidence))
        object.__setattr__(self, "trusted", bool(self.trusted))
        object.__setattr__(self, "reevaluate", [str(n) for n in self.reevaluate])
        object.__setattr__(self, "prediction_set", [str(y) for y in self.prediction_set])
        object.__setattr__(self, "cost_usd", float(self.cost_usd))
        object.__setattr__(self, "latency_s", float(self.latency_s))

    def to_dict(self) -> dict[str, Any]:
        """``asdict``'s result, made directly (its fields are plain values, dicts and lists)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["scores"] = dict(self.scores)
        out["weights"] = dict(self.weights)
        out["reevaluate"] = list(self.reevaluate)
        out["prediction_set"] = list(self.prediction_set)
        return out

    @classmethod
    def abstention(
        cls,
        *,
        policy: str,
        labels: Sequence[str],
        round: int,
        reason: str,
        trusted: bool,
        confidence: float = 0.0,
    ) -> Assessment:
        """No label: uniform scores, every label in the prediction set."""
        return cls(
            policy=policy,
            round=round,
            scores=dict.fromkeys(labels, 1.0 / len(labels)),
            label=None,
            confidence=confidence,
            trusted=trusted,
            prediction_set=list(labels),
            reason=reason,
        )


@dataclass(frozen=True)
class Decision:
    """The final answer for one image, with everything that led to it.

    ``label`` is None when the policy abstains; ``prediction_set`` then lists the labels it
    could not tell apart.
    """

    image: str
    sha256: str
    task: str
    policy: str
    label: str | None
    confidence: float
    prediction_set: list[str]
    rounds_used: int
    predictions: list[Prediction]
    assessments: list[Assessment]
    evidence: dict[str, Any] | None = None
    weights: dict[str, float] = field(default_factory=dict)
    cost_usd: float = 0.0
    latency_s: float = 0.0
    truth: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def abstained(self) -> bool:
        return self.label is None

    @property
    def reevaluated(self) -> bool:
        return self.rounds_used > 1

    def to_dict(self) -> dict[str, Any]:
        """``asdict``'s result, made directly."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["prediction_set"] = list(self.prediction_set)
        out["predictions"] = [p.to_dict() for p in self.predictions]
        out["assessments"] = [a.to_dict() for a in self.assessments]
        out["evidence"] = copy.deepcopy(self.evidence)
        out["weights"] = dict(self.weights)
        out["notes"] = list(self.notes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        fields = dict(data)
        fields["predictions"] = [Prediction.from_dict(p) for p in data["predictions"]]
        fields["assessments"] = [Assessment(**a) for a in data["assessments"]]
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})
