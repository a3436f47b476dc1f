"""The graph's input, state and output types, and the types its checkpoints may hold.

The state holds the typed objects themselves (``ImageRef``, ``Prediction``, ``Assessment``,
``Evidence``, ``Route``, ``Decision``), never their dict forms: LangGraph's serializer stores
dataclasses, and ``checkpoint_serializer`` allows exactly these types back in on load. Their
fields are plain str, float, int, bool, None, list and dict (no numpy scalars). Fan-in keys
(written by parallel agent calls) add lists together.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Annotated, Literal, NotRequired, TypedDict

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from agents.types import Neighbour, Prediction
from core.images import ImageRef
from orchestrator.checkpoint_serde import FastStateSerializer
from orchestrator.decision import Assessment, Decision
from rag.evidence import Evidence

Step = Literal["finalize", "retrieve", "reevaluate", "assess"]


@dataclass(frozen=True)
class Route:
    """One routing choice: after node ``after`` in round ``round``, go ``to`` (re-evaluating
    ``agents`` when ``to == "reevaluate"``), for ``reason``."""

    after: str
    round: int
    to: Step
    reason: str
    agents: list[str] = field(default_factory=list)

    def note(self) -> str:
        """The choice as a line of the decision's notes."""
        agents = f" {self.agents}" if self.agents else ""
        return f"round {self.round}: {self.after} -> {self.to}{agents}: {self.reason}"


class GraphInput(TypedDict):
    """What the graph takes: one image and its true label when known."""

    image: ImageRef
    truth: NotRequired[str | None]


class GraphState(TypedDict):
    """The whole state of one image's run.

    ``round`` is the round now being answered (0 = first look); ``predictions`` holds every
    answer of every round, ``assessments`` every policy verdict; ``routes`` records each
    routing choice with its reason.
    """

    image: ImageRef
    truth: NotRequired[str | None]
    round: NotRequired[int]
    predictions: Annotated[list[Prediction], operator.add]
    assessments: Annotated[list[Assessment], operator.add]
    routes: Annotated[list[Route], operator.add]
    evidence: NotRequired[Evidence | None]
    evidence_latency_s: NotRequired[float]
    retrieval_error: NotRequired[str | None]
    decision: NotRequired[Decision]


class AgentCall(TypedDict):
    """What one fanned-out agent call gets (the ``Send`` payload). ``route`` is the choice that
    sent it, carried by the first call of a fan-out only so that it is recorded once."""

    image: ImageRef
    agent: str
    round: int
    previous: Prediction | None
    evidence: Evidence | None
    route: Route | None


class GraphOutput(TypedDict):
    """What the graph returns."""

    decision: Decision


CHECKPOINTED_TYPES: tuple[type, ...] = (
    ImageRef,
    Prediction,
    Neighbour,
    Assessment,
    Evidence,
    Route,
    Decision,
)
"""The only project types a checkpoint may load."""


def checkpoint_serializer() -> JsonPlusSerializer:
    """LangGraph's serializer, loading nothing but its safe built-ins and ``CHECKPOINTED_TYPES``
    (and writing those fast, in LangGraph's own format: ``FastStateSerializer``)."""
    return FastStateSerializer(
        dataclass_types=CHECKPOINTED_TYPES,
        allowed_msgpack_modules=[(t.__module__, t.__name__) for t in CHECKPOINTED_TYPES],
    )
