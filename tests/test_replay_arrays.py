"""Replay without the graph decides every row as the graph does: labels, confidences, rounds,
agent calls, and so every figure of the report, on the study's files and on a damaged copy."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from eval.recorded.records import read_records
from orchestrator.cli import main
from orchestrator.policies.trust import TrustPolicy
from orchestrator.replay.arrays import engine_for
from orchestrator.replay.run import (
    ReplaySetup,
    decide_fold,
    policy_fitter,
    replay_folds,
    run_replay,
)

TRUST_VARIANTS = {
    "trust": {},
    "trust-joint-keep": {"agent_model": "joint", "keep_first_looks": True},
    "trust-0.999-gpt": {"trust_threshold": 0.999, "reevaluate": ["gpt"]},
    "trust-calibrated-0.95": {"agent_model": "calibrated", "trust_threshold": 0.95},
}
BASELINES = ("majority", "max-confidence", "single:gpt", "single:rag")


@pytest.fixture(scope="module")
def case3(paper_dir: Path) -> Path:
    return paper_dir / "case3_trust_rag.csv"


@pytest.fixture(scope="module")
def damaged(case3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """case3 with answers outside the labels, empty second looks, rows without a vote, votes
    without scores, and rows where every source fails."""
    with case3.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), list(reader.fieldnames or [])
    rng = random.Random(1)
    for row in rows:
        u = rng.random()
        if u < 0.08:
            row["qwen_initial_pred"] = "powdery-mildew"
        elif u < 0.14:
            row["gpt_pred"] = ""
        elif u < 0.20:
            row.update(rag_pred="", rag_conf="", rag_scores_json="")
        elif u < 0.24:
            row.update(qwen_initial_pred="mildew", gpt_initial_pred="")
        elif u < 0.27:
            row.update(qwen_initial_pred="", gpt_initial_pred="", rag_pred="", rag_scores_json="")
        elif u < 0.30:
            row["rag_scores_json"] = ""
    out = tmp_path_factory.mktemp("damaged") / "case3_damaged.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out


def compare_one_fold(path: Path, policy: str, options: dict, seed: int, rounds: list[int]):
    """Fit on the other folds of one held-out fold; decide it on both engines per round cap."""
    records = read_records(path)
    setup = ReplaySetup.of(path, records)
    held = replay_folds(setup.images, 5, seed)[seed % 5]
    train = [li.extra["id"] for i, li in enumerate(setup.images) if i not in set(held)]
    fitted = policy_fitter(policy, **options)(records, setup.columns, train, setup.retrieval, seed)
    images = [setup.images[i] for i in held]
    seen = {"reevaluated": 0, "abstained": 0}
    for max_rounds in rounds:
        engine, fast = decide_fold(setup, fitted, images, max_rounds=max_rounds)
        assert engine == ("arrays" if isinstance(fitted, TrustPolicy) else "direct")
        used, slow = decide_fold(setup, fitted, images, max_rounds=max_rounds, engine="graph")
        assert used == "graph" and len(fast) == len(slow) == len(images)
        for a, g in zip(fast, slow, strict=True):
            assert (a.image, a.truth, a.label) == (g.image, g.truth, g.label)
            assert (a.rounds_used, a.calls) == (g.rounds_used, g.calls)
            assert a.confidence == pytest.approx(g.confidence, abs=1e-9)
        seen["reevaluated"] += sum(d.reevaluated for d in fast)
        seen["abstained"] += sum(d.abstained for d in fast)
    return seen


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("variant", list(TRUST_VARIANTS))
def test_trust_on_arrays_decides_as_the_graph(case3: Path, variant: str, seed: int):
    seen = compare_one_fold(case3, "trust", TRUST_VARIANTS[variant], seed, [1, 2, 3])
    if variant == "trust-0.999-gpt":
        assert seen["reevaluated"] > 20  # the second stage and its rounds are exercised


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("variant", ["trust", "trust-0.999-gpt", "trust-joint-keep"])
def test_trust_on_arrays_decides_as_the_graph_on_damaged_answers(
    damaged: Path, variant: str, seed: int
):
    records = read_records(damaged)
    assert records.invalid_predictions["rag"] > 0 and records.invalid_predictions["gpt"] > 0
    seen = compare_one_fold(damaged, "trust", TRUST_VARIANTS[variant], seed, [1, 2, 3])
    assert seen["abstained"] > 0  # rows where no source answers


@pytest.mark.parametrize("policy", BASELINES)
def test_baselines_off_the_graph_decide_as_the_graph(case3: Path, damaged: Path, policy: str):
    for path in (case3, damaged):
        compare_one_fold(path, policy, {}, 1, [1, 2])


def test_case1_without_retrieval_or_second_looks(paper_dir: Path):
    case1 = paper_dir / "case1_zero_shot.csv"
    seen = compare_one_fold(case1, "trust", TRUST_VARIANTS["trust-calibrated-0.95"], 0, [1, 2])
    assert seen["abstained"] > 0 and seen["reevaluated"] == 0
    compare_one_fold(case1, "majority", {}, 3, [2])


def test_the_whole_report_is_the_same_on_both_engines(case3: Path):
    fast = run_replay(case3, folds=5, seed=2)
    slow = run_replay(case3, folds=5, seed=2, engine="graph")
    assert (fast.pop("engine"), slow.pop("engine")) == ("arrays", "graph")
    assert fast == slow


class PluginPolicy:
    """A policy replay does not know (a plug-in): the trust policy's answers, under its name."""

    def __init__(self, inner: TrustPolicy) -> None:
        self.inner = inner
        self.name = "plugin"
        self.assess_after_retrieval = inner.assess_after_retrieval

    async def assess(self, **kwargs):
        return await self.inner.assess(**kwargs)


def test_a_policy_without_an_array_path_runs_the_graph(case3: Path):
    fit_trust = policy_fitter("trust")

    def fit(*args):
        return PluginPolicy(fit_trust(*args))

    report = run_replay(case3, folds=5, seed=1, fit_policy=fit)
    assert report["engine"] == "graph" and engine_for(PluginPolicy(TrustPolicy())) == "graph"
    trust = run_replay(case3, folds=5, seed=1)
    for key in ("accuracy", "ece", "reeval_rate", "vlm_calls_per_image", "errors"):
        assert report[key] == trust[key]


def table_rows(text: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.split("\u2502")[1:-1]] for line in text.splitlines()]
    return {row[0]: row[1:] for row in rows if row}


def test_cli_trace_writes_every_decision_of_the_graph(case3: Path, tmp_path: Path, capsys):
    trace = tmp_path / "decisions.jsonl"
    assert (
        main(["eval", "replay", str(case3), "--policy", "trust", "--graph", "--trace", str(trace)])
        == 0
    )
    graph = table_rows(capsys.readouterr().out)
    assert main(["eval", "replay", str(case3), "--policy", "trust", "--json"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["engine"] == "arrays"
    assert graph["trust"] == [
        f"{fast[k]:.3f}" for k in ("accuracy", "macro_f1", "ece", "reeval_rate")
    ] + [f"{fast['vlm_calls_per_image']:.3f}"]
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(lines) == 160 and {d["seed"] for d in lines} == {0}
    assert sum(d["rounds_used"] > 1 for d in lines) == round(fast["reeval_rate"] * 160)
    wrong = [d for d in lines if d["label"] != d["truth"]]
    assert [d["image"] for d in wrong] == [e["id"] for e in fast["errors"]]
    assert all(d["assessments"] and d["notes"] and d["predictions"] for d in lines)
