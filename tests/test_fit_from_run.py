"""A labelled ``trustorch run`` output fits the whole policy (``eval replay RUN.jsonl
--save-policy``), reaching the settings the same answers give in a wide file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.study import resolve_data_path
from orchestrator.cli import main
from orchestrator.policies.trust import TrustPolicy
from orchestrator.policies.trust_fit import save_trust_policy

AGENTS = ("qwen", "gpt")


def study_images(root: Path, n: int) -> Path:
    """ImageFolder files named like Case 3's rows: the replay agents find their answers by name."""
    with resolve_data_path("study:case3").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:n]
    rng = np.random.default_rng(0)
    for row in rows:
        folder = root / row["category"]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / row["image"], format="PNG")
    return root


def wide_copy(decisions: list[dict], path: Path) -> Path:
    """The same answers as a study-style wide file (first looks as ``X_initial``)."""
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        header = ["id", "image", "category"]
        header += [f"{a}_initial_{f}" for a in AGENTS for f in ("pred", "conf")]
        out.writerow(header + [f"{a}_{f}" for a in AGENTS for f in ("pred", "conf")])
        for d in decisions:
            look = {(p["agent"], p["round"]): p for p in d["predictions"]}
            cells = [d["sha256"], d["image"], d["truth"]]
            for round_ in (0, 1):
                for a in AGENTS:
                    cells += [look[a, round_]["label"], look[a, round_]["confidence"]]
            out.writerow(cells)
    return path


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> Path:
    """A run in which every image got its second look (a policy never trusting early)."""
    tmp = tmp_path_factory.mktemp("fit-from-run")
    force = tmp / "force.json"
    never_early = TrustPolicy.from_profiles({}, thresholds={"first": None, "evidence": None})
    save_trust_policy(force, never_early, fitted_on={"rows": 0})
    out = tmp / "run.jsonl"
    args = ["run", str(study_images(tmp / "data", 40)), "--task", "apple-leaf"]
    args += [x for a in AGENTS for x in ("-a", f"{a}=replay:study:case3#{a}")]
    assert main([*args, "--policy-file", str(force), "-o", str(out)]) == 0
    return out


def test_a_run_output_fits_the_policy_a_wide_file_of_its_answers_fits(labelled_run, tmp_path):
    decisions = [json.loads(line) for line in labelled_run.read_text().splitlines()]
    assert len(decisions) == 40 and {d["rounds_used"] for d in decisions} == {2}
    from_run, from_wide = tmp_path / "from-run.json", tmp_path / "from-wide.json"
    replay = ["eval", "replay", "--policy", "trust", "--save-policy"]
    assert main([*replay[:2], str(labelled_run), *replay[2:], str(from_run)]) == 0
    wide = wide_copy(decisions, tmp_path / "wide.csv")
    assert main([*replay[:2], str(wide), *replay[2:], str(from_wide)]) == 0
    run_policy = json.loads(from_run.read_text())["policy"]
    assert run_policy == json.loads(from_wide.read_text())["policy"]
    assert set(run_policy["weights"]["reeval"]) == {"qwen@reeval", "gpt@reeval"}


def test_a_run_output_without_save_policy_says_what_it_can_do(labelled_run, capsys):
    assert main(["eval", "replay", str(labelled_run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it can fit a policy (--save-policy FILE)" in err


def test_the_fit_reports_first_and_second_looks(labelled_run, tmp_path, capsys):
    saved = tmp_path / "p.json"
    assert main(["eval", "replay", str(labelled_run), "--save-policy", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "select policy fitted on the 40 labelled decisions of run.jsonl" in out
    assert "qwen (40 first looks, 40 second)" in out and saved.is_file()
