"""``trustorch run``: kill mid-batch and resume, unreadable images, agents that cannot be built.

``make_scripted_agent`` builds a FAKE agent (``ScriptedAgent`` of test_runner: a real ``Agent``
implementation that answers the image's folder name instead of looking at it); the CLI loads it
through the ``py:<file>:<callable>`` agent spec, and it appends one line per call to a log file so
the tests can count which images reached an agent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main

HERE = Path(__file__).resolve()


def make_scripted_agent(
    name: str = "scripted", log: str = "", delay: str = "0", label: str = ""
) -> object:
    """FAKE agent for the CLI (see the module docstring); ``delay`` seconds per call."""
    import asyncio

    sys.path.insert(0, str(HERE.parent))
    from test_runner import ScriptedAgent

    class SlowScriptedAgent(ScriptedAgent):
        async def predict(self, image, task, **kw):  # type: ignore[no-untyped-def]
            await asyncio.sleep(float(delay))
            return await super().predict(image, task, **kw)

    return SlowScriptedAgent(name, label=label or None, log=Path(log) if log else None)


def agent_spec(name: str, log: Path | None = None, delay: float = 0.0) -> str:
    query = f"name={name}&delay={delay}" + (f"&log={log}" if log else "")
    return f"py:{HERE}:make_scripted_agent?{query}"


def make_images(root: Path, per_label: int) -> Path:
    sys.path.insert(0, str(HERE.parent))
    from test_runner import make_images as make

    return make(root, per_label)


def trustorch_command() -> list[str]:
    script = Path(sys.executable).with_name("trustorch")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from orchestrator.cli import entry; entry()"]


def _complete_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]


@pytest.mark.heavy
def test_killed_run_resumes_without_repeating_finished_images(tmp_path):
    data = make_images(tmp_path / "data", per_label=4)
    out, log = tmp_path / "out.jsonl", tmp_path / "calls.log"
    cmd = [
        *trustorch_command(),
        "run",
        str(data),
        "--agent",
        agent_spec("a", log, delay=0.15),
        "--agent",
        agent_spec("b", log, delay=0.15),
        "--out",
        str(out),
        "--concurrency",
        "2",
        "--json",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(_complete_lines(out)) < 3:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run wrote no line in 60 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {d["sha256"] for d in _complete_lines(out)}
    calls_before = len(log.read_text().splitlines())
    assert 3 <= len(done_before) < 12, "kill came too late to test resuming"

    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()

    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 12
    assert len({d["sha256"] for d in lines}) == 12
    for d in lines:  # the default profiles are not trusted: every image is looked at twice
        rounds = sorted((p["agent"], p["round"]) for p in d["predictions"])
        assert rounds == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    later_calls = [line.split() for line in log.read_text().splitlines()[calls_before:]]
    assert later_calls, "the resumed run called no agent at all"
    assert not {sha for _, sha, _ in later_calls} & done_before
    summary = json.loads(resumed.stdout)
    assert summary["images"] == 12 and summary["already_done"] >= len(done_before)
    assert summary["labelled"] == 12 and summary["reeval_rate"] == 1.0


def test_unreadable_image_is_reported_and_skipped(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_label=1)
    (data / "rust" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out.jsonl"
    code = main(
        [
            "run",
            str(data),
            "--agent",
            agent_spec("a"),
            "--policy",
            "majority",
            "--out",
            str(out),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["images"] == 3 and summary["decided"] == 3
    assert [Path(s["source"]).name for s in summary["skipped"]] == ["broken.png"]
    assert any("agent 'a' has no trust profile" in n for n in summary["notes"])
    assert summary["accuracy"] == 1.0 and summary["labelled"] == 3
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent", "replay:/nonexistent/case3.csv#gpt"], "/nonexistent/case3.csv: no such file"),
        (["--agent", "py:no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
        (["--agent", "AGENT_A", "--policy", "llm"], "the llm policy needs --llm-model"),
        (["--agent", "AGENT_A", "--policy", "wisdom"], "unknown policy 'wisdom'"),
    ],
)
def test_setup_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("TRUSTORCH_LLM_MODEL", raising=False)
    data = make_images(tmp_path / "data", per_label=1)
    args = [agent_spec("a") if a == "AGENT_A" else a for a in args]
    code = main(["run", str(data), *args, "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "o.jsonl").exists()


def test_llm_policy_without_key_says_how_to_provide_one(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for name in ("TRUSTORCH_LLM_BASE_URL", "OPENAI_BASE_URL", "TRUSTORCH_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    data = make_images(tmp_path / "data", per_label=1)
    args = ["--agent", agent_spec("a"), "--policy", "llm", "--llm-model", "o3-mini"]
    code = main(["run", str(data), *args, "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert "OPENAI_API_KEY" in err and "--llm-base-url" in err


def test_run_with_tiny_clip_and_retrieval_over_a_built_index(tmp_path, capsys, tiny_clip_dir):
    train = make_images(tmp_path / "train", per_label=3)
    test = make_images(tmp_path / "test", per_label=1)
    index_dir, out = tmp_path / "index", tmp_path / "out.jsonl"
    clip = str(shutil.copytree(tiny_clip_dir, tmp_path / "clip"))
    config = json.loads((tmp_path / "clip" / "tokenizer_config.json").read_text())
    config["model_max_length"] = 77  # as real CLIP folders record it: long prompts get truncated
    (tmp_path / "clip" / "tokenizer_config.json").write_text(json.dumps(config))
    build = ["index", "build", str(train), "--clip-model", clip, "--index-dir", str(index_dir)]
    assert main([*build, "--json"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    args = ["--agent", f"clip:{clip}", "--agent", "retrieval", "--index-dir", str(index_dir)]
    code = main(["run", str(test), *args, "--out", str(out), "--json", "-v"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["images"] == summary["decided"] == 3 and summary["failed"] == []
    assert summary["agent_failures"] == 0
    assert "perceive: retrieval:" in captured.err  # -v logs each graph step
    for d in (json.loads(x) for x in out.read_text().splitlines()):
        assert {p["agent"] for p in d["predictions"]} == {"clip", "retrieval"}
        assert all(p["error"] is None for p in d["predictions"])
        retrieval = next(p for p in d["predictions"] if p["agent"] == "retrieval")
        assert retrieval["label"] == d["truth"]  # the same colours are in the index
        assert sum(retrieval["scores"].values()) == pytest.approx(1.0)
        assert d["label"] is None or d["label"] in ("black-rot", "healthy", "rust", "scab")
        # the retrieval vote is fused once, as evidence, not again as a first-look answer
        assert set(d["weights"]) == {"clip", "retrieval"}
