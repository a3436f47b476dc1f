"""The select policy and the fusion families: fitted on training rows only, the same decisions
on arrays and through the graph, first-look-only agents fused, the choice in the policy file
and in the replay report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from eval.recorded.records import read_records
from orchestrator.cli import main
from orchestrator.policies.families import (
    ARRAY_FAMILIES,
    BestSingle,
    DawidSkene,
    SourceAnswers,
    Stacking,
    answers_from_records,
    family_from_dict,
    stacking_features,
)
from orchestrator.policies.policy_file import load_policy_selection, load_trust_policy_settings
from orchestrator.policies.select import (
    FAMILIES,
    MARGIN_Z,
    SECOND_LOOK_MARGIN_Z,
    STACKING_MARGIN_Z,
    SelectPolicy,
    beats,
    challenge_margins,
    choose_family,
    inner_cross_validation,
    preference,
)
from orchestrator.replay.run import (
    ReplaySetup,
    decide_fold,
    policy_fitter,
    replay_columns,
    replay_folds,
    run_replay,
)


@pytest.fixture(scope="module")
def case1(paper_dir: Path) -> Path:
    return paper_dir / "case1_zero_shot.csv"


@pytest.fixture(scope="module")
def case3(paper_dir: Path) -> Path:
    return paper_dir / "case3_trust_rag.csv"


def read_wide(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        return list(reader), list(reader.fieldnames or [])


def write_wide(path: Path, rows: list[dict[str, str]], fields: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def fold_split(path: Path, seed: int, fold: int):
    records = read_records(path)
    setup = ReplaySetup.of(path, records)
    held = replay_folds(setup.images, 5, seed)[fold]
    train = [li.extra["id"] for i, li in enumerate(setup.images) if i not in set(held)]
    return records, setup, held, train


@pytest.mark.parametrize("name", ["case1", "case3"])
def test_the_choice_does_not_see_the_test_fold(name: str, request, tmp_path: Path):
    # the held-out rows get adversarial truths (each one's label moved to the next label):
    # a selection that read them would change its inner-CV scores or its choice
    path: Path = request.getfixturevalue(name)
    records, setup, held, train = fold_split(path, seed=1, fold=2)
    labels = list(records.labels)
    rows, fields = read_wide(path)
    held_ids = {setup.images[i].extra["id"] for i in held}
    for row in rows:
        if row["id"] in held_ids:
            row["category"] = labels[(labels.index(row["category"]) + 1) % len(labels)]
    flipped = write_wide(tmp_path / path.name, rows, fields)
    fitted = [
        SelectPolicy(retrieval_source=setup.retrieval, seed=1).fit(
            read_records(p), setup.columns, ids=train
        )
        for p in (path, flipped)
    ]
    honest, adversarial = fitted
    assert honest.selection() == adversarial.selection()
    assert honest.trust_.to_dict() == adversarial.trust_.to_dict()
    # second-look is a candidate only where agents can look again (Case 3)
    assert set(honest.scores_) == set(FAMILIES) - ({"second-look"} if name == "case1" else set())
    # Case 3's agents look again: the trust policy is the incumbent, at the 5% margin
    first = "trust" if name == "case3" else "best-single"
    assert next(iter(honest.scores_)) == first
    margins = {f: s["margin_z"] for f, s in list(honest.scores_.items())[1:]}
    if name == "case3":
        assert set(margins.values()) == {SECOND_LOOK_MARGIN_Z}
    else:
        assert margins == {"trust": MARGIN_Z, "dawid-skene": MARGIN_Z, "stacking": 1.645}
    # the two files differ on every held-out row and only there
    truths = [{r.id: r.truth for r in read_records(p).records} for p in (path, flipped)]
    assert {i for i in truths[0] if truths[0][i] != truths[1][i]} == held_ids


def test_replay_fits_select_on_training_rows_only(case3: Path):
    fit_select = policy_fitter("select")
    seen: list[tuple[set[str], set[str]]] = []

    def spy(records, columns, train_ids, retrieval, seed):
        policy = fit_select(records, columns, train_ids, retrieval, seed)
        seen.append((set(train_ids), set(policy.trust_.fit_summary_["ids"])))
        return policy

    report = run_replay(case3, folds=5, seed=0, fit_policy=spy)
    assert len(seen) == 5 and all(train == fitted for train, fitted in seen)
    assert len(report["families_chosen"]) == 5
    assert all(set(d["selection"]["scores"]) == set(FAMILIES) for d in report["fold_details"])


def compare_engines(path: Path, policy: str, seed: int) -> str:
    records, setup, held, train = fold_split(path, seed=seed, fold=seed % 5)
    fitted = policy_fitter(policy)(records, setup.columns, train, setup.retrieval, seed)
    images = [setup.images[i] for i in held]
    engine, fast = decide_fold(setup, fitted, images, max_rounds=2)
    used, slow = decide_fold(setup, fitted, images, max_rounds=2, engine="graph")
    assert used == "graph" and engine in ("arrays", "direct")
    for a, g in zip(fast, slow, strict=True):
        assert (a.image, a.label, a.rounds_used, a.calls) == (
            g.image,
            g.label,
            g.rounds_used,
            g.calls,
        )
        assert a.confidence == pytest.approx(g.confidence, abs=1e-9)
    return getattr(fitted, "chosen_", policy)


@pytest.mark.parametrize("policy", ["select", "best-single", "dawid-skene", "stacking"])
def test_select_and_the_families_decide_on_arrays_as_the_graph(case1, case3, policy: str):
    chosen = {compare_engines(p, policy, seed) for p in (case1, case3) for seed in (0, 4)}
    if policy == "select":
        assert "best-single" in chosen and len(chosen) >= 2  # several chosen kinds compared


def test_an_agent_with_first_looks_only_is_fused(case3: Path, tmp_path: Path):
    # gpt keeps only its gpt_initial_* columns: a first-look-only source, not a dropped one
    rows, fields = read_wide(case3)
    kept = [f for f in fields if f not in ("gpt_pred", "gpt_conf")]
    path = write_wide(tmp_path / "gpt_first_look_only.csv", rows, kept)
    records = read_records(path)
    columns, _ = replay_columns(records)
    assert {(c.agent, c.first, c.reeval) for c in columns} == {
        ("qwen", "qwen_initial", "qwen"),
        ("gpt", "gpt_initial", None),
    }
    report = run_replay(path, folds=5, seed=0, policy="trust")
    assert report["agents_replayed"]["gpt"] == {"first": "gpt_initial", "reeval": None}
    weights = report["fold_details"][0]["weights"]
    assert "gpt" in weights["evidence"] and "gpt" in weights["reeval"]
    assert "gpt@reeval" not in weights["reeval"]
    # one first look per agent, a second look of qwen only where re-evaluated
    assert report["vlm_calls_per_image"] == pytest.approx(2 + report["reeval_rate"])
    without_gpt = write_wide(
        tmp_path / "no_gpt.csv", rows, [f for f in kept if not f.startswith("gpt")]
    )
    alone = run_replay(without_gpt, folds=5, seed=0, policy="trust")
    assert report["accuracy"] != alone["accuracy"] or report["ece"] != alone["ece"]
    for policy in ("trust", "stacking"):
        compare_engines(path, policy, seed=0)


def test_dawid_skene_is_the_naive_bayes_posterior():
    truth = np.array([0, 0, 0, 1, 1, 2])
    answers = SourceAnswers(
        ("a", "b"),
        labels=np.array([[0, 0], [0, 1], [1, -1], [1, 1], [1, 0], [2, 2]]),
        confidence=np.ones((6, 2)),
    )
    model = DawidSkene().fit(answers, truth, 3)
    row = SourceAnswers(("a", "b"), np.array([[1, 0]]), np.ones((1, 2)))
    # P(y) * P(a says 1 | y) * P(b says 0 | y), each count + 1 (Laplace)
    prior = np.array([4, 3, 2]) / 9
    a_says_1 = np.array([2 / 6, 3 / 5, 1 / 4])
    b_says_0 = np.array([2 / 5, 2 / 5, 1 / 4])  # b did not answer on one row of class 0
    expected = prior * a_says_1 * b_says_0
    assert model.predict_proba(row)[0] == pytest.approx(expected / expected.sum())


def test_families_read_agents_that_only_state_a_label():
    # agent "label" answers right 80% of the time with no usable confidence (always 0),
    # agent "noise" is random: every family must rely on the label-only agent
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 300)
    good = np.where(rng.random(300) < 0.8, truth, rng.integers(0, 3, 300))
    answers = SourceAnswers(
        ("label", "noise"),
        labels=np.stack([good, rng.integers(0, 3, 300)], axis=1),
        confidence=np.stack([np.zeros(300), rng.random(300)], axis=1),
    )
    train, test = np.arange(200), np.arange(200, 300)
    for family in (DawidSkene(), Stacking(), BestSingle()):
        family.fit(answers.subset(train), truth[train], 3)
        proba = family.predict_proba(answers.subset(test))
        assert np.allclose(proba.sum(axis=1), 1.0)
        accuracy = (family.decide(answers.subset(test)) == truth[test]).mean()
        assert accuracy >= (good[test] == truth[test]).mean() - 0.03
    assert stacking_features(answers, 3)[0, :7].sum() == 1.0  # one-hot label, zero confidence


def test_choose_family_needs_a_margin_to_leave_the_best_source():
    base = np.array([True] * 60 + [False] * 40)
    scores = {f: {"accuracy": 0.0, "log_loss": 1.0} for f in FAMILIES}
    one_better = base.copy()
    one_better[60:63] = True
    one_better[:2] = False  # 3 rows won, 2 lost: 1 < 0.5 * sqrt(5), not shown better
    right = {f: base for f in FAMILIES} | {"trust": one_better}
    assert choose_family(scores, right) == "best-single"
    assert scores["trust"] == {
        "accuracy": 0.0,
        "log_loss": 1.0,
        "against": "best-single",
        "wins": 3,
        "losses": 2,
        "margin_z": MARGIN_Z,
    }
    clearly = base.copy()
    clearly[60:64] = True
    right["trust"] = clearly
    right["stacking"] = clearly.copy()
    right["stacking"][[63, 64]] = [False, True]  # one row won, one lost against trust: trust stays
    assert choose_family(scores, right) == "trust"
    assert scores["stacking"]["against"] == "trust"


def test_stacking_must_clear_the_larger_margin_on_first_looks():
    assert challenge_margins(FAMILIES, second_looks=False) == {
        "best-single": MARGIN_Z,
        "trust": MARGIN_Z,
        "dawid-skene": MARGIN_Z,
        "stacking": STACKING_MARGIN_Z,
        "second-look": MARGIN_Z,
    }
    assert set(challenge_margins(FAMILIES, second_looks=True).values()) == {SECOND_LOOK_MARGIN_Z}
    assert challenge_margins(["stacking"], second_looks=False, stacking_margin_z=0.0) == {
        "stacking": MARGIN_Z
    }
    base = np.array([True] * 60 + [False] * 40)
    lead = base.copy()
    lead[60:66] = True
    lead[:2] = False  # 6 rows won, 2 lost: 4 > 0.5 * sqrt(8), 4 < 1.645 * sqrt(8)
    margins = challenge_margins(FAMILIES, second_looks=False)

    def choice(leader: str) -> str:
        scores = {f: {"accuracy": 0.0, "log_loss": 1.0} for f in FAMILIES}
        return choose_family(scores, {f: base for f in FAMILIES} | {leader: lead}, z=margins)

    assert choice("dawid-skene") == "dawid-skene"
    assert choice("trust") == "trust"
    assert choice("stacking") == "best-single"


def with_extra_agent(path: Path, target: Path, name: str, answer) -> Path:
    """``path`` with one more agent, ``name``: its label on a row is ``answer(truth, labels,
    rng)``, its confidence uniform in [0.6, 1] (seeded as ``bench/select_rules.py``)."""
    rows, fields = read_wide(path)
    rng = np.random.default_rng(2024)
    labels = sorted({r["category"] for r in rows})
    for row in rows:
        row[f"{name}_pred"] = answer(row["category"], labels, rng)
        row[f"{name}_conf"] = f"{rng.uniform(0.6, 1.0):.2f}"
    return write_wide(target, rows, [*fields, f"{name}_pred", f"{name}_conf"])


def test_an_agent_that_always_says_one_label_does_not_move_select_off_the_best_source(
    case1: Path, tmp_path: Path
):
    # with z = 0.5 for stacking (the rule before), stacking took 2 of these 5 folds on the
    # constant's noise and the replay fell to 87 of 160
    path = with_extra_agent(case1, tmp_path / "const.csv", "const", lambda t, ys, rng: ys[0])
    report = run_replay(path, folds=5, seed=2, policy="select")
    assert report["families_chosen"] == ["best-single"] * 5
    assert report["accuracy"] == pytest.approx(91 / 160)  # GPT-4o alone


def test_select_fuses_an_informative_first_look_only_agent(case1: Path, tmp_path: Path):
    # a third agent right 35% of the time (25% is chance), independent of the other two: four
    # folds of five fuse it; with z = 0.5 for stacking too (the rule before), fold 3 took
    # stacking and the replay fell to 93 of 160
    def weak(truth: str, labels: list[str], rng: np.random.Generator) -> str:
        return truth if rng.random() < 0.35 else str(rng.choice([y for y in labels if y != truth]))

    path = with_extra_agent(case1, tmp_path / "weak.csv", "weak", weak)
    report = run_replay(path, folds=5, seed=4, policy="select")
    assert report["agents_replayed"]["weak"] == {"first": "weak", "reeval": None}
    assert report["families_chosen"].count("best-single") == 1
    assert "stacking" not in report["families_chosen"]
    for detail in report["fold_details"]:
        family = detail["selection"]["family"]
        read = family["sources"] if family is not None else detail["weights"]["first"]
        assert "weak" in read
    assert report["accuracy"] >= 96 / 160 > 91 / 160


def test_save_policy_records_the_choice_and_old_files_still_load(
    case1: Path, tmp_path: Path, capsys
):
    saved = tmp_path / "select.json"
    assert main(["eval", "replay", str(case1), "--seed", "0", "--save-policy", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "select policy fitted on all 160 rows saved" in out
    selection = load_policy_selection(saved)
    assert selection is not None and selection["chosen"] == "best-single"
    assert selection["family"]["source"] == "gpt"
    assert set(selection["scores"]) == set(FAMILIES) - {"second-look"}
    assert selection["inner_folds"] == 5
    assert math.isfinite(selection["scores"]["trust"]["log_loss"])
    settings = load_trust_policy_settings(saved)
    assert set(settings["weights"]) == {"first", "reeval"}
    data = json.loads(saved.read_text())
    del data["selection"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert load_policy_selection(old) is None
    assert load_trust_policy_settings(old) == settings


def test_cli_reports_the_baselines_on_the_same_folds(case1: Path, capsys):
    assert main(["eval", "replay", str(case1), "--seeds", "0,1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policy"] == "select"
    folds = report["fold_baselines"]
    assert list(folds) == ["majority", "best-single", "dawid-skene", "stacking"]
    per_seed = [r["fold_baselines"]["stacking"]["accuracy"] for r in report["per_seed"]]
    assert folds["stacking"]["accuracy"] == pytest.approx(sum(per_seed) / 2)
    assert [len(c) for c in report["families_chosen"]] == [5, 5]
    # never below the best source: GPT-4o alone, 91 of 160
    gpt = report["baselines"]["gpt"]["accuracy"]
    assert gpt == pytest.approx(91 / 160)
    assert report["mean"]["accuracy"] >= gpt
    assert report["mean"]["accuracy"] >= max(b["accuracy"] for b in folds.values())
    assert main(["eval", "replay", str(case1), "--seed", "0"]) == 0
    table = capsys.readouterr().out
    assert "families chosen over 5 fold(s): best-single 5" in table
    assert all(f"\u2502 {name} " in table for name in folds)


def test_repeated_inner_splits_are_averaged_per_row_not_counted_as_more_rows():
    incumbent = np.array([True] * 60 + [False] * 40)
    challenger = incumbent.copy()
    challenger[60:63] = True
    challenger[:1] = False  # 3 won, 1 lost: 2 < 0.5 * sqrt(4)? no, 2 > 1: beats at z=0.5
    assert beats(challenger, incumbent, 0.5) == (True, 3, 1)
    assert beats(challenger, incumbent, 1.5) == (False, 3, 1)  # 2 < 1.5 * 2
    # the same split scored three times: the same rows, the same evidence
    three = np.mean([challenger] * 3, axis=0), np.mean([incumbent] * 3, axis=0)
    assert beats(*three, 1.5) == (False, 3, 1)
    # a row the challenger gets right in one split of two counts half a win
    half = challenger.astype(float)
    half[60:63] = 0.5
    assert beats(half, incumbent.astype(float), 0.0) == (True, 3, 1)  # 1.5 - 1 > 0
    assert beats(half, incumbent.astype(float), 0.5) == (False, 3, 1)  # 0.5 < 0.5 * 1.32


@pytest.mark.parametrize("family", ["best-single", "dawid-skene", "stacking"])
def test_a_saved_family_decides_as_the_fitted_one(case3: Path, family: str):
    records, setup, held, train = fold_split(case3, seed=0, fold=0)
    labels = list(records.labels)
    truth_of = {r.id: labels.index(r.truth) for r in records.records}
    answers = answers_from_records(records, setup.columns, setup.retrieval, train)
    fitted = ARRAY_FAMILIES[family]().fit(
        answers, np.array([truth_of[i] for i in train]), len(labels)
    )
    saved = json.loads(json.dumps(fitted.to_dict()))
    loaded = family_from_dict(family, saved, len(labels))
    held_ids = [setup.images[i].extra["id"] for i in held]
    rows = answers_from_records(records, setup.columns, setup.retrieval, held_ids)
    assert np.array_equal(loaded.decide(rows), fitted.decide(rows))
    assert np.allclose(loaded.predict_proba(rows), fitted.predict_proba(rows))
    with pytest.raises(InputError, match="shape"):
        family_from_dict(family, saved, len(labels) + 1)


def recorded_images_of(path: Path, folder: Path, rows: list[dict[str, str]]) -> Path:
    """Small real image files named as the recorded rows' images (replay agents find their
    answers by the image file name)."""
    from PIL import Image

    folder.mkdir()
    for n, row in enumerate(rows):
        Image.new("RGB", (8, 8), (40 * n % 256, 120, 60)).save(folder / row["image"])
    return folder


def test_run_with_a_saved_select_file_decides_as_the_chosen_family(
    case1: Path, tmp_path: Path, capsys
):
    saved = tmp_path / "select.json"
    assert main(["eval", "replay", "study:case1", "--seed", "0", "--save-policy", str(saved)]) == 0
    assert load_policy_selection(saved)["chosen"] == "best-single"
    rows, _ = read_wide(case1)
    # the images where the two agents disagree and Qwen is the surer one
    disagree = sorted(
        (r for r in rows if r["qwen_pred"] != r["gpt_pred"]),
        key=lambda r: float(r["gpt_conf"]) - float(r["qwen_conf"]),
    )[:8]
    images = recorded_images_of(case1, tmp_path / "images", disagree)
    agents = ["-a", "qwen=replay:study:case1#qwen", "-a", "gpt=replay:study:case1#gpt"]

    def run(policy_file: Path, out: Path) -> dict[str, dict]:
        args = ["run", str(images), *agents, "--task", "apple-leaf", "--out", str(out)]
        assert main([*args, "--policy-file", str(policy_file)]) == 0
        lines = (json.loads(x) for x in out.read_text().splitlines())
        return {Path(d["image"]).name: d for d in lines}

    capsys.readouterr()
    decided = run(saved, tmp_path / "select.jsonl")
    assert "trust profile" not in capsys.readouterr().err  # best-single reads no profile
    # best-single is GPT-4o: its answer on every image, where the two agents disagree
    assert {name: d["label"] for name, d in decided.items()} == {
        r["image"]: r["gpt_pred"] for r in disagree
    }
    assert {d["policy"] for d in decided.values()} == {"best-single"}
    assert all(d["rounds_used"] == 1 for d in decided.values())
    # the same file without its selection is the trust policy, which follows Qwen on one
    data = json.loads(saved.read_text())
    del data["selection"]
    trust_only = tmp_path / "trust.json"
    trust_only.write_text(json.dumps(data))
    as_trust = run(trust_only, tmp_path / "trust.jsonl")
    assert {d["policy"] for d in as_trust.values()} == {"trust"}
    assert "agent 'gpt' has no trust profile" in capsys.readouterr().err
    assert any(as_trust[n]["label"] != decided[n]["label"] for n in decided)
    capsys.readouterr()
    # a selection fitted on other labels, or reading a source the run lacks: one line, exit 1
    data = json.loads(saved.read_text())
    data["selection"]["labels"] = ["a", "b", "c", "d"]
    other = tmp_path / "other_labels.json"
    other.write_text(json.dumps(data))
    args = ["run", str(images), *agents, "--task", "apple-leaf", "--policy-file", str(other)]
    assert main([*args, "--out", str(tmp_path / "x.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"{other}: field 'selection.labels': the best-single policy was fitted on labels "
        "['a', 'b', 'c', 'd'], this run's task has ['black-rot', 'healthy', 'rust', 'scab']"
    )
    only_qwen = ["run", str(images), "-a", "qwen=replay:study:case1#qwen", "--task", "apple-leaf"]
    assert main([*only_qwen, "--policy-file", str(saved), "--out", str(tmp_path / "y.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--policy-file's best-single reads source(s) 'gpt' that this run does not have" in err
    assert len(err.splitlines()) == 1


def test_with_second_looks_the_trust_policy_is_kept_unless_clearly_beaten():
    assert preference(FAMILIES, second_looks=False) == list(FAMILIES)
    assert preference(FAMILIES, second_looks=True) == [
        "trust",
        "best-single",
        "dawid-skene",
        "stacking",
        "second-look",
    ]
    assert preference(["stacking", "best-single"], second_looks=True) == [
        "stacking",
        "best-single",
    ]
    trust = np.array([True] * 90 + [False] * 10)

    def choice(**others: np.ndarray) -> str:
        order = preference(FAMILIES, second_looks=True)
        right = {f: trust for f in FAMILIES} | others
        scores = {f: {"accuracy": float(right[f].mean()), "log_loss": 1.0} for f in order}
        return choose_family(scores, right, z=SECOND_LOOK_MARGIN_Z)

    a_row_or_two = trust.copy()
    a_row_or_two[90:93] = True
    a_row_or_two[0] = False  # 3 rows won, 1 lost: 2 < 1.645 * 2, as noisy as Case 3's leads
    assert choice(**{"best-single": a_row_or_two, "dawid-skene": a_row_or_two}) == "trust"
    # the same lead would have replaced the best source on first looks (z = MARGIN_Z)
    plain = {f: {"accuracy": 0.0, "log_loss": 1.0} for f in FAMILIES}
    right = {f: trust for f in FAMILIES} | {"best-single": trust, "trust": a_row_or_two}
    assert choose_family(plain, right) == "trust"
    clearly = trust.copy()
    clearly[90:96] = True  # 6 rows won, none lost: 6 > 1.645 * sqrt(6)
    assert choice(stacking=clearly) == "stacking"
    assert choice(**{"best-single": clearly}) == "best-single"


def test_inner_splits_can_have_their_own_fold_count(case3: Path):
    from orchestrator.policies.trust import TrustPolicy

    records, setup, _, train = fold_split(case3, seed=0, fold=1)
    trust = TrustPolicy(retrieval_source=setup.retrieval, seed=0).fit(
        records, setup.columns, ids=train
    )
    answers = answers_from_records(records, setup.columns, setup.retrieval, train)
    own = inner_cross_validation(
        records, setup.columns, train, trust, answers, families=FAMILIES, repeats=1
    )
    three = inner_cross_validation(
        records, setup.columns, train, trust, answers, families=FAMILIES, repeats=2, folds=3
    )
    assert own.right["trust"].shape == (1, len(train))
    assert three.right["trust"].shape == (2, len(train))
    assert three.probabilities["stacking"].shape == (2, len(train), len(records.labels))
    assert np.allclose(three.probabilities["dawid-skene"].sum(axis=2), 1.0)
    # the best single source (the retrieval vote on every split) decides as it is
    assert np.array_equal(three.right["best-single"][0], own.right["best-single"][0])
