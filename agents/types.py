"""The agents' types: Prediction, Neighbour, the Agent protocol and the evidence it is shown.

This module imports only the foundation (``core``). Everything here holds plain
Python values (str, float, list, dict) so that LangGraph can checkpoint it with msgpack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from core.images import ImageRef, LoadedImage
from core.task import Task

REEVAL_SUFFIX = "@reeval"
"""Appended to an agent's name for its re-evaluated answers (their own trust profile)."""
RETRIEVAL_AGENT = "retrieval"
"""The default name of the retrieval agent, and the source name of a decision's evidence vote."""
MAX_REASON_CHARS = 2000
"""The longest ``Prediction.reason`` kept; a longer one is cut and says by how much."""
MAX_ERROR_CHARS = 1000
"""The longest ``Prediction.error`` kept."""


def capped_text(text: str, limit: int) -> str:
    """``text`` when it has at most ``limit`` characters, else its start followed by
    ``... [truncated N chars]``, ``limit`` characters in all (so capping twice changes
    nothing)."""
    if len(text) <= limit:
        return text

    def marker(cut: int) -> str:
        return f"... [truncated {cut:,} chars]"

    # The marker's length depends on the count it shows: size it for the most that could be
    # cut, then once more for what is cut (never longer, so the total stays within limit).
    keep = max(limit - len(marker(len(text))), 0)
    keep = max(limit - len(marker(len(text) - keep)), 0)
    return f"{text[:keep]}{marker(len(text) - keep)}"[:limit]


def _plain_float(value: float | None) -> float | None:
    if value is None:
        return None
    out = float(value)
    if math.isnan(out):
        return None
    return out


@dataclass(frozen=True)
class Prediction:
    """One agent's answer on one image in one round.

    ``label`` is one of the task's labels, or None when the agent failed (``error`` says why).
    ``confidence`` is in [0, 1]; ``scores`` is a full distribution over the task's labels when
    the agent has one. ``reported_confidence`` keeps a model's self-reported number when
    ``confidence`` was derived otherwise (token log-probabilities). Every agent's answer is
    built here, so this is where ``reason`` and ``error`` are bounded (``MAX_REASON_CHARS``,
    ``MAX_ERROR_CHARS``): a model's runaway text cannot swell the output and checkpoints.
    """

    agent: str
    label: str | None
    confidence: float = 0.0
    scores: dict[str, float] | None = None
    reason: str = ""
    round: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    error: str | None = None
    reported_confidence: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "confidence", float(self.confidence))
        object.__setattr__(self, "latency_s", float(self.latency_s))
        object.__setattr__(self, "cost_usd", float(self.cost_usd))
        object.__setattr__(self, "reported_confidence", _plain_float(self.reported_confidence))
        object.__setattr__(self, "reason", capped_text(str(self.reason), MAX_REASON_CHARS))
        if self.error is not None:
            object.__setattr__(self, "error", capped_text(str(self.error), MAX_ERROR_CHARS))
        if self.scores is not None:
            object.__setattr__(self, "scores", {str(k): float(v) for k, v in self.scores.items()})
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} outside [0, 1]")

    @property
    def ok(self) -> bool:
        return self.label is not None

    @classmethod
    def failure(
        cls, agent: str, error: str, *, round: int = 0, latency_s: float = 0.0
    ) -> Prediction:
        return cls(agent=agent, label=None, error=error, round=round, latency_s=latency_s)

    def to_dict(self) -> dict[str, Any]:
        """``asdict``'s result, made directly (its fields are plain values and one dict)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if self.scores is not None:
            out["scores"] = dict(self.scores)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Neighbour:
    """One retrieved labelled image: its id (sha256 or name), label, cosine similarity, source."""

    id: str
    label: str
    similarity: float
    source: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "similarity", float(self.similarity))


@runtime_checkable
class EvidenceView(Protocol):
    """What an agent is shown on re-evaluation (``rag.Evidence`` satisfies it)."""

    @property
    def neighbours(self) -> Sequence[Neighbour]: ...

    @property
    def vote(self) -> Mapping[str, float]: ...


@runtime_checkable
class Agent(Protocol):
    """A vision agent. ``predict`` never raises for a model failure: it returns
    ``Prediction.failure``. Agents with ``can_reevaluate`` use ``previous`` and ``evidence``
    when ``round > 0``; the others ignore them. ``image`` is a ``LoadedImage`` in a graph run
    (read once for all agents); agents read it through ``core.images``, never open the file."""

    name: str
    can_reevaluate: bool

    async def predict(
        self,
        image: ImageRef | LoadedImage,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> Prediction: ...
