"""The second-look family: the agent whose second look is right most often, asked to look again
on every image, where that beats every first-look fusion (the study's Case 3 without its
retrieval vote); chosen by select only then, the same on arrays and through the graph, saved
in a policy file and run from it."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_policy_selection import compare_engines, read_wide, recorded_images_of

from agents.types import Prediction
from core.task import Task
from orchestrator.cli import main
from orchestrator.policies.families import (
    FamilyPolicy,
    SecondLook,
    SourceAnswers,
    family_from_dict,
)
from orchestrator.policies.policy_file import load_policy_selection
from orchestrator.replay.run import run_replay

LABELS = ["black-rot", "healthy", "rust", "scab"]


@pytest.fixture(scope="module")
def case3_without_vote(paper_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Case 3 with its retrieval columns left out: first looks near 0.59 at best, GPT-4o's
    recorded second look 0.875."""
    source = paper_dir / "case3_trust_rag.csv"
    rows, fields = read_wide(source)
    path = tmp_path_factory.mktemp("no_vote") / "case3_no_vote.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(
            f, [c for c in fields if not c.startswith("rag_")], extrasaction="ignore"
        )
        out.writeheader()
        out.writerows(rows)
    return path


def test_select_asks_the_best_second_look_when_first_looks_fall_far_short(
    case3_without_vote: Path,
):
    report = run_replay(case3_without_vote, folds=5, seed=0, policy="select")
    gpt_second = report["baselines"]["gpt"]["accuracy"]
    first_look_best = max(row["accuracy"] for row in report["fold_baselines"].values())
    assert gpt_second > first_look_best + 0.2
    assert report["families_chosen"] == ["second-look"] * 5
    assert report["accuracy"] == pytest.approx(gpt_second)
    # both first looks, then GPT-4o again on every image
    assert report["reeval_rate"] == 1.0
    assert report["vlm_calls_per_image"] == pytest.approx(3.0)
    for fold in report["fold_details"]:
        scores = fold["selection"]["scores"]
        assert scores["second-look"]["against"] == "trust"
        assert scores["second-look"]["wins"] > scores["second-look"]["losses"] + 10


def test_with_the_vote_the_trust_policy_keeps_its_place(paper_dir: Path):
    report = run_replay(paper_dir / "case3_trust_rag.csv", folds=5, seed=2, policy="select")
    assert report["families_chosen"] == ["trust"] * 5
    assert report["accuracy"] > 0.97 and report["reeval_rate"] < 0.25


@pytest.mark.parametrize("policy", ["second-look", "select"])
def test_second_look_decides_on_arrays_as_the_graph(case3_without_vote: Path, policy: str):
    assert compare_engines(case3_without_vote, policy, seed=1) == "second-look"


def fitted_second_look() -> SecondLook:
    # agent b's second look is always right, a's never: b is chosen
    truth = np.array([0, 1, 2, 3, 0, 1])
    wrong = (truth + 1) % 4
    answers = SourceAnswers(("a", "b"), np.stack([wrong, truth], axis=1), np.ones((6, 2)))
    family = SecondLook().fit(answers, truth, len(LABELS))
    assert family.source_ == "b"
    return family


def assess(policy: FamilyPolicy, predictions: list[Prediction], round_: int, max_rounds: int):
    task = Task(name="leaves", labels=LABELS, descriptions={y: y for y in LABELS})
    return asyncio.run(
        policy.assess(
            task=task,
            predictions=predictions,
            evidence=None,
            round=round_,
            max_rounds=max_rounds,
        )
    )


def test_the_policy_asks_once_then_answers_with_the_second_look():
    policy = FamilyPolicy(fitted_second_look(), labels=LABELS)
    first = [Prediction("a", "rust", 0.9), Prediction("b", "scab", 0.6)]
    asking = assess(policy, first, 0, 2)
    assert (asking.trusted, asking.reevaluate, asking.label) == (False, ["b"], "scab")
    answered = assess(policy, [*first, Prediction("b", "healthy", 0.7, round=1)], 1, 2)
    assert (answered.trusted, answered.reevaluate, answered.label) == (True, [], "healthy")
    assert answered.reason == "second-look: b's second look"
    # b said healthy on two fitting rows, right both times: (2 + 1) / (2 + 4), Laplace
    assert answered.confidence == pytest.approx(0.5)
    # no round left: b's first look, said so
    last = assess(policy, first, 0, 1)
    assert (last.trusted, last.reevaluate, last.label) == (True, [], "scab")
    assert "no second look" in last.reason
    # b failed its first look: no label yet, but still asked again
    failed = [Prediction("a", "rust", 0.9), Prediction("b", None, error="timeout")]
    blank = assess(policy, failed, 0, 2)
    assert (blank.label, blank.trusted, blank.reevaluate) == (None, False, ["b"])
    assert assess(policy, failed, 0, 1).trusted


def test_the_fitted_family_reloads_as_a_second_look():
    family = fitted_second_look()
    again = family_from_dict("second-look", family.to_dict(), len(LABELS))
    assert isinstance(again, SecondLook) and again.source_ == "b"
    assert np.array_equal(again.precision_, family.precision_)


def test_run_with_a_saved_second_look_file_asks_the_agent_again(
    case3_without_vote: Path, tmp_path: Path, capsys
):
    saved = tmp_path / "second_look.json"
    replay = ["eval", "replay", str(case3_without_vote), "--seed", "0"]
    assert main([*replay, "--save-policy", str(saved)]) == 0
    selection = load_policy_selection(saved)
    assert selection is not None and selection["chosen"] == "second-look"
    assert selection["family"]["source"] == "gpt"
    rows, _ = read_wide(case3_without_vote)
    changed = [r for r in rows if r["gpt_initial_pred"] != r["gpt_pred"]][:6]
    images = recorded_images_of(case3_without_vote, tmp_path / "images", changed)
    out = tmp_path / "decisions.jsonl"
    agents = [f"{a}=replay:{case3_without_vote}#{a}" for a in ("qwen", "gpt")]
    args = ["run", str(images), "-a", agents[0], "-a", agents[1], "--task", "apple-leaf"]
    capsys.readouterr()
    assert main([*args, "--policy-file", str(saved), "--out", str(out)]) == 0
    decided = {Path(d["image"]).name: d for d in map(json.loads, out.read_text().splitlines())}
    assert {n: d["label"] for n, d in decided.items()} == {
        r["image"]: r["gpt_pred"] for r in changed
    }
    assert all(d["rounds_used"] == 2 and d["policy"] == "second-look" for d in decided.values())
    for d in decided.values():
        again = [(p["agent"], p["round"]) for p in d["predictions"] if p["round"] > 0]
        assert again == [("gpt", 1)]
