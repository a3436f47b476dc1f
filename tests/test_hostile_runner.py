"""``trustorch run`` against hostile use: two writers on one output, stale and shared
checkpoints, a run killed before its first line and resumed with other agents, agents that all
fail, and bad option values on every command.

The agents are ``ScriptedAgent`` FAKES (see test_runner and test_run_cli), loaded by the CLI
through ``py:`` specs, among them the gated one of gated_agent.py (it answers only once its gate
file exists, so a run is held open while another process tries its output), plus the real
OpenAI adapter talking to the loopback server of openai_server.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from gated_agent import gated_spec
from openai_server import error_reply, openai_server
from test_run_cli import agent_spec, make_images, trustorch_command

from core.errors import InputError
from core.files import lock_for_writing, lock_path_of, writer_lock
from orchestrator.cli import main

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]


def _log_lines(log: Path, first_word: str) -> list[list[str]]:
    if not log.exists():
        return []
    return [x.split() for x in log.read_text().splitlines() if x.split()[0] == first_word]


def _wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 90
    while not condition():
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"the run ended before {what}: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within 90 s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("second", [[], ["--resume"]], ids=["fresh", "resume"])
def test_a_second_run_on_a_busy_output_is_refused_and_writes_nothing(tmp_path, second):
    data = make_images(tmp_path / "data", per_label=2)
    out, log, gate = tmp_path / "out.jsonl", tmp_path / "calls.log", tmp_path / "gate"
    args = ["run", str(data), "-a", gated_spec("g", log, gate), "--policy", "majority"]
    cmd = [*trustorch_command(), *args, "--out", str(out), "-j", "2", "--json"]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_until(lambda: _log_lines(log, "g"), first, "agent call")
        assert lock_path_of(out).read_text().strip() == str(first.pid)

        other = subprocess.run([*cmd, *second], env=ENV, capture_output=True, timeout=120)

        assert other.returncode == 1 and other.stdout == b""
        assert other.stderr.decode().strip().splitlines() == [
            f"error: {out}: the output is being written by another trustorch run "
            f"(pid {first.pid}); wait for it to end"
        ]
        gate.touch()
        stdout, stderr = first.communicate(timeout=120)
    finally:
        _stop(first)
    assert first.returncode == 0, stderr.decode()
    lines = _lines(out)
    assert len(lines) == 6 == len({d["sha256"] for d in lines})
    assert json.loads(stdout)["decided"] == 6
    assert not lock_path_of(out).exists()


def test_a_stale_shared_checkpoint_hands_no_answer_to_another_agent_set(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_label=1)
    shared, log = tmp_path / "shared.sqlite", tmp_path / "calls.log"
    base = ["run", str(data), "--policy", "majority", "--checkpoint", str(shared), "--json"]
    first = [*base, "-a", agent_spec("a", log), "--out", str(tmp_path / "a.jsonl")]
    assert main([*first, "--keep-checkpoint"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert shared.exists()

    spec_b = agent_spec("b", log)
    code = main([*base, "-a", spec_b, "--out", str(tmp_path / "b.jsonl"), "--resume"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["decided"] == 3 and summary["resumed_from_checkpoint"] == 0
    assert len(_log_lines(log, "b")) == 3  # b was asked about every image
    for d in _lines(tmp_path / "b.jsonl"):
        assert [p["agent"] for p in d["predictions"]] == ["b"]
        assert d["run"]["agents"] == [spec_b]


def test_a_run_killed_before_its_first_line_resumes_with_other_agents(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_label=1)
    out, log, gate = tmp_path / "out.jsonl", tmp_path / "calls.log", tmp_path / "never"
    agents = ["-a", agent_spec("a", log), "-a", gated_spec("slow", log, gate)]
    args = ["run", str(data), *agents, "--policy", "majority", "--out", str(out), "-j", "3"]
    killed = subprocess.Popen(
        [*trustorch_command(), *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        calls = lambda: len(_log_lines(log, "a")) == len(_log_lines(log, "slow")) == 3  # noqa: E731
        _wait_until(calls, killed, "call of both agents on every image")
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    finally:
        _stop(killed)
    assert _lines(out) == [] and lock_path_of(out).exists()  # a stale lock file, no lock

    spec_b = agent_spec("b", log)
    code = main(
        ["run", str(data), "-a", spec_b, "--policy", "majority", "--out", str(out), "--resume"]
    )

    err = capsys.readouterr().err
    assert code == 0, err
    assert "KeyError" not in err
    lines = _lines(out)
    assert len(lines) == 3 == len({d["sha256"] for d in lines})
    for d in lines:
        assert [p["agent"] for p in d["predictions"]] == ["b"] and d["label"] == d["truth"]
    assert len(_log_lines(log, "b")) == 3
    assert not lock_path_of(out).exists()


def _openai_agent(server_url: str) -> list[str]:
    options = [f"gpt.base_url={server_url}", "gpt.api_key=sk-test", "max_retries=0"]
    return ["-a", "gpt=openai:gpt-4o", *[x for o in options for x in ("--agent-option", o)]]


def test_every_agent_failing_on_every_image_is_a_non_zero_exit(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_label=1)
    out = tmp_path / "out.jsonl"
    with openai_server([error_reply(500, "the model is down")]) as server:
        args = ["run", str(data), *_openai_agent(server.base_url), "--policy", "majority"]
        code = main([*args, "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("error: every agent failed on every image (3 images; first: gpt: ")
    assert "the model is down" in line
    assert line.endswith(f"their lines in {out} hold no agent's answer")
    summary = json.loads(captured.out)
    assert summary["decided"] == 3 and summary["no_agent_answered"] == 3
    assert [d["label"] for d in _lines(out)] == [None] * 3  # abstentions, errors in the trace


def test_agents_predict_exits_non_zero_when_every_agent_failed(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_label=1)
    image = next((data / "rust").iterdir())
    with openai_server([error_reply(500, "the model is down")]) as server:
        code = main(["agents", "predict", str(image), *_openai_agent(server.base_url), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out)["predictions"][0]["label"] is None
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: every agent failed on every image (1 images; first: gpt:")


def test_a_run_that_decided_every_image_removes_its_checkpoint(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_label=2)
    out = tmp_path / "out.jsonl"
    checkpoint = tmp_path / "out.jsonl.checkpoints.sqlite"
    args = ["run", str(data), "-a", agent_spec("a"), "--policy", "majority", "--json"]
    assert main([*args, "--out", str(out), "--keep-checkpoint"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(checkpoint)
    kept = checkpoint.stat().st_size
    assert kept > out.stat().st_size  # what the cleanup saves: more than the output itself
    out.unlink()

    assert main([*args, "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out.jsonl"]
    # a run resumed over a finished output needs no checkpoint either
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["already_done"] == 6
    assert not checkpoint.exists()


def test_a_shared_checkpoint_loses_only_the_finished_runs_threads(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_label=1)
    shared = tmp_path / "shared.sqlite"
    base = ["run", str(data), "--policy", "majority", "--checkpoint", str(shared)]
    a = [*base, "-a", agent_spec("a"), "--out", str(tmp_path / "a.jsonl"), "--keep-checkpoint"]
    assert main(a) == 0
    assert main([*base, "-a", agent_spec("b"), "--out", str(tmp_path / "b.jsonl")]) == 0
    capsys.readouterr()
    assert shared.exists()  # a's threads are still there
    assert main([*base, "-a", agent_spec("a"), "--out", str(tmp_path / "a2.jsonl")]) == 0
    assert not shared.exists()  # now no thread is left


def test_the_writer_lock_names_its_holder_and_outlives_no_process(tmp_path):
    target = tmp_path / "out.jsonl"
    with writer_lock(target, what="the output"):
        assert lock_path_of(target).read_text() == f"{os.getpid()}\n"
        with pytest.raises(InputError) as err:
            lock_for_writing(target, what="the output")
        assert str(err.value) == (
            f"{target}: the output is being written by another trustorch run "
            f"(pid {os.getpid()}); wait for it to end"
        )
    assert not lock_path_of(target).exists()
    lock_path_of(target).write_text("999999\n")  # left by a killed run: no lock held on it
    lock = lock_for_writing(target, what="the output")
    assert lock_path_of(target).read_text() == f"{os.getpid()}\n"
    lock.release()


def test_the_fingerprint_separates_configurations(apple_task):
    from test_runner import ScriptedAgent

    from core.images import ImageRef
    from orchestrator.graph import build_graph
    from orchestrator.policies import make_policy

    image = ImageRef(source="x.png", sha256="ab" * 32)

    def thread(agents=("a",), policy="majority", rounds=2, configuration=None) -> str:
        graph = build_graph(
            task=apple_task,
            agents=[ScriptedAgent(n) for n in agents],
            policy=make_policy(policy),
            max_rounds=rounds,
            configuration=configuration,
        )
        return graph.thread_id(image)

    assert thread() == thread() and thread().endswith(":" + "ab" * 32)
    others = [
        thread(agents=("b",)),
        thread(agents=("a", "b")),
        thread(policy="max-confidence"),
        thread(rounds=3),
        thread(configuration={"trust_sha256": "1"}),
    ]
    assert len({thread(), *others}) == 6


RUN = ["run", "missing-folder", "-a", "clip:/no/clip", "-o", "{out}"]
CALIBRATION = ["eval", "calibration", "missing.csv"]
REPLAY = ["eval", "replay", "missing.csv"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*RUN, "-j", "0"], "Invalid value for '--concurrency' / '-j': must be at least 1"),
        ([*RUN, "--max-rounds", "0"], "Invalid value for '--max-rounds': must be at least 1"),
        ([*RUN, "--agent-timeout", "nan"], "'--agent-timeout': must be a number > 0.0, got nan"),
        ([*RUN, "--agent-timeout", "0"], "'--agent-timeout': must be a number > 0.0, got 0.0"),
        ([*RUN, "--policy", "foo"], "Invalid value for '--policy': unknown policy 'foo'"),
        ([*RUN, "--policy", "single:"], "policy 'single' needs a source"),
        (["agents", "predict", "x.png", "--device", "gpu"], "'gpu' is not a device"),
        ([*CALIBRATION, "--bins", "0"], "Invalid value for '--bins': must be at least 1, got 0"),
        ([*CALIBRATION, "--method", "foo"], "Invalid value for '--method': 'foo' is not one of"),
        ([*CALIBRATION, "--ocr-threshold", "nan"], "'--ocr-threshold': must be a number in"),
        ([*CALIBRATION, "--folds", "1"], "'--folds': must be 0 (none) or at least 2, got 1"),
        (["eval", "trust", "missing.csv", "--out", "{out}", "--bins", "0"], "'--bins': must be"),
        (["eval", "retrieval", "-k", "0"], "Invalid value for '-k' / '--k'"),
        ([*REPLAY, "--policy", "foo"], "Invalid value for '--policy': unknown policy 'foo'"),
        (
            [*REPLAY, "--policy", "llm"],
            "unknown policy 'llm' (choose from select, best-single, dawid-skene, stacking, "
            "second-look, trust,",
        ),
        ([*REPLAY, "--max-rounds", "0"], "'--max-rounds': must be at least 1, got 0"),
        ([*REPLAY, "--folds", "1"], "'--folds': must be at least 2, got 1"),
        ([*REPLAY, "--seeds", "4-x"], "--seeds must be a range like 0-4"),
        ([*REPLAY, "--trust-threshold", "1.5"], "'--trust-threshold': must be a number in"),
        ([*REPLAY, "--policy", "majority", "--trust-threshold", "0.5"], "needs --policy trust"),
        ([*REPLAY, "--policy", "majority", "--save-policy", "{out}"], "needs --policy trust"),
        (["index", "build", "missing", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["index", "build", "missing", "--device", "gpu"], "'gpu' is not a device"),
        (["demo", "leaf", "x.png", "--max-rounds", "0"], "Invalid value for '--max-rounds'"),
        (["demo", "leaf", "--serve", "--port", "0"], "Invalid value for '--port'"),
    ],
)
def test_bad_option_values_are_usage_errors_found_before_any_work(
    tmp_path, capsys, monkeypatch, argv, message
):
    # every input named here is missing: reading one, or loading a model, would fail otherwise
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o.json"
    code = main([a.format(out=out) for a in argv])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: Invalid value") and message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        ([*REPLAY, "--save-policy", "{blocker}/p.json"], "the policy file"),
        ([*REPLAY, "--trace", "{blocker}/t.jsonl"], "the trace"),
        ([*RUN, "--out"], "the output"),
        ([*RUN, "--checkpoint"], "the checkpoint"),
        (["eval", "trust", "missing.csv", "--out", "{blocker}/p.json"], "the trust profiles"),
        (["demo", "leaf", "x.png", "--out-dir", "{blocker}/r"], "the reports"),
    ],
)
def test_unwritable_output_paths_are_refused_before_any_work(tmp_path, capsys, argv, what):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    argv = [a.format(out=tmp_path / "o.jsonl", blocker=blocker) for a in argv]
    if argv[-1] in ("--out", "--checkpoint"):
        argv.append(f"{blocker}/x")
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    # the replay, the file reads and the model loads never started: the inputs are missing
    assert captured.err.strip().splitlines() == [
        f"error: {blocker}: a file is in the way of the folder for {what}"
        if not argv[-1].endswith("/r")
        else f"error: {blocker}/r: a file is in the way of the folder for {what}"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
