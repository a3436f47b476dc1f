"""``trustorch demo leaf`` with the tiny seeded CLIP (passed via --clip-model) and a real Chroma
index in a temp folder: HTML reports, JSON output, which agents ran, the no-agent error."""

from __future__ import annotations

import asyncio
import html
import json
import re
import sys
from pathlib import Path

import pytest
from test_demo_report import COLOURS, leaf_image, make_index, make_leaf_folder
from tiny_models import clip_with_token_limit

from core.errors import TrustorchError
from orchestrator.cli import main

AGENT_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "TRUSTORCH_HF_VLM",
    "TRUSTORCH_CLIP_MODEL",
    "TRUSTORCH_INDEX_DIR",
)


@pytest.fixture(autouse=True)
def no_agent_env(monkeypatch):
    for name in AGENT_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def leaf_setup(tiny_clip_dir, apple_task, tmp_path_factory):
    """(clip folder, index folder, a labelled query folder) for the tiny CLIP."""
    from agents.clip_model import load_clip

    root = tmp_path_factory.mktemp("demo-cli")
    clip_dir = clip_with_token_limit(tiny_clip_dir, root / "clip")
    clip = load_clip(str(clip_dir), device="cpu")
    make_index(clip, root / "index", make_leaf_folder(root / "refs"), apple_task)
    queries = root / "queries"
    leaf_image(queries / "rust" / "q-rust.png", COLOURS["rust"], seed=901, size=72)
    leaf_image(queries / "healthy" / "q-healthy.png", COLOURS["healthy"], seed=902, size=72)
    return clip_dir, root / "index", queries


def demo(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["demo", "leaf", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_leaf_writes_one_report_per_image(leaf_setup, tmp_path, capsys):
    clip_dir, index_dir, queries = leaf_setup
    out_dir = tmp_path / "reports"
    code, out, err = demo(
        capsys,
        str(queries),
        "--clip-model",
        str(clip_dir),
        "--index-dir",
        str(index_dir),
        "--out-dir",
        str(out_dir),
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    agents = {a["name"]: a for a in data["agents"]}
    assert agents["clip"]["available"] and agents["retrieval"]["available"]
    assert "12 labelled images" in agents["retrieval"]["detail"]
    assert not agents["openai"]["available"] and "OPENAI_API_KEY" in agents["openai"]["detail"]
    assert "clip runs: CLIP zero-shot" in err and "openai skipped: set OPENAI_API_KEY" in err
    results = data["results"]
    assert sorted(r["truth"] for r in results) == ["healthy", "rust"]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        f"{Path(r['image']).stem}-{r['sha256'][:8]}.html" for r in results
    )
    for r in results:
        page = Path(r["report"]).read_text(encoding="utf-8")
        section = re.search(
            r'<section id="diagnosis" data-label="([^"]*)" data-confidence="([0-9.]+)"', page
        )
        assert section, r["report"]
        assert section.group(1) == (r["label"] or "")
        assert float(section.group(2)) == pytest.approx(r["confidence"], abs=1e-4)
        assert r["label"] is None or r["label"] in r["prediction_set"]
        assert f"True label: <b>{r['truth']}</b>" in page
        clip_row = re.search(r'<tr class="prediction" data-agent="clip" data-round="0" '
                             r'data-label="([a-z-]+)">(.*?)</tr>', page)  # fmt: skip
        assert clip_row and "failed" not in clip_row.group(2)
        assert "openai skipped: set OPENAI_API_KEY" in page
        assert page.count("data:image/png;base64,") >= 1  # the leaf itself, as uploaded
        if r["rounds_used"] > 1 or "retrieve" in page:
            assert '<section id="evidence">' in page


def test_same_decision_as_the_pipeline_in_process(leaf_setup, apple_task, tmp_path, capsys):
    """The command's answer is the pipeline's answer (deterministic tiny CLIP)."""
    from core.images import ImageRef
    from orchestrator.demo import build_pipeline

    clip_dir, index_dir, queries = leaf_setup
    image = queries / "rust" / "q-rust.png"
    code, out, _ = demo(
        capsys, str(image), "--clip-model", str(clip_dir), "--index-dir", str(index_dir),
        "--out-dir", str(tmp_path), "--json",
    )  # fmt: skip
    assert code == 0
    (result,) = json.loads(out)["results"]
    pipeline = build_pipeline(
        task=apple_task, clip_model=str(clip_dir), index_dir=index_dir, environ={}
    )
    decision = asyncio.run(pipeline.diagnose(ImageRef.from_path(image)))
    assert (decision.label, decision.prediction_set) == (
        result["label"],
        result["prediction_set"],
    )
    assert decision.confidence == pytest.approx(result["confidence"])
    assert [s.name for s in pipeline.availability.available] == ["clip", "retrieval"]
    (clip_agent,) = pipeline.agents
    assert clip_agent.clip is pipeline.retriever.embedder.clip  # one CLIP, loaded once
    assert [(p.agent, p.ok) for p in decision.predictions] == [("clip", True)]
    assert decision.evidence is not None  # the first look alone is never trusted (0.99)
    assert decision.weights.keys() == {"clip", "retrieval"}


def test_table_output_without_index(leaf_setup, tmp_path, capsys):
    clip_dir, _, queries = leaf_setup
    code, out, err = demo(
        capsys, str(queries / "rust" / "q-rust.png"), "--clip-model", str(clip_dir),
        "--index-dir", str(tmp_path / "no-index"), "--out-dir", str(tmp_path / "r"),
    )  # fmt: skip
    assert code == 0, err
    assert "retrieval skipped: no index at" in err
    assert not (tmp_path / "no-index").exists()  # looking for an index creates nothing
    assert "Diagnoses" in out and "q-rust.png" in out
    (report,) = (tmp_path / "r").iterdir()
    assert "retrieval skipped: no index at" in report.read_text(encoding="utf-8")


def test_no_agent_is_one_line_error(tmp_path, capsys):
    image = leaf_image(tmp_path / "leaf.png", COLOURS["scab"], seed=5)
    code, out, err = demo(
        capsys, str(image), "--clip-model", str(tmp_path / "no-weights"),
        "--index-dir", str(tmp_path / "no-index"), "--out-dir", str(tmp_path / "r"),
    )  # fmt: skip
    assert code == 1 and out == ""
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    line = error[0]
    assert line.startswith("error: no agent can run on this machine")
    for needed in ("--clip-model DIR", "TRUSTORCH_CLIP_MODEL", "OPENAI_API_KEY", "index"):
        assert needed in line
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_hub_id_not_cached_is_never_downloaded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    from orchestrator.demo.availability import discover_clip

    clip, status = discover_clip("openai/clip-vit-base-patch32")
    assert clip is None and not status.available
    assert "no local weights for 'openai/clip-vit-base-patch32'" in status.detail
    assert not (tmp_path / "hf" / "hub").exists()


def test_images_are_required_without_serve(capsys):
    code, _, err = demo(capsys)
    assert code in (1, 2)
    code, _, err = demo(capsys, "--out-dir", "x")
    assert code == 1 and "error: give at least one image (or --serve" in err


def test_openai_endpoint_counts_as_a_vlm():
    from agents.registry import default_registry

    (status,) = default_registry().probe(
        {"OPENAI_BASE_URL": "http://localhost:11434/v1", "TRUSTORCH_OPENAI_MODEL": "qwen2.5vl"}
    )
    assert status.available and status.spec == "openai:qwen2.5vl"
    assert "http://localhost:11434/v1" in status.detail
    statuses = default_registry().probe({"TRUSTORCH_HF_VLM": "/nowhere/model"})
    assert [s.available for s in statuses] == [False, False]


def test_upload_handler_returns_summary_and_sandboxed_report(leaf_setup, apple_task):
    from orchestrator.demo import build_pipeline
    from orchestrator.demo.web import diagnose_upload

    clip_dir, index_dir, queries = leaf_setup
    pipeline = build_pipeline(
        task=apple_task, clip_model=str(clip_dir), index_dir=index_dir, environ={}
    )
    summary, frame = asyncio.run(diagnose_upload(pipeline, str(queries / "rust" / "q-rust.png")))
    match = re.match(
        r"Diagnosis: ([a-z-]+) \(([0-9.]+)% confidence\)|No diagnosis \(abstained\)", summary
    )
    assert match
    assert frame.startswith('<iframe id="report-frame" title="diagnosis report" sandbox=""')
    inner = html.unescape(re.search(r'srcdoc="([^"]*)"', frame).group(1))
    if match.group(1) is not None:
        assert match.group(1) in apple_task.labels
        assert f'<section id="diagnosis" data-label="{match.group(1)}"' in inner
    else:
        assert 'data-abstained="true"' in inner
    assert asyncio.run(diagnose_upload(pipeline, None))[0].startswith("Upload a leaf photo")
    missing = asyncio.run(diagnose_upload(pipeline, "/nowhere/leaf.png"))
    assert missing == ("Error: leaf.png: no such image file", "")
    assert str(queries) not in inner and "q-rust.png" in inner  # the upload's folder stays private


def test_web_without_gradio_names_the_extra(monkeypatch):
    from orchestrator.demo.web import import_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(TrustorchError, match=r"web page needs gradio.*trust-orchestrator\[demo\]"):
        import_gradio()


def test_vlm_behind_a_local_openai_server_looks_twice(leaf_setup, tmp_path, capsys, monkeypatch):
    """OPENAI_BASE_URL makes the VLM an agent; untrusted, it is asked again with the evidence,
    and both of its answers (escaped) are in the report."""
    from openai_server import chat_reply, openai_server

    clip_dir, index_dir, queries = leaf_setup
    first = '{"label": "scab", "reason": "dark <b>velvety</b> spots", "confidence": 0.6}'
    second = '{"label": "rust", "reason": "orange spots, like the neighbours", "confidence": 0.9}'
    with openai_server([chat_reply(first), chat_reply(second)]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("TRUSTORCH_OPENAI_MODEL", "test-vlm")
        code, out, err = demo(
            capsys, str(queries / "rust" / "q-rust.png"), "--clip-model", str(clip_dir),
            "--index-dir", str(index_dir), "--out-dir", str(tmp_path), "--json",
        )  # fmt: skip
        requests = list(server.requests)
    assert code == 0, err
    assert "openai runs: 'test-vlm' through the server at http://127.0.0.1:" in err
    (result,) = json.loads(out)["results"]
    assert result["rounds_used"] == 2
    assert len(requests) == 2
    page = Path(result["report"]).read_text(encoding="utf-8")
    for r, label in ((0, "scab"), (1, "rust")):
        assert f'data-agent="test-vlm" data-round="{r}" data-label="{label}"' in page
    assert "dark &lt;b&gt;velvety&lt;/b&gt; spots" in page and "<b>velvety" not in page
    assert 'id="round-1"' in page and '<section id="evidence">' in page


def test_an_unwritable_report_folder_is_one_line_before_any_diagnosis(leaf_setup, tmp_path, capsys):
    clip_dir, _, queries = leaf_setup
    blocker = tmp_path / "reports"
    blocker.write_text("a file, not a folder")
    image = str(queries / "rust" / "q-rust.png")
    code, out, err = demo(
        capsys, image, "--clip-model", str(clip_dir), "--out-dir", str(blocker / "leaf")
    )
    assert code == 1 and out == ""
    assert err.strip().splitlines()[-1] == (
        f"error: {blocker / 'leaf'}: a file is in the way of the folder for the reports"
    )
    assert "diagnos" not in err.lower()


def test_serve_on_a_busy_port_fails_before_any_model_loads(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["--serve", "--port", str(port), "--clip-model", str(tmp_path / "no-weights")]
        code, out, err = demo(capsys, *args)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"error: cannot serve on 127.0.0.1:{port} (Address already in use); "
        "choose another --port or --host"
    ]
