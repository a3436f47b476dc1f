"""Where the graph goes next, and why: pure functions of the state and the run-time context.

``route_after_assess`` and ``route_after_retrieve`` make each choice and give its reason (a
``Route``); the LangGraph routers ``after_assess`` and ``after_retrieve`` turn it into the next
node or the ``Send`` of each agent asked to look again. The node a route leads to records it in
the state (see ``orchestrator.nodes``), so the decision's notes list every choice in order.

The policy's ``assess_after_retrieval`` says whether it is asked again once the evidence is in,
before any agent looks again (retrieval is cheap, a second VLM look is not); retrieval is not a
round, so with ``max_rounds=1`` such a policy still gets the evidence.
"""

from __future__ import annotations

from typing import Literal

from langgraph.runtime import Runtime
from langgraph.types import Send

from orchestrator.context import GraphContext
from orchestrator.state import AgentCall, GraphState, Route


def route_after_assess(state: GraphState, context: GraphContext) -> Route:
    """After the latest assessment: finalize when trusted or out of rounds, else retrieve once
    (when there is a retriever and it can still help), else re-evaluate the agents it names."""
    assessment = state["assessments"][-1]
    round_ = state.get("round", 0)
    if assessment.trusted:
        return Route("assess", round_, "finalize", f"trusted: {assessment.reason}")
    last_round = round_ >= context.max_rounds - 1
    retrieved = any(r.to == "retrieve" for r in state.get("routes", []))
    after_retrieval = context.policy.assess_after_retrieval
    if context.retriever is not None and not retrieved and (after_retrieval or not last_round):
        return Route("assess", round_, "retrieve", "not trusted: retrieve evidence")
    if last_round:
        return Route("assess", round_, "finalize", f"rounds exhausted ({context.max_rounds})")
    names = context.can_look_again(assessment.reevaluate)
    if not names:
        return Route("assess", round_, "finalize", "not trusted, but no agent can look again")
    return Route("assess", round_, "reevaluate", "not trusted: re-evaluate", names)


def route_after_retrieve(state: GraphState, context: GraphContext) -> Route:
    """After retrieval: assess again with the evidence (a policy that wants it), else
    re-evaluate the agents the last assessment named, else assess without anyone looking again."""
    round_ = state.get("round", 0)
    names = context.can_look_again(state["assessments"][-1].reevaluate)
    failed = retrieval_failure(state)
    if context.policy.assess_after_retrieval and state.get("evidence") is not None:
        return Route("retrieve", round_, "assess", "assess again with the evidence")
    if names:
        return Route("retrieve", round_, "reevaluate", f"{failed}re-evaluate", names)
    return Route("retrieve", round_, "assess", f"{failed}no agent can look again")


def after_assess(
    state: GraphState, runtime: Runtime[GraphContext]
) -> Literal["finalize", "retrieve"] | list[Send]:
    route = route_after_assess(state, runtime.context)
    if route.to == "reevaluate":
        return reevaluation_sends(state, route)
    return "finalize" if route.to == "finalize" else "retrieve"


def after_retrieve(
    state: GraphState, runtime: Runtime[GraphContext]
) -> Literal["assess"] | list[Send]:
    route = route_after_retrieve(state, runtime.context)
    if route.to == "reevaluate":
        return reevaluation_sends(state, route)
    return "assess"


def first_looks(state: GraphState, runtime: Runtime[GraphContext]) -> list[Send]:
    """Every agent's first look, in parallel."""
    return [Send("perceive", agent_call(state, name, 0)) for name in runtime.context.agents]


def reevaluation_sends(state: GraphState, route: Route) -> list[Send]:
    """One ``Send`` per agent of ``route``; the first carries the route so it is recorded once."""
    return [
        Send("reevaluate", agent_call(state, name, route.round + 1, route if i == 0 else None))
        for i, name in enumerate(route.agents)
    ]


def agent_call(state: GraphState, name: str, round_: int, route: Route | None = None) -> AgentCall:
    """The payload of agent ``name``'s call in ``round_``: its previous answer, and the
    evidence once retrieved (not on the first look)."""
    previous = next((p for p in reversed(state.get("predictions", [])) if p.agent == name), None)
    return {
        "image": state["image"],
        "agent": name,
        "round": round_,
        "previous": previous,
        "evidence": state.get("evidence") if round_ > 0 else None,
        "route": route,
    }


def retrieval_failure(state: GraphState) -> str:
    """The retrieval error as a note prefix (empty when it did not fail)."""
    error = state.get("retrieval_error")
    return f"retrieval failed ({error}); " if error else ""
