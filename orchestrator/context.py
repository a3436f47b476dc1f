"""What the graph's nodes and routers run with: LangGraph's run-time context of one image's run.

Agents, policy and retriever live here, never in the (checkpointed) state. ``image`` is the
image of this run read once (``core.images.LoadedImage``): every agent is handed it, so the file
is read and decoded at most once however many agents look at it, and it goes with the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agents.types import Agent
from core.errors import InputError
from core.images import ImageRef, LoadedImage
from core.task import Task
from orchestrator.policies.base import FusionPolicy
from rag.retriever import Retriever


@dataclass(frozen=True)
class GraphContext:
    """The run-time context: ``agents`` by name (``agents_by_name``), in the order given.
    InputError on a setting the graph cannot run with."""

    task: Task
    agents: Mapping[str, Agent]
    policy: FusionPolicy
    retriever: Retriever | None = None
    max_rounds: int = 2
    agent_timeout_s: float | None = None
    image: LoadedImage | None = None

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise InputError(f"max_rounds must be at least 1, got {self.max_rounds}")
        if self.agent_timeout_s is not None and self.agent_timeout_s <= 0:
            raise InputError(f"agent timeout must be positive, got {self.agent_timeout_s}")
        if not self.agents:
            raise InputError("the graph needs at least one agent")

    def for_image(self, image: ImageRef) -> GraphContext:
        """This context for one run of ``image``, which is read (once) when an agent needs it."""
        return dataclasses.replace(self, image=LoadedImage(image))

    def image_of(self, ref: ImageRef) -> ImageRef | LoadedImage:
        """What the agents are handed for ``ref``: the run's loaded image when it is that one."""
        if self.image is not None and self.image.ref == ref:
            return self.image
        return ref

    def can_look_again(self, names: Sequence[str]) -> list[str]:
        """The agents of ``names`` that exist here and can re-evaluate, in that order."""
        return [n for n in names if n in self.agents and self.agents[n].can_reevaluate]


def agents_by_name(agents: Sequence[Agent]) -> dict[str, Agent]:
    """``agents`` by name, in their order; InputError when two share a name."""
    by_name: dict[str, Agent] = {}
    for agent in agents:
        if agent.name in by_name:
            raise InputError(f"two agents share the name '{agent.name}'")
        by_name[agent.name] = agent
    return by_name
