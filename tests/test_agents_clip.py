"""The CLIP zero-shot agent on the tiny seeded CLIP (saved to a folder, loaded back through
``load_clip``), and agent specs."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agents.clip_agent import ClipAgent
from agents.clip_model import ClipModel, load_clip
from agents.errors import ModelLoadError
from agents.registry import AgentSpec, build_agent, parse_agent_spec
from agents.types import Agent
from core.errors import InputError
from core.images import ImageRef
from core.task import Task


@pytest.fixture(scope="module")
def clip_dir(tiny_clip_dir: Path) -> Path:
    return tiny_clip_dir


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> ClipModel:
    return load_clip(str(clip_dir), device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[ImageRef]:
    folder = tmp_path_factory.mktemp("leaves")
    rng = np.random.default_rng(0)
    refs = []
    for i in range(7):
        pixels = rng.integers(0, 255, (40 + 4 * i, 36, 3), dtype=np.uint8)
        path = folder / f"leaf{i}.png"
        Image.fromarray(pixels).save(path)
        refs.append(ImageRef.from_path(path))
    return refs


def count_text_embeddings(clip: ClipModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the real ``embed_texts``: the number of texts of each call."""
    calls: list[int] = []
    real = clip.embed_texts

    def spy(texts, **kwargs):
        calls.append(len(texts))
        return real(texts, **kwargs)

    monkeypatch.setattr(clip, "embed_texts", spy)
    return calls


def test_scores_are_a_softmax_and_label_is_the_argmax(
    clip: ClipModel, images: list[ImageRef], apple_task: Task
) -> None:
    agent = ClipAgent(clip)
    assert isinstance(agent, Agent) and agent.can_reevaluate is False
    preds = asyncio.run(agent.predict_many(images, apple_task))
    assert len(preds) == len(images)
    for pred in preds:
        assert pred.ok and pred.agent == "clip" and pred.error is None
        assert list(pred.scores) == list(apple_task.labels)
        assert sum(pred.scores.values()) == pytest.approx(1.0)
        assert all(0.0 < p < 1.0 for p in pred.scores.values())
        assert pred.label == max(pred.scores, key=pred.scores.__getitem__)
        assert pred.confidence == pytest.approx(max(pred.scores.values()))
        assert type(pred.confidence) is float
    assert len({p.label for p in preds}) > 1 or len({round(p.confidence, 6) for p in preds}) > 1


def test_scores_match_the_ensemble_formula(
    clip: ClipModel, images: list[ImageRef], apple_task: Task
) -> None:
    from core.images import open_image

    agent = ClipAgent(clip)
    prompts = agent.prompts(apple_task)
    assert all(len(texts) == 6 for texts in prompts.values())
    assert prompts["black-rot"][0].startswith("a photo of an apple leaf with black rot: circular")
    assert "black rot, an apple leaf." in prompts["black-rot"]
    ensemble = []
    for label in apple_task.labels:
        mean = clip.embed_texts(prompts[label]).mean(axis=0)
        ensemble.append(mean / np.linalg.norm(mean))
    feats = clip.embed_images([open_image(images[0])])
    logits = clip.logit_scale * feats @ np.stack(ensemble).T
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    pred = asyncio.run(agent.predict(images[0], apple_task))
    got = np.array([pred.scores[label] for label in apple_task.labels])
    np.testing.assert_allclose(got, expected[0], rtol=1e-5)


def test_text_embeddings_computed_once_per_task_and_model(
    clip: ClipModel, images: list[ImageRef], apple_task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_text_embeddings(clip, monkeypatch)
    agent = ClipAgent(clip)
    for image in images:
        asyncio.run(agent.predict(image, apple_task))
    asyncio.run(agent.predict_many(images, apple_task))
    assert calls == [4 * 6]
    matrix = agent.text_embeddings(apple_task)
    assert matrix.shape == (4, clip.dim)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
    other = apple_task.model_copy(update={"name": "apple-leaf-2", "subject": "a leaf"})
    asyncio.run(agent.predict(images[0], other))
    asyncio.run(agent.predict(images[1], other))
    assert calls == [24, 24]


def test_batched_equals_one_at_a_time(
    clip: ClipModel, images: list[ImageRef], apple_task: Task
) -> None:
    agent = ClipAgent(clip, batch_size=3)
    batched = asyncio.run(agent.predict_many(images, apple_task))
    single = [asyncio.run(agent.predict(image, apple_task)) for image in images]
    for b, s in zip(batched, single, strict=True):
        assert b.label == s.label
        for label in apple_task.labels:
            assert b.scores[label] == pytest.approx(s.scores[label], abs=1e-6)


def test_a_bad_image_fails_alone(
    clip: ClipModel, images: list[ImageRef], apple_task: Task, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    batch = [images[0], ImageRef.from_path(bad), images[1]]
    preds = ClipAgent(clip).classify(batch, apple_task, round=1)
    assert [p.ok for p in preds] == [True, False, True]
    assert "not an image file" in preds[1].error and str(bad) in preds[1].error
    assert all(p.round == 1 for p in preds)


def test_custom_templates_and_missing_placeholder(clip: ClipModel, apple_task: Task) -> None:
    agent = ClipAgent(clip, templates=["$label", "a photo of $label."])
    assert agent.prompts(apple_task)["black-rot"] == ["black rot", "a photo of black rot."]
    broken = ClipAgent(clip, templates=["a photo of $colour."])
    with pytest.raises(InputError, match=r"no value for placeholder\(s\) \['colour'\]"):
        broken.text_embeddings(apple_task)


def test_parse_agent_spec() -> None:
    assert parse_agent_spec("clip") == AgentSpec("clip", "", None, "clip")
    assert parse_agent_spec("gpt=openai:gpt-4o").name == "gpt"
    spec = parse_agent_spec("hf-vlm:/models/Qwen2.5-VL=7B")
    assert (spec.kind, spec.target, spec.name) == ("hf-vlm", "/models/Qwen2.5-VL=7B", None)
    assert parse_agent_spec("replay:runs/a.csv#gpt").target == "runs/a.csv#gpt"
    with pytest.raises(InputError, match="empty agent spec"):
        parse_agent_spec("  ")


def test_build_agent_shares_or_loads_clip(
    clip: ClipModel, clip_dir: Path, apple_task: Task
) -> None:
    assert build_agent("clip", task=apple_task, clip=clip).clip is clip
    loads: list[int] = []

    def lazily() -> ClipModel:
        loads.append(1)
        return clip

    assert build_agent("clip", task=apple_task, clip=lazily).clip is clip and loads == [1]
    same = build_agent(f"clip:{clip.name}", task=apple_task, clip=clip)
    assert same.clip is clip and same.name == "clip"
    other = build_agent(f"mine=clip:{clip_dir}", task=apple_task, clip=lazily, device="cpu")
    assert other.clip is not clip and other.name == "mine" and other.clip.name == str(clip_dir)
    assert loads == [1]  # the lazy shared CLIP is not loaded for clip:<folder>
    with pytest.raises(ModelLoadError, match="--clip-model DIR"):
        build_agent("clip:/nowhere/clip", task=apple_task, device="cpu")


def test_build_agent_rejects_unknown_kinds_and_options(clip: ClipModel, apple_task: Task):
    with pytest.raises(InputError, match=r"unknown agent kind 'gemini'.*valid: clip or clip:"):
        build_agent("gemini:pro", task=apple_task)
    with pytest.raises(InputError, match=r"unknown option\(s\) \['colour'\]"):
        build_agent("clip", task=apple_task, clip=clip, colour="red")
    with pytest.raises(InputError, match="give a model"):
        build_agent("openai:", task=apple_task)


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("clip", {"batch_size": "abc"}, "option batch_size='abc' must be an integer >= 1"),
        ("clip", {"batch_size": -1}, "option batch_size=-1 must be an integer >= 1"),
        ("clip", {"batch_size": True}, "option batch_size=True must be an integer >= 1"),
        ("clip", {"templates": 3.5}, "option templates=3.5 must be a text or a list of texts"),
        ("openai:gpt-4o", {"timeout_s": "abc"}, "option timeout_s='abc' must be a number > 0"),
        ("openai:gpt-4o", {"timeout_s": 0}, "option timeout_s=0 must be a number > 0"),
        ("openai:gpt-4o", {"max_retries": -2}, "option max_retries=-2 must be an integer >= 0"),
        ("openai:gpt-4o", {"logprobs": "maybe"}, "option logprobs='maybe' must be true or false"),
        (
            "openai:gpt-4o",
            {"image_detail": "ultra"},
            "option image_detail='ultra' must be a text (one of",
        ),
        (
            "openai:gpt-4o",
            {"temperature": "hot"},
            "option temperature='hot' must be a number >= 0 or",
        ),
        ("openai:gpt-4o", {"prices": "cheap"}, "option prices='cheap' must be a mapping"),
        ("hf-vlm:/nowhere/vlm", {"dtype": "int7"}, "option dtype='int7' must be a torch dtype"),
        ("hf-vlm:/nowhere/vlm", {"reason_tokens": 1.5}, "option reason_tokens=1.5 must be an"),
        (  # refused before any model folder is looked at (this one does not exist)
            "hf-vlm:/nowhere/vlm",
            {"reason_tokens": 513},
            "option reason_tokens=513 must be an integer >= 0 and <= 512",
        ),
    ],
)
def test_build_agent_refuses_option_values_of_the_wrong_type(
    spec: str, options: dict, message: str, clip: ClipModel, apple_task: Task
) -> None:
    with pytest.raises(InputError, match=re.escape(f"agent spec {spec!r}: {message}")):
        build_agent(spec, task=apple_task, clip=clip, **options)


def test_build_agent_coerces_option_values(
    clip: ClipModel, apple_task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = build_agent("clip", task=apple_task, clip=clip, batch_size="8", templates="a {label}")
    assert agent.batch_size == 8 and agent.templates == ("a {label}",)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-spec-test-key")
    vlm = build_agent(
        "openai:gpt-4o",
        task=apple_task,
        timeout_s="2.5",
        logprobs="false",
        max_tokens="none",
        max_retries=2.0,
        image_detail="LOW",
    )
    assert (vlm.client.timeout_s, vlm.client.max_tokens, vlm.client.max_retries) == (2.5, None, 2)
    assert vlm.client.logprobs is False and vlm.image_detail == "low"


def test_cli_predict_bad_option_value_is_one_line(
    images: list[ImageRef], capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.cli import main

    for option, shown in (("batch_size=abc", "'abc'"), ("batch_size=-1", "-1")):
        args = ["agents", "predict", images[0].source, "--clip-model", "/nowhere/clip"]
        assert main([*args, "--agent-option", option]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"error: agent spec 'clip': option batch_size={shown} must be an integer >= 1"
        ]


def test_build_openai_agent_from_spec(apple_task: Task, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-spec-test-key")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    agent = build_agent(
        "gpt=openai:gpt-4o", task=apple_task, timeout_s=5.0, max_concurrency=3, neighbour_images=2
    )
    assert agent.name == "gpt" and agent.can_reevaluate
    assert agent.client.model == "gpt-4o" and agent.client.max_concurrency == 3
    assert agent.neighbour_images == 2
    assert "sk-spec-test-key" not in repr(agent) + repr(agent.client) + repr(vars(agent.client))


def test_cli_predict_refuses_a_non_image_before_any_model_loads(
    images: list[ImageRef], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.cli import main

    notes = tmp_path / "notes.txt"
    notes.write_text("not a leaf")
    args = ["agents", "predict", images[0].source, str(notes), "--clip-model", "/nowhere/clip"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {notes}: not an image file (unknown format)"]


def test_cli_predict_json_with_clip_and_an_openai_agent(
    clip_dir: Path, images: list[ImageRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_server import openai_server
    from typer.testing import CliRunner

    from agents.cli import app

    answer = '{"label": "Healthy", "reason": "uniform green", "confidence": 0.9}'
    with openai_server([answer]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        args = ["predict", images[0].source, images[1].source, "--agent", "clip"]
        args += ["--agent", "vlm=openai:local-vlm", "--clip-model", str(clip_dir)]
        args += ["--device", "cpu", "--agent-option", "max_retries=0", "--json"]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["labels"] == ["black-rot", "healthy", "rust", "scab"]
    rows = out["predictions"]
    assert [(r["image"], r["agent"]) for r in rows] == [
        (images[0].source, "clip"),
        (images[0].source, "vlm"),
        (images[1].source, "clip"),
        (images[1].source, "vlm"),
    ]
    assert all(r["sha256"] in (images[0].sha256, images[1].sha256) for r in rows)
    assert rows[1]["label"] == "healthy" and rows[1]["confidence"] == 0.9
    assert sum(rows[0]["scores"].values()) == pytest.approx(1.0)
    assert len(server.requests) == 2
    assert server.requests[0].body["max_tokens"] == 400
