"""The graph's nodes and routers one at a time, outside any graph: each is a function of a state
and a run-time context; and the state's typed values survive a SQLite checkpoint."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.runtime import Runtime
from langgraph.types import Send
from test_orchestrator_graph import CrashingPolicy, NeverTrusted, RaisingAgent

from agents.types import Neighbour, Prediction
from core.images import ImageRef, LoadedImage
from orchestrator import nodes, routers
from orchestrator.context import GraphContext, agents_by_name
from orchestrator.decision import Assessment, Decision
from orchestrator.graph import build_graph, classify
from orchestrator.replay.agent import ReplayAgent
from orchestrator.state import GraphState, Route
from rag.evidence import Evidence

IMAGE = ImageRef(source="leaves/rust-1.JPG", sha256="a" * 64)


def replay(name: str, label: str, confidence: float) -> ReplayAgent:
    answers = {
        0: Prediction(agent=name, label=label, confidence=confidence),
        1: Prediction(agent=name, label="rust", confidence=0.9, round=1),
    }
    return ReplayAgent(name=name, answers={"row": answers}, keys={IMAGE.sha256: "row"})


class BrokenRetriever:
    """FAKE retriever whose index is gone."""

    name = "rag"

    async def retrieve(self, image, task) -> Evidence:
        raise OSError("index missing")


class OneVoteRetriever:
    """FAKE retriever: one neighbour labelled rust."""

    name = ""

    async def retrieve(self, image, task) -> Evidence:
        return Evidence(neighbours=(Neighbour("n1", "rust", 0.8),), vote={"rust": 1.0})


def context(apple_task, policy=None, retriever=None, max_rounds=2, agents=None) -> GraphContext:
    return GraphContext(
        task=apple_task,
        agents=agents_by_name(agents or [replay("gpt", "scab", 0.6), replay("qwen", "rust", 0.7)]),
        policy=policy or NeverTrusted(),
        retriever=retriever,
        max_rounds=max_rounds,
    )


def verdict(trusted: bool, reevaluate=("gpt", "qwen"), round_: int = 0) -> Assessment:
    return Assessment(
        policy="never",
        round=round_,
        scores={"rust": 1.0},
        label="rust",
        confidence=0.7,
        trusted=trusted,
        reevaluate=list(reevaluate),
        reason="because",
    )


def state_after_first_look(**extra) -> GraphState:
    return {
        "image": IMAGE,
        "round": 0,
        "predictions": [
            Prediction(agent="gpt", label="scab", confidence=0.6),
            Prediction(agent="qwen", label="rust", confidence=0.7),
        ],
        "assessments": [verdict(False)],
        "routes": [],
        **extra,
    }


def test_routes_after_assess(apple_task):
    with_retriever = context(apple_task, retriever=OneVoteRetriever())
    trusted = state_after_first_look(assessments=[verdict(True)])
    assert routers.route_after_assess(trusted, with_retriever) == Route(
        "assess", 0, "finalize", "trusted: because"
    )
    assert routers.route_after_assess(state_after_first_look(), with_retriever).to == "retrieve"
    retrieved = state_after_first_look(routes=[Route("assess", 0, "retrieve", "r")])
    route = routers.route_after_assess(retrieved, with_retriever)
    assert route == Route("assess", 0, "reevaluate", "not trusted: re-evaluate", ["gpt", "qwen"])
    last = state_after_first_look(round=1)
    assert routers.route_after_assess(last, context(apple_task)).reason == "rounds exhausted (2)"
    nobody = state_after_first_look(assessments=[verdict(False, reevaluate=["ghost"])])
    assert routers.route_after_assess(nobody, context(apple_task)).reason == (
        "not trusted, but no agent can look again"
    )


def test_reevaluation_fans_out_with_the_route_on_the_first_call_only(apple_task):
    runtime = Runtime(context=context(apple_task))
    sends = routers.after_assess(state_after_first_look(), runtime)
    assert isinstance(sends, list) and all(isinstance(s, Send) for s in sends)
    assert [s.arg["agent"] for s in sends] == ["gpt", "qwen"]
    assert [s.arg["round"] for s in sends] == [1, 1]
    assert sends[0].arg["route"].to == "reevaluate" and sends[1].arg["route"] is None
    assert sends[0].arg["previous"].label == "scab"


def test_assess_node_records_the_route_it_was_reached_by(apple_task):
    policy = CrashingPolicy()
    runtime = Runtime(context=context(apple_task, policy=NeverTrusted()))
    first = asyncio.run(nodes.assess(state_after_first_look(assessments=[]), runtime))
    assert isinstance(first["assessments"][0], Assessment) and "routes" not in first
    evidence = Evidence(neighbours=(), vote={"rust": 1.0})
    after_retrieval = state_after_first_look(
        evidence=evidence, routes=[Route("assess", 0, "retrieve", "not trusted")]
    )
    runtime = Runtime(context=context(apple_task, policy=policy, retriever=OneVoteRetriever()))
    with pytest.raises(RuntimeError, match="killed"):
        asyncio.run(nodes.assess(after_retrieval, runtime))
    update = asyncio.run(nodes.assess(after_retrieval, Runtime(context=context(apple_task))))
    assert update["routes"] == [Route("retrieve", 0, "reevaluate", "re-evaluate", ["gpt", "qwen"])]


def test_retrieve_node_keeps_a_failure_and_names_the_evidence(apple_task):
    runtime = Runtime(context=context(apple_task, retriever=BrokenRetriever()))
    update = asyncio.run(nodes.retrieve(state_after_first_look(), runtime))
    assert update["evidence"] is None and update["retrieval_error"] == "OSError: index missing"
    assert update["routes"][0].to == "retrieve"
    failed = state_after_first_look(**update)
    route = routers.route_after_retrieve(failed, runtime.context)
    assert route.reason == "retrieval failed (OSError: index missing); re-evaluate"
    runtime = Runtime(context=context(apple_task, retriever=OneVoteRetriever()))
    update = asyncio.run(nodes.retrieve(state_after_first_look(), runtime))
    assert update["evidence"].retriever == "retrieval" and update["retrieval_error"] is None


def test_agent_nodes_turn_a_raising_agent_into_a_failure(apple_task):
    ctx = context(apple_task, agents=[RaisingAgent(), replay("gpt", "scab", 0.6)])
    ctx = ctx.for_image(IMAGE)
    call = routers.agent_call({"image": IMAGE, "predictions": []}, "raiser", 0)
    update = asyncio.run(nodes.perceive(call, Runtime(context=ctx)))
    (failure,) = update["predictions"]
    assert not failure.ok and failure.error == "raised RuntimeError: model exploded"
    assert isinstance(ctx.image_of(IMAGE), LoadedImage) and ctx.image_of(IMAGE).ref == IMAGE


def test_finalize_node_builds_the_decision_and_its_notes(apple_task):
    state = state_after_first_look(
        round=1, routes=[Route("assess", 0, "reevaluate", "not trusted: re-evaluate", ["gpt"])]
    )
    state["predictions"] = [*state["predictions"], Prediction.failure("gpt", "down", round=1)]
    update = nodes.finalize(state, Runtime(context=context(apple_task)))
    decision = update["decision"]
    assert isinstance(decision, Decision) and decision.rounds_used == 2
    assert decision.notes == [
        "round 0: assess -> reevaluate ['gpt']: not trusted: re-evaluate",
        "round 1: assess -> finalize: rounds exhausted (2)",
        "round 1: agent gpt failed: down",
    ]
    assert update["routes"] == [Route("assess", 1, "finalize", "rounds exhausted (2)")]


def test_checkpoints_load_back_the_same_types(apple_task, tmp_path: Path, caplog):
    async def run() -> tuple[Decision, dict]:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "c.sqlite")) as saver:
            graph = build_graph(
                task=apple_task,
                agents=[replay("gpt", "scab", 0.6), replay("qwen", "rust", 0.7)],
                policy=NeverTrusted(),
                retriever=OneVoteRetriever(),
                checkpointer=saver,
            )
            decision = await classify(graph, IMAGE)
            thread = graph.thread_id(IMAGE)
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "c.sqlite")) as saver:
            graph = build_graph(
                task=apple_task,
                agents=[replay("gpt", "scab", 0.6)],
                policy=NeverTrusted(),
                checkpointer=saver,
            )
            snapshot = await graph.compiled.aget_state({"configurable": {"thread_id": thread}})
        return decision, snapshot.values

    with caplog.at_level(logging.WARNING):
        decision, values = asyncio.run(run())
    assert not [r for r in caplog.records if "msgpack" in r.getMessage().lower()]
    assert isinstance(values["image"], ImageRef)
    assert all(isinstance(p, Prediction) for p in values["predictions"])
    assert all(isinstance(a, Assessment) for a in values["assessments"])
    assert all(isinstance(r, Route) for r in values["routes"])
    assert isinstance(values["evidence"], Evidence)
    assert isinstance(values["evidence"].neighbours[0], Neighbour)
    assert values["decision"] == decision and decision.rounds_used == 2


def test_to_dict_gives_what_asdict_gives_and_shares_no_container() -> None:
    import dataclasses

    from orchestrator.decision import Assessment, Decision

    answers = [
        Prediction(agent="a", label="rust", confidence=0.8, scores={"rust": 0.8, "scab": 0.2}),
        Prediction.failure("b", "timed out", round=1, latency_s=2.0),
    ]
    verdict = Assessment(
        policy="trust",
        round=1,
        scores={"rust": 0.7, "scab": 0.3},
        label="rust",
        confidence=0.7,
        trusted=True,
        weights={"a": 1.0},
        reevaluate=["b"],
        prediction_set=["rust"],
        reason="trusted",
    )
    decision = Decision(
        image="leaf.png",
        sha256="0" * 64,
        task="apple-leaf",
        policy="trust",
        label="rust",
        confidence=0.7,
        prediction_set=["rust"],
        rounds_used=2,
        predictions=answers,
        assessments=[verdict],
        evidence={"neighbours": [{"id": "x", "label": "rust"}], "retriever": "rag"},
        weights={"a": 1.0},
        notes=["round 1: agent b failed: timed out"],
    )
    for thing in (*answers, verdict, decision):
        assert thing.to_dict() == dataclasses.asdict(thing)
    out = decision.to_dict()
    out["evidence"]["neighbours"].append({})
    out["predictions"][0]["scores"]["rust"] = 0.0
    out["notes"].append("changed")
    assert decision.to_dict() == dataclasses.asdict(decision)
