"""The run summary tells the truth: coverage beside accuracy, every-abstained said with its
reason, and the policy's fallbacks counted (issue: summaries that said `failed 0, accuracy 1.000`
while the llm policy had fallen back to a vote on most images)."""

from __future__ import annotations

import json

from test_run_cli import agent_spec, make_images

from core.task import load_task
from orchestrator.cli import main
from orchestrator.runner import summarise


def _decision(label, truth, *, confidence=0.9, fallback="", reason="ok"):
    return {
        "label": label,
        "truth": truth,
        "confidence": confidence,
        "rounds_used": 1,
        "predictions": [],
        "assessments": [{"reason": reason, "fallback": fallback}],
    }


def test_accuracy_is_on_the_answered_images_and_coverage_says_how_many():
    task = load_task("apple-leaf")
    decisions = [
        _decision("rust", "rust"),
        _decision("scab", "rust"),
        _decision("healthy", "healthy"),
        _decision(None, "scab", confidence=0.25, reason="sources disagree"),
    ]
    got = summarise(decisions, task)
    assert (got["n"], got["answered"], got["abstained"]) == (4, 3, 1)
    assert got["coverage"] == 0.75
    assert got["accuracy"] == 2 / 3 and got["accuracy_all"] == 2 / 4
    assert got["abstention_reasons"] == [{"reason": "sources disagree", "n": 1}]
    assert got["policy_fallbacks"] == 0


def test_fallbacks_are_counted_with_their_reasons():
    task = load_task("apple-leaf")
    decisions = [
        _decision("rust", "rust", fallback="connection error"),
        _decision("rust", "rust", fallback="connection error"),
        _decision("scab", "scab"),
    ]
    got = summarise(decisions, task)
    assert got["policy_fallbacks"] == 2
    assert got["policy_fallback_reasons"] == [{"reason": "connection error", "n": 2}]


def test_no_trust_profiles_every_image_abstains_and_the_summary_says_why(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_label=1)
    out = tmp_path / "out.jsonl"
    code = main(["run", str(data), "-a", agent_spec("a"), "--task", "apple-leaf", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "answered (coverage)" in captured.out and "0 (0.0%)" in captured.out
    assert "accuracy (answered)" not in captured.out
    line = next(x for x in captured.err.splitlines() if x.startswith("every decision abstained"))
    assert "(3 images); no trust profile for a: fit them" in line and "--trust" in line

    args = ["run", str(data), "-a", agent_spec("a"), "--task", "apple-leaf", "-o", str(out)]
    code = main([*args, "--resume", "--json"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["already_done"], summary["decided"], summary["answered"]) == (3, 0, 0)
    assert summary["coverage"] == 0.0 and summary["accuracy_all"] == 0.0
    assert "accuracy" not in summary and summary["abstention_reasons"]


def test_an_llm_policy_that_cannot_reach_its_server_is_counted_as_falling_back(
    tmp_path, capsys, retries_without_waiting
):
    data = make_images(tmp_path / "data", per_label=1)
    out = tmp_path / "out.jsonl"
    args = ["run", str(data), "-a", agent_spec("a"), "-a", agent_spec("b"), "--task", "apple-leaf"]
    args += ["--policy", "llm", "--llm-model", "m", "--llm-base-url", "http://127.0.0.1:9/v1"]
    code = main([*args, "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["policy_fallbacks"] == summary["n"] == 3
    assert "connection" in summary["policy_fallback_reasons"][0]["reason"].lower()
    assert summary["accuracy"] == 1.0  # the scripted agents answer the folder's label
    assert retries_without_waiting  # each call was retried (without its backoff waits)


def test_a_policy_file_fitted_with_a_retriever_is_refused_without_one(tmp_path, capsys):
    from orchestrator.policies.trust import TrustPolicy
    from orchestrator.policies.trust_fit import save_trust_policy

    policy_file = tmp_path / "policy.json"
    weights = {"first": {"a": 1.0, "rag": 1.0}, "reeval": {"a@reeval": 1.0, "rag": 0.5}}
    fitted = TrustPolicy.from_profiles({}, retrieval_source="rag", weights=weights)
    save_trust_policy(policy_file, fitted, fitted_on={"rows": 0})
    data = make_images(tmp_path / "data", per_label=1)
    out = tmp_path / "out.jsonl"
    args = ["run", str(data), "-a", agent_spec("a"), "--task", "apple-leaf", "-o", str(out)]
    assert main([*args, "--policy-file", str(policy_file)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--policy-file weighs source(s) 'rag' that this run does not have (it has a)" in err
    assert "-a NAME=retrieval and --index-dir" in err
    assert not out.exists()


def test_run_alpha_answers_only_singleton_conformal_sets(tmp_path, capsys):
    import csv

    import numpy as np
    from PIL import Image

    from core.study import resolve_data_path

    folder = tmp_path / "imgs"
    folder.mkdir()
    with resolve_data_path("study:case1").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:20]
    rng = np.random.default_rng(0)
    for row in rows:  # the replay agents find their answers by file name
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / row["image"], format="PNG")
    policy, trust = tmp_path / "p.json", tmp_path / "trust.json"
    fit = ["eval", "replay", "study:case1", "--policy", "trust"]
    assert main([*fit, "--save-policy", str(policy), "--alpha", "0.1"]) == 0
    assert main(["eval", "trust", "study:case1", "--task", "apple-leaf", "--out", str(trust)]) == 0
    out = tmp_path / "out.jsonl"
    args = ["run", str(folder), "-a", "qwen=replay:study:case1#qwen"]
    args += ["-a", "gpt=replay:study:case1#gpt", "--task", "apple-leaf", "--trust", str(trust)]
    assert main([*args, "--alpha", "0.1", "-o", str(out)]) == 2  # no policy file
    assert "--policy-file saved by" in capsys.readouterr().err
    code = main([*args, "--policy-file", str(policy), "--alpha", "0.1", "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    decisions = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(decisions) == 20
    assert all((d["label"] is None) == (len(d["prediction_set"]) != 1) for d in decisions)
    assert any(d["label"] is None for d in decisions) and any(d["label"] for d in decisions)
    assert decisions[0]["run"]["alpha"] == 0.1
