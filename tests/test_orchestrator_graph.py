"""The LangGraph graph: replay agents, the loop bound, failing agents, SQLite checkpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from agents.types import Prediction
from core.errors import InputError
from core.images import ImageRef
from core.task import Task
from eval.recorded.records import read_records
from orchestrator.decision import Assessment, Decision
from orchestrator.graph import build_graph, classify
from orchestrator.policies.trust import TrustPolicy
from orchestrator.replay.agent import ReplayAgent, recorded_images
from orchestrator.replay.retriever import RecordedRetriever
from orchestrator.replay.run import replay_columns
from rag.evidence import Evidence

WIDE = (
    "id,image,category,qwen_initial_pred,qwen_initial_conf,qwen_pred,qwen_conf,"
    "gpt_initial_pred,gpt_initial_conf,gpt_pred,gpt_conf,rag_pred,rag_conf,rag_scores_json\n"
    "1,rust-1.JPG,rust,scab,0.9,rust,0.8,scab,0.85,rust,0.9,rust,1.0,\n"
    "2,scab-2.JPG,scab,healthy,0.95,scab,0.85,scab,0.9,scab,0.95,scab,0.7,\n"
    "3,healthy-3.JPG,healthy,healthy,1.0,healthy,1.0,healthy,0.95,healthy,0.95,healthy,1.0,\n"
)


class NeverTrusted:
    """A test policy that never trusts and asks every agent to look again."""

    name = "never"
    assess_after_retrieval = False

    def __init__(self) -> None:
        self.rounds: list[tuple[int, bool]] = []

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment:
        self.rounds.append((round, evidence is not None))
        ok = [p for p in predictions if p.ok]
        label = ok[-1].label if ok else None
        return Assessment(
            policy=self.name,
            round=round,
            scores={y: float(y == label) for y in task.labels},
            label=label,
            confidence=1.0 if label else 0.0,
            trusted=False,
            reevaluate=sorted({p.agent for p in predictions}),
            reason="never trusted",
        )


class CrashingPolicy(NeverTrusted):
    """Raises once the evidence is in: a stand-in for a run killed mid-image."""

    assess_after_retrieval = True

    async def assess(self, **kwargs) -> Assessment:
        if kwargs["evidence"] is not None:
            raise RuntimeError("killed")
        return await super().assess(**kwargs)


class RaisingAgent:
    """A test agent that breaks its contract and raises."""

    name = "raiser"
    can_reevaluate = False

    async def predict(self, image, task, **kwargs) -> Prediction:
        raise RuntimeError("model exploded")


class SleepingAgent:
    """A test agent slower than any timeout."""

    name = "sleeper"
    can_reevaluate = False

    async def predict(self, image, task, **kwargs) -> Prediction:
        await asyncio.sleep(30)
        return Prediction(agent=self.name, label=task.labels[0], confidence=1.0)


@pytest.fixture
def wide_file(tmp_path: Path) -> Path:
    path = tmp_path / "wide.csv"
    path.write_text(WIDE, encoding="utf-8")
    return path


def replay_parts(path: Path, task: Task):
    records = read_records(path, task=task)
    agents = [ReplayAgent.from_records(records, a) for a in ("qwen", "gpt")]
    return records, agents, RecordedRetriever.from_records(records)


def test_graph_with_replay_agents_on_case3(paper_dir: Path, apple_task: Task):
    path = paper_dir / "case3_trust_rag.csv"
    records, agents, retriever = replay_parts(path, apple_task)
    columns, retrieval = replay_columns(records)
    policy = TrustPolicy(retrieval_source=retrieval, seed=0).fit(records, columns)
    graph = build_graph(task=apple_task, agents=agents, policy=policy, retriever=retriever)
    images = recorded_images(path, records=records)

    async def run_all() -> list[Decision]:
        return list(
            await asyncio.gather(*(classify(graph, li.image, truth=li.truth) for li in images))
        )

    decisions = asyncio.run(run_all())
    accuracy = sum(d.label == d.truth for d in decisions) / len(decisions)
    assert accuracy >= 0.97  # fitted on these rows: an in-sample sanity check, not the benchmark
    assert retriever.calls == 160  # the trust policy always wants the cheap evidence first
    reevaluated = [d for d in decisions if d.reevaluated]
    assert 0 < len(reevaluated) <= 40
    assert sum(a.calls for a in agents) == 2 * 160 + 2 * len(reevaluated)
    d = reevaluated[0]
    assert [p.round for p in d.predictions] == [0, 0, 1, 1]
    assert d.evidence is not None and d.evidence["vote_rule"] == "recorded"
    assert len(d.assessments) == 3 and d.rounds_used == 2
    assert any("assess -> reevaluate" in n for n in d.notes)
    assert set(d.weights) == {"qwen@reeval", "gpt@reeval", "rag"}
    assert d.truth in d.prediction_set or d.label != d.truth
    assert Decision.from_dict(d.to_dict()) == d


def test_loop_is_bounded_by_max_rounds(wide_file: Path, apple_task: Task):
    _, agents, retriever = replay_parts(wide_file, apple_task)
    image = recorded_images(wide_file, task=apple_task)[0]
    for max_rounds in (1, 2, 3):
        policy = NeverTrusted()
        graph = build_graph(
            task=apple_task,
            agents=agents,
            policy=policy,
            retriever=retriever,
            max_rounds=max_rounds,
        )
        before = [a.calls for a in agents]
        d = asyncio.run(classify(graph, image.image, truth=image.truth))
        assert d.rounds_used == max_rounds
        assert [a.calls - b for a, b in zip(agents, before, strict=True)] == [max_rounds] * 2
        assert [r for r, _ in policy.rounds] == list(range(max_rounds))
        assert policy.rounds[-1][1] is (max_rounds > 1)  # evidence only once it was retrieved
        assert d.notes[-1].endswith(f"rounds exhausted ({max_rounds})")
        # the policy answers the last answer: gpt's first look (scab), then its second (rust)
        assert d.label == ("scab" if max_rounds == 1 else "rust")


def test_failing_and_slow_agents_are_recorded_and_the_others_decide(wide_file, apple_task):
    _, agents, retriever = replay_parts(wide_file, apple_task)
    graph = build_graph(
        task=apple_task,
        agents=[agents[0], RaisingAgent(), SleepingAgent()],
        policy=NeverTrusted(),
        retriever=retriever,
        max_rounds=1,
        agent_timeout_s=0.2,
    )
    image = recorded_images(wide_file, task=apple_task)[1]
    d = asyncio.run(classify(graph, image.image, truth=image.truth))
    by_agent = {p.agent: p for p in d.predictions}
    assert by_agent["qwen"].ok and by_agent["qwen"].label == "healthy"
    assert by_agent["raiser"].error == "raised RuntimeError: model exploded"
    assert by_agent["sleeper"].error == "timed out after 0.2 s"
    assert 0.15 < by_agent["sleeper"].latency_s < 5
    assert d.label == "healthy"
    assert any("agent raiser failed" in n for n in d.notes)
    assert any("agent sleeper failed: timed out" in n for n in d.notes)


def test_finished_thread_is_not_run_again(wide_file, tmp_path, apple_task):
    _, agents, retriever = replay_parts(wide_file, apple_task)
    images = recorded_images(wide_file, task=apple_task)

    async def scenario() -> tuple[list[Decision], list[Decision]]:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "ckpt.sqlite")) as saver:
            graph = build_graph(
                task=apple_task,
                agents=agents,
                policy=NeverTrusted(),
                retriever=retriever,
                checkpointer=saver,
            )
            first = [await classify(graph, li.image, truth=li.truth) for li in images]
            calls = [a.calls for a in agents] + [retriever.calls]
            again = [await classify(graph, li.image, truth=li.truth) for li in images]
            assert [a.calls for a in agents] + [retriever.calls] == calls
            return first, again

    first, again = asyncio.run(scenario())
    assert first == again
    assert [a.calls for a in agents] == [6, 6] and retriever.calls == 3


def test_killed_run_resumes_without_calling_finished_rounds(wide_file, tmp_path, apple_task):
    _, agents, retriever = replay_parts(wide_file, apple_task)
    image = recorded_images(wide_file, task=apple_task)[0]
    db = str(tmp_path / "ckpt.sqlite")

    async def crash() -> None:
        async with AsyncSqliteSaver.from_conn_string(db) as saver:
            graph = build_graph(
                task=apple_task,
                agents=agents,
                policy=CrashingPolicy(),
                retriever=retriever,
                checkpointer=saver,
            )
            await classify(graph, image.image)

    with pytest.raises(RuntimeError, match="killed"):
        asyncio.run(crash())
    assert [a.calls for a in agents] == [1, 1]  # round 0 done; crashed after retrieval

    async def resume() -> Decision:
        async with AsyncSqliteSaver.from_conn_string(db) as saver:
            graph = build_graph(
                task=apple_task,
                agents=agents,
                policy=NeverTrusted(),
                retriever=retriever,
                checkpointer=saver,
            )
            return await classify(graph, image.image)

    d = asyncio.run(resume())
    assert d.rounds_used == 2
    assert [p.round for p in d.predictions] == [0, 0, 1, 1]
    assert [a.calls for a in agents] == [2, 2]  # only round 1 was called after the resume
    assert retriever.calls == 1


def test_build_graph_validates_its_inputs(wide_file, apple_task):
    _, agents, _ = replay_parts(wide_file, apple_task)
    with pytest.raises(InputError, match="max_rounds"):
        build_graph(task=apple_task, agents=agents, policy=NeverTrusted(), max_rounds=0)
    with pytest.raises(InputError, match="share the name"):
        build_graph(task=apple_task, agents=[agents[0], agents[0]], policy=NeverTrusted())
    with pytest.raises(InputError, match="at least one agent"):
        build_graph(task=apple_task, agents=[], policy=NeverTrusted())


def test_graph_without_retriever_reevaluates_without_evidence(wide_file, apple_task):
    _, agents, _ = replay_parts(wide_file, apple_task)
    graph = build_graph(task=apple_task, agents=agents, policy=NeverTrusted(), max_rounds=2)
    d = asyncio.run(classify(graph, ImageRef(source="scab-2.JPG", sha256="f" * 64)))
    assert d.evidence is None and d.rounds_used == 2
    assert d.label == "scab" and d.sha256 == "f" * 64
