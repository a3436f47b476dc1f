"""The graph's input, state and output types.

Only plain msgpack-able values live in the state (str, int, float, bool, None, list, dict), so
LangGraph's checkpointers can store it: predictions, assessments and evidence are kept as their
``to_dict()`` forms. Fan-in keys (written by parallel agent calls) add lists together.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired, TypedDict


class ImageInput(TypedDict):
    """An ``ImageRef`` as plain values."""

    source: str
    sha256: str


class GraphInput(TypedDict):
    """What ``graph.ainvoke`` takes: one image and its true label when known."""

    image: ImageInput
    truth: NotRequired[str | None]


class GraphState(TypedDict):
    """The whole state of one image's run.

    ``round`` is the round now being answered (0 = first look); ``predictions`` holds every
    ``Prediction.to_dict()`` of every round, ``assessments`` every ``Assessment.to_dict()``;
    ``routes`` records each routing choice with its reason.
    """

    image: ImageInput
    truth: NotRequired[str | None]
    round: NotRequired[int]
    predictions: Annotated[list[dict[str, Any]], operator.add]
    assessments: Annotated[list[dict[str, Any]], operator.add]
    routes: Annotated[list[dict[str, Any]], operator.add]
    evidence: NotRequired[dict[str, Any] | None]
    evidence_latency_s: NotRequired[float]
    decision: NotRequired[dict[str, Any]]


class AgentCall(TypedDict):
    """What one fanned-out agent call gets (the ``Send`` payload)."""

    image: ImageInput
    agent: str
    round: int
    previous: dict[str, Any] | None
    evidence: dict[str, Any] | None


class GraphOutput(TypedDict):
    """What ``graph.ainvoke`` returns: ``Decision.to_dict()``."""

    decision: dict[str, Any]
