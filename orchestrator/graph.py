"""The LangGraph graph of one image: perceive -> assess -> (retrieve -> reevaluate -> assess)* ->
finalize, bounded by ``max_rounds``, and the one way to run it on an image.

The nodes (``orchestrator.nodes``) and routers (``orchestrator.routers``) are module-level
functions of the state and LangGraph's run-time context (``GraphContext``); the state types are
in ``orchestrator.state``. ``build_graph`` wires them together at the bottom of this module.

``run_image`` is how every caller runs the graph: with a checkpointer, a finished thread
returns its stored decision without calling any agent and an interrupted one resumes from its
last checkpoint (written with ``durability="sync"``: a step counts as done once it is stored).

A checkpoint thread belongs to one configuration: its id is ``"<fingerprint>:<sha256>"``, the
fingerprint hashing what decides the image's answer (``configuration_fingerprint``). A graph
built with other agents, policy, task or settings never reads another setup's thread (neither
its finished decision nor its half-done state); it starts its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.base import maybe_add_typed_methods
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from agents.types import Agent, Prediction
from core.images import ImageRef
from core.task import Task
from orchestrator import nodes, routers
from orchestrator.context import GraphContext, agents_by_name
from orchestrator.decision import Decision
from orchestrator.policies.base import FusionPolicy
from orchestrator.state import (
    GraphInput,
    GraphOutput,
    GraphState,
    checkpoint_serializer,
)
from rag.retriever import Retriever


@dataclass(frozen=True)
class ImageGraph:
    """A compiled graph, the context its runs start from, and the fingerprint of its
    configuration (the namespace of its checkpoint threads)."""

    compiled: CompiledStateGraph
    context: GraphContext
    fingerprint: str

    @property
    def checkpointer(self) -> BaseCheckpointSaver | None:
        saver = self.compiled.checkpointer
        return saver if isinstance(saver, BaseCheckpointSaver) else None

    def thread_id(self, image: ImageRef) -> str:
        """The checkpoint thread of ``image`` under this graph's configuration."""
        return f"{self.fingerprint}:{image.sha256}"

    async def forget(self, image: ImageRef) -> None:
        """Delete the checkpoint thread of ``image`` (nothing without a checkpointer)."""
        if self.checkpointer is not None:
            await self.checkpointer.adelete_thread(self.thread_id(image))


def configuration_fingerprint(
    context: GraphContext, configuration: Mapping[str, Any] | None = None
) -> str:
    """16 hex digits hashing what decides an answer: the task (labels, descriptions, prompts),
    the agents (names, whether each can look again), the policy's and retriever's names, the
    rounds, and ``configuration``: what those objects cannot tell (the agents' specs and
    options, trust profile and policy file contents, the index), as JSON values."""
    described = {
        "task": context.task.model_dump(mode="json"),
        "agents": sorted((name, bool(a.can_reevaluate)) for name, a in context.agents.items()),
        "policy": getattr(context.policy, "name", type(context.policy).__name__),
        "retriever": getattr(context.retriever, "name", None) if context.retriever else None,
        "max_rounds": context.max_rounds,
        "configuration": dict(configuration) if configuration is not None else None,
    }
    text = json.dumps(described, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ImageRun:
    """What ``run_image`` did: the decision, and whether it came from a checkpoint (stored
    whole, or resumed at ``resumed_at``)."""

    decision: Decision
    from_checkpoint: bool = False
    resumed_at: tuple[str, ...] = ()


UpdateListener = Callable[[str, dict[str, Any]], None]
"""Called with (node, its partial update) as each node finishes."""


def holds_current_state(values: dict[str, Any]) -> bool:
    """Whether a checkpointed state has this version's types (older versions stored dicts)."""
    decision = values.get("decision")
    return (
        isinstance(values.get("image"), ImageRef)
        and (decision is None or isinstance(decision, Decision))
        and all(isinstance(p, Prediction) for p in values.get("predictions", ()))
    )


async def run_image(
    graph: ImageGraph,
    image: ImageRef,
    *,
    truth: str | None = None,
    thread_id: str | None = None,
    resume: bool = True,
    on_update: UpdateListener | None = None,
) -> ImageRun:
    """Decide ``image`` with ``graph`` (checkpoint thread ``graph.thread_id(image)`` unless
    ``thread_id`` is given).

    With a checkpointer and ``resume``, a finished thread gives its stored decision and an
    interrupted one resumes where it stopped; without ``resume`` the thread is cleared first.
    The image is read at most once for all agents of this run, and let go when it ends.
    """
    config = {"configurable": {"thread_id": thread_id or graph.thread_id(image)}}
    checkpointer = graph.checkpointer
    payload: GraphInput | None = {"image": image, "truth": truth}
    resumed_at: tuple[str, ...] = ()
    snapshot = None
    if checkpointer is not None and resume:
        snapshot = await graph.compiled.aget_state(config)
    if snapshot is not None and snapshot.values and holds_current_state(snapshot.values):
        if snapshot.values.get("decision") is not None:
            return ImageRun(snapshot.values["decision"], from_checkpoint=True)
        if snapshot.next:
            payload, resumed_at = None, tuple(snapshot.next)
    elif checkpointer is not None:
        # Not resuming, or a thread written by an older version (plain dicts): start afresh.
        await checkpointer.adelete_thread(config["configurable"]["thread_id"])
    final: dict[str, Any] = {}
    stream = graph.compiled.astream(
        payload,
        config,
        context=graph.context.for_image(image),
        stream_mode=["updates", "values"] if on_update else "values",
        durability="sync" if checkpointer is not None else None,
    )
    async for chunk in stream:
        if on_update is None:
            final = chunk
            continue
        mode, data = chunk
        if mode == "values":
            final = data
        else:
            for node, update in data.items():
                on_update(node, update)
    if final.get("decision") is None:
        raise RuntimeError("the graph ended without a decision")
    return ImageRun(final["decision"], from_checkpoint=bool(resumed_at), resumed_at=resumed_at)


async def classify(
    graph: ImageGraph,
    image: ImageRef,
    *,
    truth: str | None = None,
    thread_id: str | None = None,
) -> Decision:
    """The decision for ``image`` (``run_image``, resuming what a checkpointer holds)."""
    return (await run_image(graph, image, truth=truth, thread_id=thread_id)).decision


def with_state_types(checkpointer: Any) -> Any:
    """``checkpointer`` loading only LangGraph's safe types and the state's own
    (``orchestrator.state.CHECKPOINTED_TYPES``): a shallow copy sharing its storage."""
    if not isinstance(checkpointer, BaseCheckpointSaver):
        return checkpointer
    if not isinstance(checkpointer.serde, JsonPlusSerializer):
        return checkpointer  # a serializer of the caller's choosing (encrypted, ...) is kept
    strict = copy.copy(checkpointer)
    strict.serde = maybe_add_typed_methods(checkpoint_serializer())
    return strict


def in_loop(router: Callable[[GraphState, Runtime[GraphContext]], Any]) -> Callable[..., Any]:
    """``router`` as a coroutine function: LangGraph runs a plain function of an async graph in
    a worker thread, a hand-off that costs more than the routing itself."""

    async def route(state: GraphState, runtime: Runtime[GraphContext]) -> Any:
        return router(state, runtime)

    route.__name__ = route.__qualname__ = router.__name__
    return route


def build_graph(
    *,
    task: Task,
    agents: Sequence[Agent],
    policy: FusionPolicy,
    retriever: Retriever | None = None,
    max_rounds: int = 2,
    agent_timeout_s: float | None = None,
    checkpointer: Any = None,
    configuration: Mapping[str, Any] | None = None,
) -> ImageGraph:
    """The orchestration graph for ``task`` over ``agents`` (run it with ``run_image``).

    When no agent can look again the first assessment is the last (``max_rounds`` becomes 1),
    so the policy answers or abstains there instead of being cut short with an untrusted label.
    ``configuration`` (JSON values) is what else decides the answers, for the fingerprint of
    the checkpoint threads (``configuration_fingerprint``).
    """
    by_name = agents_by_name(agents)
    if max_rounds >= 1 and not any(a.can_reevaluate for a in by_name.values()):
        max_rounds = 1
    context = GraphContext(task, by_name, policy, retriever, max_rounds, agent_timeout_s)
    builder = StateGraph(
        GraphState,
        context_schema=GraphContext,
        input_schema=GraphInput,
        output_schema=GraphOutput,
    )
    builder.add_node("perceive", nodes.perceive)
    builder.add_node("assess", nodes.assess)
    builder.add_node("retrieve", nodes.retrieve)
    builder.add_node("reevaluate", nodes.reevaluate)
    builder.add_node("finalize", nodes.finalize)
    builder.add_conditional_edges(START, in_loop(routers.first_looks), ["perceive"])
    builder.add_edge("perceive", "assess")
    builder.add_conditional_edges(
        "assess", in_loop(routers.after_assess), ["finalize", "retrieve", "reevaluate"]
    )
    builder.add_conditional_edges(
        "retrieve", in_loop(routers.after_retrieve), ["assess", "reevaluate"]
    )
    builder.add_edge("reevaluate", "assess")
    builder.add_edge("finalize", END)
    compiled = builder.compile(checkpointer=with_state_types(checkpointer))
    return ImageGraph(
        compiled=compiled,
        context=context,
        fingerprint=configuration_fingerprint(context, configuration),
    )
