"""The LangGraph graph of one image: perceive -> assess -> (retrieve -> reevaluate -> assess)* ->
finalize, bounded by ``max_rounds``.

Agents, policy and retriever are closed over by the nodes, never put in the state. Each node
returns a partial update; the routing choice and its reason are recorded by the node that makes
it (``routes``) and read back by the small router functions. The wiring sits at the bottom.

The policy gets every answer so far (all rounds, oldest first); it picks what it fuses. A policy
with ``assess_after_retrieval = True`` (the ``trust`` policy) is asked again once the retrieval
evidence is in, before any agent is re-evaluated: retrieval is cheap, a second look by a VLM is
not. Other policies (the study's flow) go from retrieval straight to re-evaluation.

Retrieval is not a round: with ``max_rounds=1`` a policy that assesses the evidence still gets
it. An agent that raises or outlives ``agent_timeout_s`` becomes a ``Prediction.failure`` in the
trace; the policy decides from the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Send

from agents.types import RETRIEVAL_AGENT, Agent, Prediction
from core.errors import InputError
from core.images import ImageRef
from core.task import Task
from orchestrator.decision import Assessment, Decision
from orchestrator.policies.base import FusionPolicy
from orchestrator.state import AgentCall, GraphInput, GraphOutput, GraphState
from rag.evidence import Evidence
from rag.retriever import Retriever

Step = Literal["finalize", "retrieve", "reevaluate", "assess"]


def answers_so_far(predictions: Sequence[dict[str, Any]]) -> list[Prediction]:
    """Every answer of every round, oldest round first (agents in the order they answered)."""
    return sorted((Prediction.from_dict(p) for p in predictions), key=lambda p: p.round)


def _critical_path_latency(state: GraphState) -> float:
    """Agents of one round run in parallel: sum over rounds of the slowest answer, plus the
    policy's and the retriever's time."""
    per_round: dict[int, float] = {}
    for p in state["predictions"]:
        per_round[p["round"]] = max(per_round.get(p["round"], 0.0), float(p["latency_s"]))
    policy = sum(float(a["latency_s"]) for a in state["assessments"])
    return sum(per_round.values()) + policy + float(state.get("evidence_latency_s", 0.0))


def build_graph(
    *,
    task: Task,
    agents: Sequence[Agent],
    policy: FusionPolicy,
    retriever: Retriever | None = None,
    max_rounds: int = 2,
    agent_timeout_s: float | None = None,
    checkpointer: Any = None,
) -> CompiledStateGraph:
    """Compile the orchestration graph for ``task`` (input: ``GraphInput``; output:
    ``{"decision": Decision.to_dict()}``)."""
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
    assess_after_retrieval = bool(getattr(policy, "assess_after_retrieval", False))
    if not any(agent.can_reevaluate for agent in agents):
        # Nobody can look again: the first assessment is the last, so the policy answers or
        # abstains there instead of being cut short with an untrusted label.
        max_rounds = 1

    def agent_call(state: GraphState, name: str, round_: int) -> AgentCall:
        previous = next(
            (p for p in reversed(state.get("predictions", [])) if p["agent"] == name), None
        )
        return {
            "image": state["image"],
            "agent": name,
            "round": round_,
            "previous": previous,
            "evidence": state.get("evidence") if round_ > 0 else None,
        }

    async def call_agent(call: AgentCall) -> dict[str, Any]:
        name, round_ = call["agent"], call["round"]
        agent = by_name[name]
        previous = Prediction.from_dict(call["previous"]) if call["previous"] else None
        evidence = Evidence.from_dict(call["evidence"]) if call["evidence"] else None
        start = time.perf_counter()
        try:
            answer = agent.predict(
                ImageRef(**call["image"]), task, round=round_, previous=previous, evidence=evidence
            )
            pred = await asyncio.wait_for(answer, agent_timeout_s)
        except TimeoutError:
            pred = Prediction.failure(
                name,
                f"timed out after {agent_timeout_s} s",
                round=round_,
                latency_s=time.perf_counter() - start,
            )
        except Exception as e:
            pred = Prediction.failure(
                name,
                f"raised {type(e).__name__}: {e}",
                round=round_,
                latency_s=time.perf_counter() - start,
            )
        if pred.agent != name or pred.round != round_:
            pred = dataclasses.replace(pred, agent=name, round=round_)
        return {"predictions": [pred.to_dict()]}

    def route(after: str, round_: int, to: Step, reason: str, names: Sequence[str] = ()) -> dict:
        return {"after": after, "round": round_, "to": to, "agents": list(names), "reason": reason}

    def next_step(state: GraphState, assessment: Assessment, round_: int) -> dict[str, Any]:
        if assessment.trusted:
            return route("assess", round_, "finalize", f"trusted: {assessment.reason}")
        last_round = round_ >= max_rounds - 1
        retrieved = any(r["to"] == "retrieve" for r in state.get("routes", []))
        if retriever is not None and not retrieved and (assess_after_retrieval or not last_round):
            return route("assess", round_, "retrieve", "not trusted: retrieve evidence")
        if last_round:
            return route("assess", round_, "finalize", f"rounds exhausted ({max_rounds})")
        names = [n for n in assessment.reevaluate if n in by_name and by_name[n].can_reevaluate]
        if not names:
            return route("assess", round_, "finalize", "not trusted, but no agent can look again")
        return route("assess", round_, "reevaluate", "not trusted: re-evaluate", names)

    # --- nodes ---------------------------------------------------------------------------

    async def perceive(call: AgentCall) -> dict[str, Any]:
        return await call_agent(call)

    async def reevaluate(call: AgentCall) -> dict[str, Any]:
        return await call_agent(call)

    async def assess(state: GraphState) -> dict[str, Any]:
        round_ = max(p["round"] for p in state["predictions"])
        evidence = Evidence.from_dict(state["evidence"]) if state.get("evidence") else None
        start = time.perf_counter()
        assessment = await policy.assess(
            task=task,
            predictions=answers_so_far(state["predictions"]),
            evidence=evidence,
            round=round_,
            max_rounds=max_rounds,
        )
        if assessment.latency_s == 0.0:
            assessment = dataclasses.replace(assessment, latency_s=time.perf_counter() - start)
        return {
            "round": round_,
            "assessments": [assessment.to_dict()],
            "routes": [next_step(state, assessment, round_)],
        }

    async def retrieve(state: GraphState) -> dict[str, Any]:
        assert retriever is not None
        round_ = state.get("round", 0)
        start = time.perf_counter()
        try:
            found = await retriever.retrieve(ImageRef(**state["image"]), task)
            if not found.retriever:
                found = dataclasses.replace(
                    found, retriever=str(getattr(retriever, "name", "") or RETRIEVAL_AGENT)
                )
            evidence: dict[str, Any] | None = found.to_dict()
            failed = ""
        except Exception as e:
            evidence, failed = None, f"retrieval failed ({type(e).__name__}: {e}); "
        latency = time.perf_counter() - start
        last = Assessment(**state["assessments"][-1])
        names = [n for n in last.reevaluate if n in by_name and by_name[n].can_reevaluate]
        if assess_after_retrieval and evidence is not None:
            step = route("retrieve", round_, "assess", "assess again with the evidence")
        elif names:
            step = route("retrieve", round_, "reevaluate", f"{failed}re-evaluate", names)
        else:
            step = route("retrieve", round_, "assess", f"{failed}no agent can look again")
        return {"evidence": evidence, "evidence_latency_s": latency, "routes": [step]}

    def finalize(state: GraphState) -> dict[str, Any]:
        last = Assessment(**state["assessments"][-1])
        predictions = [Prediction.from_dict(p) for p in state["predictions"]]
        notes = [
            f"round {r['round']}: {r['after']} -> {r['to']}"
            + (f" {r['agents']}" if r["agents"] else "")
            + f": {r['reason']}"
            for r in state.get("routes", [])
        ]
        notes += [
            f"round {p.round}: agent {p.agent} failed: {p.error}" for p in predictions if not p.ok
        ]
        decision = Decision(
            image=state["image"]["source"],
            sha256=state["image"]["sha256"],
            task=task.name,
            policy=last.policy,
            label=last.label,
            confidence=float(last.confidence),
            prediction_set=list(last.prediction_set),
            rounds_used=1 + max(p.round for p in predictions),
            predictions=predictions,
            assessments=[Assessment(**a) for a in state["assessments"]],
            evidence=state.get("evidence"),
            weights=dict(last.weights),
            cost_usd=sum(p.cost_usd for p in predictions)
            + sum(float(a["cost_usd"]) for a in state["assessments"]),
            latency_s=_critical_path_latency(state),
            truth=state.get("truth"),
            notes=notes,
        )
        return {"decision": decision.to_dict()}

    # --- routers -------------------------------------------------------------------------

    def fan_out_perceive(state: GraphState) -> list[Send]:
        return [Send("perceive", agent_call(state, name, 0)) for name in by_name]

    def after_assess(state: GraphState) -> Literal["finalize", "retrieve"] | list[Send]:
        step = state["routes"][-1]
        if step["to"] == "reevaluate":
            return [
                Send("reevaluate", agent_call(state, n, step["round"] + 1)) for n in step["agents"]
            ]
        return step["to"]

    def after_retrieve(state: GraphState) -> Literal["assess"] | list[Send]:
        step = state["routes"][-1]
        if step["to"] == "reevaluate":
            return [
                Send("reevaluate", agent_call(state, n, step["round"] + 1)) for n in step["agents"]
            ]
        return "assess"

    # --- wiring --------------------------------------------------------------------------

    builder = StateGraph(GraphState, input_schema=GraphInput, output_schema=GraphOutput)
    builder.add_node("perceive", perceive)
    builder.add_node("assess", assess)
    builder.add_node("retrieve", retrieve)
    builder.add_node("reevaluate", reevaluate)
    builder.add_node("finalize", finalize)
    builder.add_conditional_edges(START, fan_out_perceive, ["perceive"])
    builder.add_edge("perceive", "assess")
    builder.add_conditional_edges("assess", after_assess, ["finalize", "retrieve", "reevaluate"])
    builder.add_conditional_edges("retrieve", after_retrieve, ["assess", "reevaluate"])
    builder.add_edge("reevaluate", "assess")
    builder.add_edge("finalize", END)
    return builder.compile(checkpointer=checkpointer)


async def classify(
    graph: CompiledStateGraph,
    image: ImageRef,
    *,
    truth: str | None = None,
    thread_id: str | None = None,
) -> Decision:
    """Run ``graph`` on one image (thread id = the image's sha256 unless given).

    With a checkpointer, a finished thread returns its stored decision without calling any
    agent, and an interrupted one resumes from its last checkpoint.
    """
    config = {"configurable": {"thread_id": thread_id or image.sha256}}
    if graph.checkpointer:
        snapshot = await graph.aget_state(config)
        if snapshot.values.get("decision") is not None:
            return Decision.from_dict(snapshot.values["decision"])
        if snapshot.next:
            result = await graph.ainvoke(None, config)
            return Decision.from_dict(result["decision"])
    payload: GraphInput = {"image": {"source": image.source, "sha256": image.sha256}}
    if truth is not None:
        payload["truth"] = truth
    result = await graph.ainvoke(payload, config)
    return Decision.from_dict(result["decision"])
