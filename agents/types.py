"""Shared types of the ground floor: Task, ImageRef, Prediction, Neighbour, the Agent protocol.

This module imports nothing of the project but ``agents.errors``. Everything here holds plain
Python values (str, float, list, dict) so that LangGraph can checkpoint it with msgpack.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from agents.errors import InputError

REEVAL_SUFFIX = "@reeval"
"""Appended to an agent's name for its re-evaluated answers (their own trust profile)."""
RETRIEVAL_AGENT = "retrieval"
"""The default name of the retrieval agent, and the source name of a decision's evidence vote."""


def _label_key(text: str) -> str:
    return re.sub(r"[\s_\-]+", "-", text.strip().lower())


class Task(BaseModel):
    """A classification task: ordered labels, a visual description per label, prompt names."""

    model_config = ConfigDict(frozen=True)

    name: str
    labels: tuple[str, ...]
    descriptions: dict[str, str]
    title: str = ""
    subject: str = "the image"
    synonyms: dict[str, str] = {}
    prompts: dict[str, str] = {"agent": "agent", "reevaluate": "reevaluate", "clip": "clip"}

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if len(labels) < 2:
            raise ValueError("a task needs at least two labels")
        if len({_label_key(label) for label in labels}) != len(labels):
            raise ValueError(f"labels must be distinct: {list(labels)}")
        return labels

    @model_validator(mode="after")
    def _descriptions_cover_labels(self) -> Task:
        missing = [label for label in self.labels if label not in self.descriptions]
        if missing:
            raise ValueError(f"descriptions missing for labels {missing}")
        unknown = [t for t in self.synonyms.values() if t not in self.labels]
        if unknown:
            raise ValueError(f"synonyms point to unknown labels {unknown}")
        return self

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def normalise_label(self, text: str | None) -> str | None:
        """Map free text ('Black rot', 'BLACK_ROT', 'apple scab') to a label, or None."""
        if text is None:
            return None
        key = _label_key(text.strip().strip("\"'.` "))
        if not key:
            return None
        by_key = {_label_key(label): label for label in self.labels}
        by_key.update({_label_key(s): target for s, target in self.synonyms.items()})
        return by_key.get(key)


@dataclass(frozen=True)
class ImageRef:
    """Where an image came from and the sha256 of its bytes (its identity everywhere).

    The decoded image is not held: ``agents.images.open_image`` reads it when an agent needs it.
    """

    source: str
    sha256: str

    @classmethod
    def from_path(cls, path: str | Path) -> ImageRef:
        p = Path(path)
        try:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        except FileNotFoundError:
            raise InputError("no such image file", path=str(p)) from None
        except IsADirectoryError:
            raise InputError("is a folder, not an image file", path=str(p)) from None
        return cls(source=str(p), sha256=digest)

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> ImageRef:
        return cls(source=source, sha256=hashlib.sha256(data).hexdigest())

    @property
    def name(self) -> str:
        return self.source.rstrip("/").rsplit("/", 1)[-1]


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
    ``confidence`` was derived otherwise (token log-probabilities).
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
        return asdict(self)

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
    when ``round > 0``; the others ignore them."""

    name: str
    can_reevaluate: bool

    async def predict(
        self,
        image: ImageRef,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> Prediction: ...


@dataclass(frozen=True)
class LabelledImage:
    """An image with its true label, when known (ImageFolder layouts, manifests)."""

    image: ImageRef
    truth: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
