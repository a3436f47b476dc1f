"""``trustorch run``: kill mid-batch and resume, unreadable images, agents that cannot be built.

``make_scripted_agent`` builds a FAKE agent (``ScriptedAgent`` of test_runner: a real ``Agent``
implementation that answers the image's folder name instead of looking at it); the CLI loads it
through the ``py:<file>:<callable>`` agent spec, and it appends one line per call to a log file so
the tests can count which images reached an agent.
"""

from __future__ import annotations

import json
import os
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
    from tiny_models import clip_with_token_limit

    clip = str(clip_with_token_limit(tiny_clip_dir, tmp_path / "clip"))
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


def test_a_renamed_retriever_names_the_evidence_and_its_profile(tmp_path, capsys, tiny_clip_dir):
    train = make_images(tmp_path / "train", per_label=2)
    test = make_images(tmp_path / "test", per_label=1)
    index_dir, out = tmp_path / "index", tmp_path / "out.jsonl"
    from tiny_models import clip_with_token_limit

    clip = str(clip_with_token_limit(tiny_clip_dir, tmp_path / "clip"))
    build = ["index", "build", str(train), "--clip-model", clip]
    assert main([*build, "--index-dir", str(index_dir), "--json"]) == 0
    args = ["--agent", f"clip:{clip}", "--agent", "rag=retrieval"]
    code = main(["run", str(test), *args, "--index-dir", str(index_dir), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    decisions = [json.loads(x) for x in out.read_text().splitlines()]
    assert {d["evidence"]["retriever"] for d in decisions} == {"rag"}
    assert all(set(d["weights"]) == {"clip", "rag"} for d in decisions)
    from eval.recorded.records import read_records

    records = read_records(out)
    assert sorted(records.agents) == ["clip", "rag"]


def _run_cli(tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    data = make_images(tmp_path / "data", per_label=1)
    code = main(["run", str(data), "--agent", agent_spec("a"), *args])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--concurrency", "0"), ("--max-rounds", "0"), ("--agent-timeout", "-1")],
)
def test_bad_numbers_fail_before_any_model_loads(tmp_path, capsys, option, value):
    # a CLIP folder that does not exist: building the agent would fail with another message
    args = ["--agent", f"clip:{tmp_path / 'no-clip'}", option, value]
    code, err = _run_cli(tmp_path, capsys, *args, "--out", str(tmp_path / "o.jsonl"))
    assert code == 2  # a usage error
    assert err.splitlines()[-1].startswith(f"error: Invalid value for '{option}'")
    assert f"must be at least 1, got {value}" in err or f"got {float(value)}" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_bad_trust_file_fails_before_any_model_loads(tmp_path, capsys):
    bad = tmp_path / "trust.json"
    bad.write_text('{"format": "something else"}')
    args = ["--agent", f"clip:{tmp_path / 'no-clip'}", "--trust", str(bad)]
    code, err = _run_cli(tmp_path, capsys, *args, "--out", str(tmp_path / "o.jsonl"))
    assert code == 1
    assert err.splitlines()[-1] == (
        f"error: {bad}: not a trust profile file (expected format 'trustorch-trust-profiles')"
    )
    assert not (tmp_path / "o.jsonl").exists()


def test_unusable_output_and_checkpoint_paths_are_one_line_errors(tmp_path, capsys):
    folder = tmp_path / "outdir"
    folder.mkdir()
    code, err = _run_cli(tmp_path, capsys, "--out", str(folder), "--resume")
    assert code == 1 and f"error: {folder}: " in err and "folder" in err

    code, err = _run_cli(tmp_path, capsys, "--out", "/proc/x/o.jsonl")
    assert code == 1 and err.splitlines()[-1].startswith("error: /proc/x: cannot make the folder")

    not_db = tmp_path / "notdb.sqlite"
    not_db.write_text("this is not a SQLite database, it is just text " * 40)
    out = tmp_path / "o.jsonl"
    code, err = _run_cli(tmp_path, capsys, "--out", str(out), "--checkpoint", str(not_db))
    assert code == 1
    assert err.splitlines()[-1].startswith(f"error: {not_db}: not a usable SQLite checkpoint")


def test_single_policy_must_name_a_source_of_the_run(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    code, err = _run_cli(tmp_path, capsys, "--policy", "single:nope", "--out", str(out))
    assert code == 1
    assert err.splitlines()[-1] == "error: policy 'single:nope': no source 'nope' here " + (
        "(sources: a)"
    )
    assert not out.exists()


def test_inputs_without_a_readable_image_fail(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "o.jsonl"
    code = main(["run", str(empty), "--agent", agent_spec("a"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert err.startswith(f"error: no readable images in {empty} (1 unreadable, 0 duplicate")
    assert "broken.jpg" in err and not out.exists()


def _profile_file(tmp_path: Path, profiles: dict) -> Path:
    from eval.profile import save_trust_profiles

    path = tmp_path / "trust.json"
    save_trust_profiles(path, profiles)
    return path


def _measured(name: str, labels, **update) -> object:
    from eval.profile import default_trust_profile

    return default_trust_profile(name, labels).model_copy(update={"default": False, **update})


def test_reeval_profiles_are_kept_and_used_for_second_looks(tmp_path, apple_task):
    import asyncio

    from agents.types import Prediction
    from orchestrator.components import build_policy, load_profiles

    labels = apple_task.labels
    sharp = [[20 if i == j else 0 for j in range(4)] for i in range(4)]  # never wrong again
    second = _measured("gpt@reeval", labels, confusion=sharp)
    path = _profile_file(tmp_path, {"gpt": _measured("gpt", labels), "gpt@reeval": second})
    profiles, notes = load_profiles(path, ["gpt"], task=apple_task)
    assert sorted(profiles) == ["gpt", "gpt@reeval"] and notes == []
    policy = build_policy("trust", task=apple_task, profiles=profiles)
    looks = [Prediction(agent="gpt", label="rust", confidence=0.9, round=r) for r in (0, 1)]
    got = asyncio.run(
        policy.assess(task=apple_task, predictions=looks, evidence=None, round=1, max_rounds=2)
    )
    # the sharp second-look profile: column 'rust' + 1 = [1, 1, 21, 1] / 24, uniform prior
    assert got.weights == {"gpt@reeval": 1.0}
    assert got.confidence == pytest.approx(21 / 24)


def test_profile_on_other_labels_or_a_bad_confusion_is_an_input_error(tmp_path, apple_task):
    from core.errors import InputError
    from orchestrator.components import load_profiles

    path = _profile_file(tmp_path, {"gpt": _measured("gpt", ["cat", "dog"])})
    with pytest.raises(InputError, match=r"trust\.json: trust profile of agent 'gpt' is for "):
        load_profiles(path, ["gpt"], task=apple_task)
    short = _measured("qwen@reeval", apple_task.labels, confusion=[[1, 0], [0, 1]])
    path = _profile_file(tmp_path, {"qwen@reeval": short})
    with pytest.raises(InputError, match="profile 'qwen@reeval': 'confusion' is 2 x "):
        load_profiles(path, ["qwen"], task=apple_task)


def test_policies_get_the_retrieval_source_and_no_default_one(apple_task):
    from orchestrator.components import build_policy

    for name in ("trust", "majority", "max-confidence", "single:a"):
        assert build_policy(name, task=apple_task, profiles={}).retrieval_source is None
        named = build_policy(name, task=apple_task, profiles={}, retrieval_source="retrieval")
        assert named.retrieval_source == "retrieval"


def test_name_prefix_renames_replay_agents(paper_dir, apple_task):
    from orchestrator.components import build_agents

    spec = f"q=replay:{paper_dir / 'case3_trust_rag.csv'}#qwen"
    built = build_agents([spec, f"replay:{paper_dir / 'case3_trust_rag.csv'}#gpt"], task=apple_task)
    assert [a.name for a in built.agents] == ["q", "gpt"]


def test_policy_file_settings_replace_the_default_thresholds(tmp_path, capsys):
    from orchestrator.policies.trust import TrustPolicy
    from orchestrator.policies.trust_fit import save_trust_policy

    policy_file = tmp_path / "policy.json"
    fitted = TrustPolicy.from_profiles({}, thresholds={"first": 0.0}, weights={"first": {"a": 2.0}})
    save_trust_policy(policy_file, fitted, fitted_on={"rows": 0})
    out = tmp_path / "o.jsonl"
    args = ["--policy-file", str(policy_file), "--out", str(out), "--json"]
    code, _ = _run_cli(tmp_path, capsys, *args)
    # the scripted answers sit under the default profile: never trusted without the file
    assert code == 0
    for d in (json.loads(x) for x in out.read_text().splitlines()):
        assert d["rounds_used"] == 1 and d["weights"] == {"a": 2.0}
    majority = ["--policy", "majority", "--out", str(tmp_path / "o2.jsonl")]
    code, err = _run_cli(tmp_path, capsys, *args[:2], *majority)
    assert code == 1 and "--policy-file holds trust policy settings" in err
    policy_file.write_text(
        '{"format": "trustorch-trust-policy", "version": 1, '
        '"policy": {"name": "trust", "weights": [], "thresholds": {}}}'
    )
    code, err = _run_cli(tmp_path, capsys, *args[:2], "--out", str(tmp_path / "o3.jsonl"))
    assert code == 1
    assert err.endswith(f"{policy_file}: field 'policy.weights': must be an object, got list")


def test_study_style_profiles_are_read_as_first_and_second_look(tmp_path, apple_task, paper_dir):
    from eval.profile import fit_trust_profiles, save_trust_profiles
    from eval.recorded.records import read_records
    from orchestrator.components import load_profiles

    records = read_records(paper_dir / "case3_trust_rag.csv", task=apple_task)
    fitted = fit_trust_profiles(records, agents=["qwen_initial", "qwen"], bootstrap=0, cv_folds=0)
    path = tmp_path / "trust.json"
    save_trust_profiles(path, fitted)
    profiles, notes = load_profiles(path, ["qwen"], task=apple_task)
    assert profiles["qwen"].accuracy == pytest.approx(79 / 160)  # qwen_initial: the first look
    assert profiles["qwen@reeval"].accuracy == pytest.approx(117 / 160)  # qwen: the second look
    assert notes == ["profiles 'qwen_initial' and 'qwen' read as qwen's first and second look"]


def test_resuming_with_another_configuration_is_refused(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_label=1)
    out = tmp_path / "out.jsonl"
    base = ["run", str(data), "--agent", agent_spec("a"), "--out", str(out), "--json"]
    assert main([*base, "--policy", "majority"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    lines = out.read_text().splitlines()
    config = json.loads(lines[0])["run"]
    assert config["policy"] == "majority" and config["agents"] == [agent_spec("a")]
    assert config["task"] == "apple-leaf" and config["trust_sha256"] is None
    assert all(json.loads(x)["run"] == config for x in lines)

    assert main([*base, "--policy", "max-confidence", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: {out}: --resume with another configuration than the one that wrote this file "
        "(policy 'majority' -> 'max-confidence'); choose another --out"
    )
    assert out.read_text().splitlines() == lines

    assert main([*base, "--policy", "majority", "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["already_done"] == len(lines) and summary["decided"] == 0
    assert out.read_text().splitlines() == lines


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("colour=red", "error: no agent takes option(s) ['colour']"),
        (
            "batch_size=abc",
            "error: agent spec 'clip': option batch_size='abc' must be an integer >= 1",
        ),
        ("gpt.timeout_s=3", "error: --agent-option gpt.timeout_s: no agent of kind or name 'gpt'"),
        ("batch_size", "error: --agent-option must be [kind or name.]key=value, got 'batch_size'"),
    ],
)
def test_bad_agent_options_fail_before_any_model_loads(tmp_path, capsys, option, message):
    # a CLIP folder that does not exist: building the agent would fail with another message
    data = make_images(tmp_path / "data", per_label=1)
    args = ["run", str(data), "--agent", "clip", "--clip-model", str(tmp_path / "no-clip")]
    code = main([*args, "--agent-option", option, "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(message)
    assert not (tmp_path / "o.jsonl").exists()


def test_agent_options_are_part_of_the_run_configuration(tmp_path, capsys, tiny_clip_dir):
    from tiny_models import clip_with_token_limit

    data = make_images(tmp_path / "data", per_label=1)
    clip = str(clip_with_token_limit(tiny_clip_dir, tmp_path / "clip"))
    out = tmp_path / "out.jsonl"
    base = ["run", str(data), "-a", f"clip:{clip}", "-a", agent_spec("a"), "--out", str(out)]
    options = ["--agent-option", "clip.batch_size=2", "--agent-option", 'templates=["$label"]']
    assert main([*base, *options, "--json"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    lines = out.read_text().splitlines()
    config = json.loads(lines[0])["run"]
    assert config["agent_options"] == {f"clip:{clip}": {"batch_size": 2, "templates": ["$label"]}}

    other = ["--agent-option", "clip.batch_size=3", "--agent-option", 'templates=["$label"]']
    assert main([*base, *other, "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--resume with another configuration" in err and "agent_options" in err
    assert main([*base, *options, "--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["already_done"] == len(lines) and summary["decided"] == 0


def test_an_api_key_option_is_never_recorded(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_label=1)
    out = tmp_path / "out.jsonl"
    key = "sk-recorded-nowhere-0123456789"
    args = ["run", str(data), "-a", agent_spec("a"), "-a", "gpt=openai:gpt-4o", "--out", str(out)]
    options = [f"gpt.api_key={key}", "gpt.base_url=http://127.0.0.1:9/v1", "max_retries=0"]
    for option in options:
        args += ["--agent-option", option]
    assert main([*args, "--policy", "majority", "--json"]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert key not in out.read_text() + captured.out + captured.err
    config = json.loads(out.read_text().splitlines()[0])["run"]
    assert config["agent_options"] == {
        "gpt=openai:gpt-4o": {"base_url": "http://127.0.0.1:9/v1", "max_retries": 0}
    }
