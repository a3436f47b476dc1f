"""The embedder and the retrieval agent (Agent and Retriever protocols) on a tiny seeded CLIP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from test_rag_index import make_image_folder

from agents.clip_model import ClipModel, load_clip
from agents.types import Agent
from core.images import ImageRef, LabelledImage
from core.task import Task
from rag.agent import RetrievalAgent
from rag.embedder import ImageEmbedder
from rag.errors import StoreError
from rag.index import build_index
from rag.retriever import Retriever
from rag.store import ChromaStore, ImageIndex
from rag.vote import SoftmaxVote


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_dir: Path) -> ClipModel:
    return load_clip(str(tiny_clip_dir), device="cpu")


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: ClipModel, apple_task: Task
) -> tuple[Path, ImageIndex]:
    root = tmp_path_factory.mktemp("agent")
    src = make_image_folder(root / "train", per_label=3, seed=5)
    store = ChromaStore.open(index_dir=root / "index")
    embedder = ImageEmbedder(tiny_clip, batch_size=8)
    index = store.index(apple_task.name, embedder.model, embedder.dim)
    build_index(src, apple_task, embedder, index, show_progress=False)
    return src, index


def test_embedder_batches_and_streams_failures(tmp_path: Path, tiny_clip: ClipModel) -> None:
    src = make_image_folder(tmp_path / "imgs", per_label=2)
    files = sorted(src.rglob("*.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    items = [LabelledImage(ImageRef.from_path(p), "rust") for p in files[:3]]
    items.insert(1, LabelledImage(ImageRef.from_path(bad), "rust"))
    items += [LabelledImage(ImageRef.from_path(p), "scab") for p in files[3:]]
    embedder = ImageEmbedder(tiny_clip, batch_size=3)
    batches = list(embedder.stream(items))
    assert [len(b.items) for b in batches] == [3, 3, 2]
    assert [len(b.failures) for b in batches] == [1, 0, 0]
    assert batches[0].failures[0].source == str(bad)
    vectors = np.concatenate([b.vectors for b in batches])
    assert vectors.shape == (8, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # batching does not change the vectors
    one_by_one = ImageEmbedder(tiny_clip, batch_size=1).embed_refs([i.image for i in items[2:4]])
    np.testing.assert_allclose(one_by_one, vectors[1:3], rtol=1e-4, atol=1e-5)
    texts = embedder.embed_texts(["a rust leaf", "a healthy leaf"])
    assert texts.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)


def test_agent_finds_an_indexed_image_and_votes(
    built: tuple[Path, ImageIndex], tiny_clip: ClipModel, apple_task: Task
) -> None:
    src, index = built
    agent = RetrievalAgent(tiny_clip, index, k=1)
    assert isinstance(agent, Agent) and isinstance(agent, Retriever)
    assert agent.can_reevaluate is False and agent.embedder.clip is tiny_clip
    ref = ImageRef.from_path(src / "scab" / "scab-2.png")
    prediction = asyncio.run(agent.predict(ref, apple_task))
    assert prediction.ok and prediction.label == "scab" and prediction.confidence == 1.0
    assert prediction.scores == {"black-rot": 0.0, "healthy": 0.0, "rust": 0.0, "scab": 1.0}
    assert prediction.agent == "retrieval" and prediction.latency_s > 0
    evidence = asyncio.run(agent.retrieve(ref, apple_task))
    assert evidence.neighbours[0].id == ref.sha256
    assert evidence.neighbours[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert (evidence.vote_rule, evidence.k, evidence.model) == (
        "similarity-share",
        1,
        index.model,
    )


def test_agent_scores_follow_the_neighbours(
    built: tuple[Path, ImageIndex], tiny_clip: ClipModel, apple_task: Task, tmp_path: Path
) -> None:
    _, index = built
    query = make_image_folder(tmp_path / "new", per_label=1, seed=99) / "rust" / "rust-0.png"
    ref = ImageRef.from_path(query)
    agent = RetrievalAgent(tiny_clip, index, k=5)
    evidence = agent.evidence(ref, apple_task)
    assert len(evidence.neighbours) == 5
    sims = [n.similarity for n in evidence.neighbours]
    assert sims == sorted(sims, reverse=True)
    total = sum(sims)
    for label in apple_task.labels:
        expected = sum(n.similarity for n in evidence.neighbours if n.label == label) / total
        assert evidence.vote[label] == pytest.approx(expected)
    prediction = asyncio.run(agent.predict(ref, apple_task, round=2))
    assert prediction.round == 2 and prediction.label == evidence.top_label
    assert prediction.confidence == pytest.approx(max(evidence.vote.values()))
    assert sum(prediction.scores.values()) == pytest.approx(1.0)
    assert "5 nearest indexed images" in prediction.reason
    # a fitted softmax vote gives a full distribution (no zero class)
    fitted = SoftmaxVote.from_dict({"temperature": 0.05, "smoothing": 0.1})
    soft = asyncio.run(RetrievalAgent(tiny_clip, index, k=5, vote=fitted).predict(ref, apple_task))
    assert soft.ok and min(soft.scores.values()) > 0.0
    assert sum(soft.scores.values()) == pytest.approx(1.0)


def test_agent_failures_are_predictions_not_exceptions(
    built: tuple[Path, ImageIndex], tiny_clip: ClipModel, apple_task: Task, tmp_path: Path
) -> None:
    _, index = built
    agent = RetrievalAgent(tiny_clip, index, k=3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    failed = asyncio.run(agent.predict(ImageRef.from_path(broken), apple_task))
    assert not failed.ok and "InputError" in (failed.error or "")
    other_task = Task(name="other", labels=("a", "b"), descriptions={"a": "an a", "b": "a b"})
    wrong = asyncio.run(agent.predict(ImageRef.from_path(broken), other_task))
    assert not wrong.ok and "is for task 'apple-leaf', not 'other'" in (wrong.error or "")


def test_agent_refuses_an_index_of_another_model(
    tmp_path: Path, tiny_clip: ClipModel, apple_task: Task, built: tuple[Path, ImageIndex]
) -> None:
    store = ChromaStore.open(index_dir=tmp_path / "index")
    other = store.index(apple_task.name, "openai/clip-vit-base-patch32", 512)
    with pytest.raises(StoreError, match=r"holds 512-d vectors of 'openai/clip-vit-base-patch32'"):
        RetrievalAgent(tiny_clip, other)
    with pytest.raises(
        StoreError, match=f"no index for task 'apple-leaf' and model '{tiny_clip.name}'"
    ):
        RetrievalAgent.from_store(tiny_clip, store, apple_task)
    _, index = built
    same_store = ChromaStore.open(index_dir=Path(index.location))
    agent = RetrievalAgent.from_store(tiny_clip, same_store, apple_task, k=4)
    assert (agent.index.name, agent.k) == (index.name, 4)


def test_answer_then_evidence_embeds_and_queries_once(
    built: tuple[Path, ImageIndex], tiny_clip: ClipModel, apple_task: Task, monkeypatch
) -> None:
    src, index = built
    agent = RetrievalAgent(tiny_clip, index, k=3)
    calls: list[int] = []
    real = agent.embedder.embed_refs

    def counting(refs):
        calls.append(len(refs))
        return real(refs)

    monkeypatch.setattr(agent.embedder, "embed_refs", counting)
    ref = ImageRef.from_path(src / "rust" / "rust-1.png")
    prediction = asyncio.run(agent.predict(ref, apple_task))
    evidence = asyncio.run(agent.retrieve(ref, apple_task))
    assert calls == [1]
    assert prediction.scores == evidence.vote
    asyncio.run(agent.retrieve(ImageRef.from_path(src / "scab" / "scab-1.png"), apple_task))
    assert calls == [1, 1]
