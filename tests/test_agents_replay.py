"""ReplayAgent, recorded images and RecordedRetriever on small written files and the real case3."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agents.types import Agent
from core.errors import InputError
from core.images import ImageRef
from eval.recorded.records import read_records
from orchestrator.replay.agent import (
    ReplayAgent,
    parse_replay_spec,
    recorded_image_sha256,
    recorded_images,
    replay_agent_from_spec,
)
from orchestrator.replay.retriever import RecordedRetriever

WIDE = (
    "id,image,category,qwen_initial_pred,qwen_initial_conf,qwen_pred,qwen_conf,"
    "gpt_pred,gpt_conf,rag_pred,rag_conf,rag_scores_json\n"
    '1,rust-1.JPG,rust,scab,0.9,rust,0.8,rust,0.7,rust,0.6,"[{""category"": ""rust"", '
    '""confidence"": 0.6}, {""category"": ""scab"", ""confidence"": 0.4}]"\n'
    "2,scab-2.JPG,scab,healthy,0.95,scab,0.85,pink,0.5,scab,1.0,\n"
)

LONG = [
    {"id": "a", "agent": "clip", "truth": "rust", "pred": "scab", "confidence": 0.6, "round": 0},
    {"id": "a", "agent": "clip", "truth": "rust", "pred": "rust", "confidence": 0.7, "round": 2},
    {"id": "b", "agent": "clip", "truth": "scab", "pred": "scab", "confidence": 0.9, "round": 0},
]


@pytest.fixture
def wide_file(tmp_path: Path) -> Path:
    path = tmp_path / "wide.csv"
    path.write_text(WIDE, encoding="utf-8")
    return path


def predict(agent: ReplayAgent, image: ImageRef, task, round_: int = 0):
    return asyncio.run(agent.predict(image, task, round=round_))


def test_wide_rounds_use_initial_then_reevaluated_columns(wide_file: Path, apple_task):
    images = {li.extra["id"]: li for li in recorded_images(wide_file, task=apple_task)}
    qwen = ReplayAgent.from_file(wide_file, "qwen", task=apple_task)
    assert isinstance(qwen, Agent) and qwen.can_reevaluate
    first = predict(qwen, images["1"].image, apple_task, 0)
    second = predict(qwen, images["1"].image, apple_task, 1)
    assert (first.label, first.confidence, first.round) == ("scab", 0.9, 0)
    assert (second.label, second.confidence, second.round) == ("rust", 0.8, 1)
    assert predict(qwen, images["1"].image, apple_task, 3).label == "rust"
    assert qwen.calls == 3


def test_wide_agent_without_initial_columns_replays_the_same_answer(wide_file, apple_task):
    gpt = ReplayAgent.from_file(wide_file, "gpt", task=apple_task)
    assert not gpt.can_reevaluate
    image = recorded_images(wide_file, task=apple_task)[0].image
    assert predict(gpt, image, apple_task, 0).label == "rust"
    # an answer outside the labels ("pink") is a failure, never a raise
    bad = predict(gpt, recorded_images(wide_file, task=apple_task)[1].image, apple_task)
    assert not bad.ok and "outside the labels" in bad.error


def test_lookup_by_sha_name_or_id_and_unknown_image_fails(wide_file, apple_task):
    qwen = ReplayAgent.from_file(wide_file, "qwen", task=apple_task)
    by_name = ImageRef(source="/some/folder/scab-2.JPG", sha256="0" * 64)
    by_id = ImageRef(source="2", sha256="1" * 64)
    assert predict(qwen, by_name, apple_task).label == "healthy"
    assert predict(qwen, by_id, apple_task).label == "healthy"
    unknown = predict(qwen, ImageRef(source="x.png", sha256="2" * 64), apple_task)
    assert not unknown.ok and "no recorded answer" in unknown.error and unknown.agent == "qwen"


def test_recorded_images_have_stable_file_derived_identity(wide_file, tmp_path, apple_task):
    a = recorded_images(wide_file, task=apple_task)
    b = recorded_images(wide_file, task=apple_task)
    assert [li.image.sha256 for li in a] == [li.image.sha256 for li in b]
    assert [li.truth for li in a] == ["rust", "scab"]
    assert a[0].image.source == "rust-1.JPG"
    other = tmp_path / "other.csv"
    other.write_text(WIDE + "3,rust-3.JPG,rust,rust,1,rust,1,rust,1,rust,1,\n", encoding="utf-8")
    assert recorded_images(other, task=apple_task)[0].image.sha256 != a[0].image.sha256
    assert len({li.image.sha256 for li in a}) == 2


def test_long_file_uses_round_column(tmp_path, apple_task):
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in LONG) + "\n", encoding="utf-8")
    clip = ReplayAgent.from_file(path, "clip", task=apple_task)
    image = next(li.image for li in recorded_images(path, task=apple_task) if li.extra["id"] == "a")
    assert clip.can_reevaluate
    assert predict(clip, image, apple_task, 0).label == "scab"
    assert predict(clip, image, apple_task, 1).label == "scab"  # no round 1: last recorded
    assert predict(clip, image, apple_task, 2).label == "rust"


def test_spec_parsing(wide_file, apple_task):
    assert parse_replay_spec("replay:/a/b#c.csv#qwen") == ("/a/b#c.csv", "qwen")
    agent = replay_agent_from_spec(f"replay:{wide_file}#qwen", task=apple_task)
    assert agent.name == "qwen" and agent.source == str(wide_file)
    for bad in ("replay:file.csv", "clip:x#y", "replay:#qwen", "replay:f.csv#"):
        with pytest.raises(InputError):
            parse_replay_spec(bad)
    with pytest.raises(InputError, match="no recorded agent 'llava'"):
        replay_agent_from_spec(f"replay:{wide_file}#llava", task=apple_task)


def test_recorded_retriever_gives_the_full_vote(wide_file, apple_task):
    retriever = RecordedRetriever.from_file(wide_file, task=apple_task)
    images = recorded_images(wide_file, task=apple_task)
    ev = asyncio.run(retriever.retrieve(images[0].image, apple_task))
    assert ev.neighbours == () and ev.vote_rule == "recorded"
    assert ev.vote == pytest.approx({"black-rot": 0.0, "healthy": 0.0, "rust": 0.6, "scab": 0.4})
    # no scores JSON: the recorded top label with its confidence, the rest spread
    ev2 = asyncio.run(retriever.retrieve(images[1].image, apple_task))
    assert ev2.vote["scab"] == pytest.approx(1.0) and ev2.top_label == "scab"
    with pytest.raises(InputError, match="no recorded retrieval vote"):
        asyncio.run(retriever.retrieve(ImageRef(source="nope", sha256="3" * 64), apple_task))
    with pytest.raises(InputError, match="no recorded retrieval source"):
        RecordedRetriever.from_file(wide_file, task=apple_task, source="clip")


def test_case3_replay_matches_the_recorded_columns(paper_dir: Path, apple_task):
    path = paper_dir / "case3_trust_rag.csv"
    images = recorded_images(path, task=apple_task)
    assert len(images) == 160
    gpt = ReplayAgent.from_file(path, "gpt", task=apple_task)
    first = [predict(gpt, li.image, apple_task, 0) for li in images]
    second = [predict(gpt, li.image, apple_task, 1) for li in images]
    acc0 = sum(p.label == li.truth for p, li in zip(first, images, strict=True)) / 160
    acc1 = sum(p.label == li.truth for p, li in zip(second, images, strict=True)) / 160
    assert acc0 == pytest.approx(0.5875) and acc1 == pytest.approx(0.875)
    sha = recorded_image_sha256(read_records(path, task=apple_task).sha256, images[0].extra["id"])
    assert images[0].image.sha256 == sha
