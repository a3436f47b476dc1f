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
    """The run-time context: ``agents`` by name, in the order they were given."""

    task: Task
    agents: Mapping[str, Agent]
    policy: FusionPolicy
    retriever: Retriever | None = None
    max_rounds: int = 2
    agent_timeout_s: float | None = None
    image: LoadedImage | None = None

    @classmethod
    def checked(
        cls,
        *,
        task: Task,
        agents: Sequence[Agent],
        policy: FusionPolicy,
        retriever: Retriever | None = None,
        max_rounds: int = 2,
        agent_timeout_s: float | None = None,
    ) -> GraphContext:
        """The context of a graph over ``agents``; InputError on a setting it cannot run with.

        When no agent can look again the first assessment is the last (``max_rounds`` becomes
        1), so the policy answers or abstains there instead of being cut short untrusted.
        """
        if max_rounds < 1:
            raise InputError(f"max_rounds must be at least 1, got {max_rounds}")
        if agent_timeout_s is not None and agent_timeout_s <= 0:
            raise InputError(f"agent timeout must be positive, got {agent_timeout_s}")
        if not agents:
            raise InputError("the graph needs at least one agent")
        by_name: dict[str, Agent] = {}
        for agent in agents:
            if agent.name in by_name:
                raise InputError(f"two agents share the name '{agent.name}'")
            by_name[agent.name] = agent
        if not any(agent.can_reevaluate for agent in agents):
            max_rounds = 1
        return cls(
            task=task,
            agents=by_name,
            policy=policy,
            retriever=retriever,
            max_rounds=max_rounds,
            agent_timeout_s=agent_timeout_s,
        )

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
