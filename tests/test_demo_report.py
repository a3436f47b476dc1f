"""The demo's HTML report, from Decisions made by the real graph (replay agents, a real Chroma
index searched with the tiny seeded CLIP): escaping, embedded images, every round shown."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agents.types import Prediction
from core.images import ImageRef
from orchestrator.decision import Decision
from orchestrator.demo.pipeline import reliability_png, trust_cards
from orchestrator.demo.report import IMAGE_MAX_PX, image_data_uri, render_report
from orchestrator.graph import build_graph, classify
from orchestrator.policies.trust import TrustPolicy

EVIL = "<script>alert('x')</script> & \"quoted\" <img src=x onerror=alert(1)>"
COLOURS = {
    "black-rot": (90, 50, 30),
    "healthy": (40, 160, 60),
    "rust": (220, 120, 30),
    "scab": (110, 120, 50),
}


def leaf_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 64) -> Path:
    """A synthetic 'leaf': one colour with seeded noise (PNG)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 18, (size, size, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def make_leaf_folder(root: Path, per_class: int = 3) -> Path:
    """ImageFolder layout root/<label>/<n>.png."""
    for i, (label, colour) in enumerate(COLOURS.items()):
        for j in range(per_class):
            leaf_image(root / label / f"{label}-{j}.png", colour, seed=100 * i + j)
    return root


def make_index(clip, index_dir: Path, images: Path, task) -> object:
    from rag.embedder import ImageEmbedder
    from rag.index import build_index
    from rag.store import ChromaStore

    index = ChromaStore.open(index_dir=index_dir).index(task.name, clip.name, clip.dim)
    build_index(images, task, ImageEmbedder(clip), index, show_progress=False)
    return index


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    from agents.clip_model import load_clip

    return load_clip(str(tiny_clip_dir), device="cpu")


@pytest.fixture(scope="module")
def retriever(clip, apple_task, tmp_path_factory):
    from rag.agent import RetrievalAgent

    root = tmp_path_factory.mktemp("demo-report")
    index = make_index(clip, root / "index", make_leaf_folder(root / "refs"), apple_task)
    return RetrievalAgent(clip, index, k=4)


def replay(name: str, sha: str, first: Prediction, second: Prediction | None):
    from orchestrator.replay.agent import ReplayAgent

    answers = {0: first} if second is None else {0: first, 1: second}
    return ReplayAgent(name=name, answers={"row": answers}, keys={sha: "row"})


def run(graph, ref: ImageRef, truth: str | None = None):
    return asyncio.run(classify(graph, ref, truth=truth))


@pytest.fixture()
def leaf(tmp_path) -> ImageRef:
    return ImageRef.from_path(leaf_image(tmp_path / "query.png", COLOURS["rust"], seed=7, size=80))


def two_round_decision(leaf: ImageRef, retriever, apple_task):
    agents = [
        replay(
            "gpt",
            leaf.sha256,
            Prediction(agent="gpt", label="scab", confidence=0.55, reason=EVIL),
            Prediction(agent="gpt", label="rust", confidence=0.9, reason="orange spots " + EVIL),
        ),
        replay(
            "qwen",
            leaf.sha256,
            Prediction(agent="qwen", label="rust", confidence=0.6, reason="yellow-orange"),
            Prediction(agent="qwen", label="rust", confidence=0.95, reason="neighbours agree"),
        ),
    ]
    graph = build_graph(
        task=apple_task,
        agents=agents,
        policy=TrustPolicy.from_profiles({}),
        retriever=retriever,
        max_rounds=2,
    )
    return run(graph, leaf, truth="rust")


def test_report_shows_every_round_escaped_and_self_contained(leaf, retriever, apple_task):
    decision = two_round_decision(leaf, retriever, apple_task)
    assert decision.rounds_used == 2, decision.notes
    html_text = render_report(
        decision,
        task=apple_task,
        image_bytes=Path(leaf.source).read_bytes(),
        trust=trust_cards(["gpt", "qwen", "rag"], {}),
        skipped=["openai skipped: set OPENAI_API_KEY <key>"],
    )
    # Every model-provided string is escaped: no markup of the agents survives.
    assert "<script" not in html_text and "<img src=x" not in html_text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in html_text
    assert "set OPENAI_API_KEY &lt;key&gt;" in html_text
    # Self-contained: nothing fetched, no script, no stylesheet link.
    assert not re.search(r'(src|href)="(?!data:)', html_text)
    assert "url(" not in html_text and "@import" not in html_text
    # Both rounds, every agent's answer in each, with its confidence.
    for r in (0, 1):
        assert f'id="round-{r}"' in html_text
        for p in (p for p in decision.predictions if p.round == r):
            row = re.search(
                rf'<tr class="prediction" data-agent="{p.agent}" data-round="{r}" '
                rf'data-label="{p.label}">.*?</tr>',
                html_text,
            )
            assert row, (p.agent, r)
            assert f"{100 * p.confidence:.1f}%" in row.group(0)
    assert html_text.count('class="prediction"') == len(decision.predictions) == 4
    assert html_text.count('class="assessment"') == len(decision.assessments)
    # Final diagnosis, confidence, prediction set, truth; trust weights; routing reasons.
    final = re.search(r'<section id="diagnosis" data-label="([^"]*)"', html_text)
    assert final and final.group(1) == (decision.label or "")
    assert f"{100 * decision.confidence:.1f}%" in html_text
    assert ", ".join(decision.prediction_set) in html_text
    for source, weight in decision.weights.items():
        assert f"<tr><td>{source}</td><td>{weight:.3f}</td></tr>" in html_text
    assert decision.notes and all(
        note.replace("'", "&#x27;").replace(">", "&gt;") in html_text for note in decision.notes
    )
    assert "no trust profile: a conservative default is used" in html_text


def test_report_embeds_the_image_and_neighbour_thumbnails(leaf, retriever, apple_task):
    decision = two_round_decision(leaf, retriever, apple_task)
    html_text = render_report(decision, task=apple_task, image_bytes=Path(leaf.source).read_bytes())
    main = re.search(r'<img id="leaf" src="data:image/png;base64,([^"]+)"', html_text)
    assert main and base64.b64decode(main.group(1)) == Path(leaf.source).read_bytes()
    neighbours = decision.evidence["neighbours"]
    assert len(neighbours) == 4
    figures = re.findall(
        r'<figure class="neighbour" data-label="([^"]+)"><img src="data:image/png;base64,([^"]+)"',
        html_text,
    )
    assert [label for label, _ in figures] == [n["label"] for n in neighbours]
    for _, encoded in figures:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (64, 64)


def test_large_image_is_scaled_down(tmp_path):
    big = leaf_image(tmp_path / "big.png", COLOURS["healthy"], seed=1, size=1000)
    uri = image_data_uri(big.read_bytes())
    assert uri and uri.startswith("data:image/jpeg;base64,")
    shown = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert shown.size == (IMAGE_MAX_PX, IMAGE_MAX_PX)
    assert image_data_uri(b"not an image") is None


def test_abstention_shows_the_prediction_set(leaf, apple_task):
    agents = [
        replay("gpt", leaf.sha256, Prediction(agent="gpt", label="scab", confidence=0.5), None),
        replay("qwen", leaf.sha256, Prediction(agent="qwen", label="rust", confidence=0.5), None),
    ]
    graph = build_graph(
        task=apple_task, agents=agents, policy=TrustPolicy.from_profiles({}), max_rounds=1
    )
    decision = run(graph, leaf)
    assert decision.abstained
    html_text = render_report(decision, task=apple_task, image_bytes=None)
    assert 'data-abstained="true"' in html_text
    assert "No diagnosis" in html_text
    assert f'<b class="pset">{", ".join(decision.prediction_set)}</b>' in html_text
    assert "The image is not embedded" in html_text
    assert 'id="round-1"' not in html_text


def test_failed_agent_is_shown_with_its_error(leaf, apple_task):
    agents = [
        replay("gpt", leaf.sha256, Prediction(agent="gpt", label="rust", confidence=0.9), None),
        replay("qwen", "another-image", Prediction(agent="qwen", label="rust"), None),
    ]
    graph = build_graph(
        task=apple_task, agents=agents, policy=TrustPolicy.from_profiles({}), max_rounds=1
    )
    decision = run(graph, leaf)
    html_text = render_report(decision, task=apple_task)
    row = re.search(r'<tr class="prediction" data-agent="qwen".*?</tr>', html_text)
    assert row and "failed: no recorded answer for image" in row.group(0)


def test_trust_card_draws_the_profiles_reliability_diagram(tmp_path, apple_task):
    """The report's diagram, rebuilt from a fitted profile's per-bin table, is pixel for pixel
    the one ``eval.plots`` draws from the raw predictions; the card shows the profile's numbers."""
    from eval.plots import reliability_diagram
    from eval.profile import fit_trust_profile
    from eval.recorded.records import Record

    rng = np.random.default_rng(3)
    labels = apple_task.labels
    records, confidence, correct = [], [], []
    for i in range(200):
        truth = labels[i % 4]
        conf = float(rng.uniform(0.3, 1.0))
        right = bool(rng.uniform() < conf * 0.9)
        pred = truth if right else labels[(i + 1) % 4]
        records.append(Record(id=str(i), agent="gpt", truth=truth, pred=pred, confidence=conf))
        confidence.append(conf)
        correct.append(float(right))
    profile = fit_trust_profile("gpt", records, labels, bootstrap=0, cv_folds=0)
    png = reliability_png(profile)
    expected = reliability_diagram(
        confidence, correct, tmp_path / "raw.png", bins=10, title="gpt", ece=profile.ece
    ).read_bytes()
    got = np.asarray(Image.open(io.BytesIO(png)))
    want = np.asarray(Image.open(io.BytesIO(expected)))
    assert got.shape == want.shape
    assert (got != want).any(axis=-1).mean() < 0.002

    card = trust_cards(["gpt"], {"gpt": profile})["gpt"]
    assert (card.n, card.accuracy, card.ece) == (200, profile.accuracy, profile.ece)
    assert card.diagram_png == png
    page = render_report(
        Decision(
            image="x.png", sha256="0" * 64, task=apple_task.name, policy="trust", label="rust",
            confidence=0.9, prediction_set=["rust"], rounds_used=1, predictions=[],
            assessments=[],
        ),
        task=apple_task,
        trust={"gpt": card},
    )  # fmt: skip
    assert 'alt="reliability diagram of gpt"' in page
    assert base64.b64encode(png).decode() in page
    assert f"<td>gpt</td><td>200</td><td>{100 * profile.accuracy:.1f}%</td>" in page


def test_asked_to_look_again_names_only_the_agents_that_did(leaf, retriever, apple_task):
    import dataclasses

    decision = two_round_decision(leaf, retriever, apple_task)
    first, *rest = decision.assessments
    assert first.reevaluate and not first.trusted
    named = dataclasses.replace(first, reevaluate=["clip", *first.reevaluate])
    decision = dataclasses.replace(decision, assessments=[named, *rest])
    html_text = render_report(
        decision, task=apple_task, image_bytes=Path(leaf.source).read_bytes(), trust={}
    )
    asked = re.findall(r"<p>Asked to look again: ([^<]*)</p>", html_text)
    looked = sorted(p.agent for p in decision.predictions if p.round == 1)
    assert asked and all(names == ", ".join(looked) for names in asked)
    assert not any("clip" in names for names in asked)
