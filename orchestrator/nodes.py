"""The graph's nodes: module-level functions of (state, runtime) that return a partial update.

The run-time context (``runtime.context``, a ``GraphContext``) carries the agents, policy and
retriever. Nodes never choose where the graph goes (``orchestrator.routers`` does); a node
records in ``routes`` the choice that led to it, so the trace reads in the order it was taken.

An agent that raises or outlives ``agent_timeout_s`` becomes a ``Prediction.failure``; the
policy decides from the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from langgraph.runtime import Runtime

from agents.types import RETRIEVAL_AGENT, Prediction
from core.redact import redact_url
from orchestrator.context import GraphContext
from orchestrator.decision import Decision
from orchestrator.routers import route_after_assess, route_after_retrieve
from orchestrator.state import AgentCall, GraphState


def answers_so_far(predictions: Sequence[Prediction]) -> list[Prediction]:
    """Every answer of every round, oldest round first (agents in the order they answered)."""
    return sorted(predictions, key=lambda p: p.round)


async def perceive(call: AgentCall, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """One agent's first look."""
    return await _ask_agent(call, runtime.context)


async def reevaluate(call: AgentCall, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """One agent's second look, with its previous answer and the evidence."""
    update = await _ask_agent(call, runtime.context)
    if call["route"] is not None:
        update["routes"] = [call["route"]]
    return update


async def _ask_agent(call: AgentCall, context: GraphContext) -> dict[str, Any]:
    name, round_ = call["agent"], call["round"]
    start = time.perf_counter()
    try:
        answer = context.agents[name].predict(
            context.image_of(call["image"]),
            context.task,
            round=round_,
            previous=call["previous"],
            evidence=call["evidence"],
        )
        prediction = await asyncio.wait_for(answer, context.agent_timeout_s)
    except Exception as e:
        why = (
            f"timed out after {context.agent_timeout_s} s"
            if isinstance(e, TimeoutError)
            else f"raised {type(e).__name__}: {e}"
        )
        prediction = Prediction.failure(
            name, why, round=round_, latency_s=time.perf_counter() - start
        )
    if prediction.agent != name or prediction.round != round_:
        prediction = dataclasses.replace(prediction, agent=name, round=round_)
    return {"predictions": [prediction]}


async def assess(state: GraphState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """The policy's verdict on every answer so far (and the evidence, once retrieved)."""
    context = runtime.context
    round_ = max(p.round for p in state["predictions"])
    start = time.perf_counter()
    assessment = await context.policy.assess(
        task=context.task,
        predictions=answers_so_far(state["predictions"]),
        evidence=state.get("evidence"),
        round=round_,
        max_rounds=context.max_rounds,
    )
    if assessment.latency_s == 0.0:
        assessment = dataclasses.replace(assessment, latency_s=time.perf_counter() - start)
    update: dict[str, Any] = {"round": round_, "assessments": [assessment]}
    routes = state.get("routes", [])
    if routes and routes[-1].to == "retrieve":
        # Reached from retrieval (which goes on to re-evaluation or here): record that choice.
        update["routes"] = [route_after_retrieve(state, context)]
    return update


async def retrieve(state: GraphState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """The retriever's evidence for the image (None, with the error kept, when it fails)."""
    context = runtime.context
    retriever = context.retriever
    if retriever is None:
        raise RuntimeError("the retrieve node ran in a graph without a retriever")
    start = time.perf_counter()
    evidence, error = None, None
    try:
        evidence = await retriever.retrieve(context.image_of(state["image"]), context.task)
        if not evidence.retriever:
            name = str(getattr(retriever, "name", "") or RETRIEVAL_AGENT)
            evidence = dataclasses.replace(evidence, retriever=name)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    return {
        "evidence": evidence,
        "evidence_latency_s": time.perf_counter() - start,
        "retrieval_error": error,
        "routes": [route_after_assess(state, context)],
    }


def finalize(state: GraphState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """The decision: the last assessment's answer, with every answer, verdict and route."""
    context = runtime.context
    routes = [*state.get("routes", []), route_after_assess(state, context)]
    last = state["assessments"][-1]
    predictions = state["predictions"]
    notes = [route.note() for route in routes]
    notes += [
        f"round {p.round}: agent {p.agent} failed: {p.error}" for p in predictions if not p.ok
    ]
    evidence = state.get("evidence")
    decision = Decision(
        image=redact_url(state["image"].source),  # a signed URL's signature is a secret
        sha256=state["image"].sha256,
        task=context.task.name,
        policy=last.policy,
        label=last.label,
        confidence=float(last.confidence),
        prediction_set=list(last.prediction_set),
        rounds_used=1 + max(p.round for p in predictions),
        predictions=list(predictions),
        assessments=list(state["assessments"]),
        evidence=evidence.to_dict() if evidence is not None else None,
        weights=dict(last.weights),
        cost_usd=sum(p.cost_usd for p in predictions)
        + sum(a.cost_usd for a in state["assessments"]),
        latency_s=critical_path_latency(state),
        truth=state.get("truth"),
        notes=notes,
    )
    return {"routes": routes[-1:], "decision": decision}


def critical_path_latency(state: GraphState) -> float:
    """Agents of one round run in parallel: sum over rounds of the slowest answer, plus the
    policy's and the retriever's time."""
    per_round: dict[int, float] = {}
    for p in state["predictions"]:
        per_round[p.round] = max(per_round.get(p.round, 0.0), p.latency_s)
    policy = sum(a.latency_s for a in state["assessments"])
    return sum(per_round.values()) + policy + float(state.get("evidence_latency_s", 0.0))
