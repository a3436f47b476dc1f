"""Split-conformal prediction sets: the quantile rule, coverage where it is known, the replay's
sets on the study's Case 3, the policy file and the abstention rule in the graph."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError, NotFittedError
from eval.conformal import (
    SplitConformal,
    confidence_sweep,
    conformal_p_values,
    conformal_quantile,
    conformal_rank,
    conformity_scores,
    defer_unless_singleton,
    label_scores,
    prediction_sets,
    set_metrics,
    tie_breaks,
)
from orchestrator.cli import main
from orchestrator.replay.conformal import ConformalSettings
from orchestrator.replay.run import (
    ReplaySetup,
    conformal_calibration,
    decide_fold,
    policy_fitter,
    replay_folds,
    run_replay,
)


@pytest.fixture(scope="module")
def case3(paper_dir: Path) -> Path:
    return paper_dir / "case3_trust_rag.csv"


# --- the rule on hand-computed examples ---


def test_quantile_rule_on_a_hand_computed_example():
    scores = [0.1, 0.4, 0.2, 0.8, 0.3]  # sorted: 0.1 0.2 0.3 0.4 0.8, n = 5
    # k = ceil(6 (1 - alpha)): 0.5 -> 3, 0.4 -> ceil(3.6) = 4, 0.2 -> ceil(4.8) = 5, 0.1 -> 6 > n
    assert [conformal_rank(5, a) for a in (0.5, 0.4, 0.2, 0.1)] == [3, 4, 5, 6]
    assert conformal_quantile(scores, 0.5) == 0.3
    assert conformal_quantile(scores, 0.4) == 0.4
    assert conformal_quantile(scores, 0.2) == 0.8
    assert conformal_quantile(scores, 0.1) == math.inf
    # (n + 1)(1 - alpha) a whole number: 20 * 0.95 = 19 exactly, so k = 19, not 20
    assert conformal_rank(19, 0.05) == 19 and conformal_rank(99, 0.01) == 99
    # p-values against the same scores: (#{s_i > s} + u (#{s_i = s} + 1)) / (n + 1)
    assert conformal_p_values(scores, [0.4]).tolist() == pytest.approx([3 / 6])
    assert conformal_p_values(scores, [0.5]).tolist() == pytest.approx([2 / 6])
    assert conformal_p_values(scores, [0.4], tie_break=[0.5]).tolist() == pytest.approx([2 / 6])
    # LAC sets at alpha 0.4 (threshold 0.4): the labels with p >= 0.6
    probabilities = [[0.6, 0.3, 0.1], [0.35, 0.35, 0.3], [0.7, 0.3, 0.0]]
    sets = prediction_sets(probabilities, [scores], 0.4)
    assert sets.tolist() == [[True, False, False], [False, False, False], [True, False, False]]
    assert defer_unless_singleton(sets).tolist() == [0, -1, 0]
    # at alpha 0.1 the threshold is infinite: every label of every row
    assert prediction_sets(probabilities, [scores], 0.1).all()


def test_scores_and_sets_of_each_rule():
    p = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    assert np.allclose(label_scores(p, score="lac"), [[0.5, 0.7, 0.8], [0.8, 0.5, 0.7]])
    assert np.allclose(label_scores(p, score="aps"), [[0.5, 0.8, 1.0], [1.0, 0.5, 0.8]])
    assert conformity_scores(p, [1, 1], score="aps").tolist() == pytest.approx([0.8, 0.5])
    blank = prediction_sets(p, [[0.1]], 0.5)  # threshold 0.1: no label has p >= 0.9
    assert not blank.any()
    filled = prediction_sets(p, [[0.1]], 0.5, empty="top")
    assert filled.tolist() == [[True, False, False], [False, True, False]]


def test_confidence_sweep_and_set_metrics_by_hand():
    p = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.5, 0.5]])
    truth = [0, 0, 0, 1]  # right, wrong, right, wrong (a tie reads as the first label)
    points = [pt.to_dict() for pt in confidence_sweep(p, truth)]
    assert points == [
        {"threshold": 0.9, "answered": 0.5, "accuracy": 0.5},
        {"threshold": 0.6, "answered": 0.75, "accuracy": pytest.approx(2 / 3)},
        {"threshold": 0.5, "answered": 1.0, "accuracy": 0.5},
    ]
    sets = np.array([[True, False], [True, True], [False, False], [False, True]])
    m = set_metrics(sets, truth, label_names=["a", "b"])
    assert (m.coverage, m.mean_set_size, m.empty_rate) == (0.75, 1.0, 0.25)
    assert m.coverage_per_class == {"a": pytest.approx(2 / 3), "b": 1.0}
    assert (m.singleton_rate, m.singleton_accuracy) == (0.5, 1.0)


def test_empty_and_bad_input_errors():
    with pytest.raises(InputError, match="at least one row, got none"):
        SplitConformal().fit(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(InputError, match="at least one scored row, got none"):
        conformal_quantile([], 0.1)
    with pytest.raises(InputError, match="non-empty rows x labels"):
        set_metrics(np.zeros((0, 3), dtype=bool), [])
    with pytest.raises(InputError, match="needs at least one row, got none"):
        confidence_sweep(np.zeros((0, 3)), [])
    for alpha in (0.0, 1.0, -0.1, 2):
        with pytest.raises(InputError, match="alpha must be in"):
            SplitConformal(alpha=alpha)
    with pytest.raises(InputError, match="outside"):
        SplitConformal().fit([[0.5, 1.5]], [0])
    with pytest.raises(InputError, match=r"label indices in \[0, 1\]"):
        SplitConformal().fit([[0.5, 0.5]], [2])
    with pytest.raises(InputError, match="score must be one of"):
        SplitConformal(score="raps")
    with pytest.raises(NotFittedError):
        SplitConformal().transform([[0.5, 0.5]])
    with pytest.raises(InputError, match="fitted on 2 labels"):
        SplitConformal().fit([[0.5, 0.5]], [0]).transform([[0.2, 0.3, 0.5]])


def test_tie_breaks_are_fixed_by_the_key_and_spread_over_zero_one():
    keys = [f"row-{i}" for i in range(2000)]
    u = tie_breaks(keys, seed=3)
    assert ((u > 0) & (u < 1)).all() and abs(u.mean() - 0.5) < 0.02
    assert np.array_equal(tie_breaks(keys[:10], seed=3), u[:10])
    assert not np.array_equal(tie_breaks(keys[:10], seed=4), u[:10])
    # without given tie breaks, each row of one call gets its own seeded draw
    p = np.full((50, 2), 0.5)
    fitted = SplitConformal(alpha=0.5).fit(p, np.zeros(50, dtype=int))
    first = fitted.transform(p)
    assert np.array_equal(first, fitted.transform(p)) and 0 < first[:, 0].sum() < 50


def test_to_dict_round_trip_at_another_alpha():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), size=60)
    y = np.array([rng.choice(3, p=row) for row in p])
    fitted = SplitConformal(alpha=0.1, mondrian=True).fit(p, y)
    again = SplitConformal.from_dict(json.loads(json.dumps(fitted.to_dict())), alpha=0.2)
    direct = SplitConformal(alpha=0.2, mondrian=True).fit(p, y)
    assert np.array_equal(again.transform(p), direct.transform(p))
    assert again.thresholds_.tolist() == direct.thresholds_.tolist()


# --- coverage where it is known: probabilities from a Dirichlet, labels drawn from them ---


def _dirichlet_rows(
    rng: np.random.Generator, rows: int, k: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    p = rng.dirichlet(np.full(k, 0.6), size=rows)
    y = (rng.random(rows)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return p, np.minimum(y, k - 1)


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_coverage_holds_on_synthetic_data(score: str):
    n, alpha, trials = 50, 0.1, 400
    k = conformal_rank(n, alpha)  # 46: expected coverage k / (n + 1) = 0.902
    deterministic, randomized, sizes = [], [], []
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        cal_p, cal_y = _dirichlet_rows(rng, n)
        test_p, test_y = _dirichlet_rows(rng, 200)
        fixed = SplitConformal(alpha=alpha, score=score, randomized=False).fit(cal_p, cal_y)
        drawn = SplitConformal(alpha=alpha, score=score, seed=trial).fit(cal_p, cal_y)
        fixed_sets, drawn_sets = fixed.transform(test_p), drawn.transform(test_p)
        assert (fixed_sets | ~drawn_sets).all()  # a random tie break only removes labels
        deterministic.append(set_metrics(fixed_sets, test_y).coverage)
        randomized.append(set_metrics(drawn_sets, test_y).coverage)
        sizes.append(fixed_sets.sum(axis=1).mean())
    tolerance = 0.008  # about 3 standard errors of a mean over 400 trials
    assert 1 - alpha - tolerance <= np.mean(deterministic) <= 1 - alpha + 1 / (n + 1) + tolerance
    assert np.mean(deterministic) == pytest.approx(k / (n + 1), abs=tolerance)
    assert np.mean(randomized) == pytest.approx(1 - alpha, abs=tolerance)
    assert 1.0 < np.mean(sizes) < 5.0  # informative sets, not every label


def test_mondrian_covers_each_class_where_marginal_sets_do_not():
    """Class 0 is hard (its true label gets little mass): marginal sets under-cover it,
    class-conditional ones cover every class at 1 - alpha."""
    alpha, trials, k = 0.1, 300, 3
    boost = np.array([0.3, 3.0, 3.0])
    marginal, mondrian = [], []
    for trial in range(trials):
        rng = np.random.default_rng(10_000 + trial)

        def draw(rows: int, rng=rng) -> tuple[np.ndarray, np.ndarray]:
            y = rng.integers(0, k, size=rows)
            logits = rng.normal(size=(rows, k)) + boost[y][:, None] * np.eye(k)[y]
            p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            return p, y

        cal_p, cal_y = draw(90)
        test_p, test_y = draw(300)
        for out, flag in ((marginal, False), (mondrian, True)):
            fitted = SplitConformal(alpha=alpha, mondrian=flag, randomized=False).fit(cal_p, cal_y)
            sets = fitted.transform(test_p)
            out.append([sets[test_y == c, c].mean() for c in range(k)])
    marginal_cov, mondrian_cov = np.mean(marginal, axis=0), np.mean(mondrian, axis=0)
    assert marginal_cov[0] < 1 - alpha - 0.05  # the hard class is under-covered
    assert marginal_cov[1:].min() > 1 - alpha
    # about 30 calibration rows per class: coverage in [0.9, 0.9 + 1/31] up to the tolerance
    assert (mondrian_cov >= 1 - alpha - 0.01).all() and (mondrian_cov <= 1 - alpha + 0.045).all()


def test_a_mondrian_singleton_that_is_not_the_best_label_defers():
    # class 2 has no calibration row: its label is in every set, even where it is unlikely
    cal_p = np.array([[0.9, 0.05, 0.05]] * 10 + [[0.05, 0.9, 0.05]] * 10)
    cal_y = np.array([0] * 10 + [1] * 10)
    rule = SplitConformal(alpha=0.1, mondrian=True, randomized=False).fit(cal_p, cal_y)
    test_p = np.array([[0.5, 0.45, 0.05], [0.05, 0.05, 0.9], [0.9, 0.05, 0.05]])
    sets = rule.transform(test_p)
    assert sets.tolist() == [[False, False, True], [False, False, True], [True, False, True]]
    assert defer_unless_singleton(sets).tolist() == [2, 2, -1]
    assert rule.decide(test_p).tolist() == [-1, 2, -1]
    metrics = set_metrics(sets, [0, 2, 0], probabilities=test_p)
    assert metrics.singleton_rate == pytest.approx(1 / 3) and metrics.singleton_accuracy == 1.0
    assert set_metrics(sets, [0, 2, 0]).singleton_accuracy == 0.5


@pytest.mark.heavy
def test_sets_match_mapie():
    mapie = pytest.importorskip("mapie.classification")
    from sklearn.base import BaseEstimator, ClassifierMixin

    class GivenProbabilities(ClassifierMixin, BaseEstimator):
        """The rows themselves are the probabilities (a prefit model for MAPIE)."""

        def fit(self, x, y):
            self.classes_ = np.arange(x.shape[1])
            return self

        def predict_proba(self, x):
            return np.asarray(x)

        def predict(self, x):
            return np.asarray(x).argmax(axis=1)

    rng = np.random.default_rng(7)
    p, y = _dirichlet_rows(rng, 700, k=4)
    model = GivenProbabilities().fit(p, y)
    levels = [0.8, 0.9, 0.95]
    reference = mapie.SplitConformalClassifier(
        estimator=model, confidence_level=levels, conformity_score="lac", prefit=True
    )
    reference.conformalize(p[:200], y[:200])
    _, their_sets = reference.predict_set(p[200:])
    for j, level in enumerate(levels):
        ours = SplitConformal(alpha=1 - level, randomized=False).fit(p[:200], y[:200])
        assert np.array_equal(ours.transform(p[200:]), their_sets[:, :, j])


# --- the replay on the study's Case 3 ---


def test_replay_sets_on_case3_calibrate_on_training_rows_only(case3: Path):
    fit_trust = policy_fitter("trust")
    fitted_on: list[set[str]] = []

    def spy(records, columns, train_ids, retrieval, seed):
        fitted_on.append(set(train_ids))
        return fit_trust(records, columns, train_ids, retrieval, seed)

    settings = ConformalSettings(alphas=(0.1, 0.05))
    report = run_replay(case3, seed=0, fit_policy=spy, conformal=settings)
    # per fold: the policy of the replay (128 rows), then the one of the sets (96 rows)
    assert [len(ids) for ids in fitted_on] == [128, 96] * 5
    for k in range(5):
        train, fit_part = fitted_on[2 * k], fitted_on[2 * k + 1]
        assert fit_part < train  # the sets' policy never sees the held-out fold
    block = report["conformal"]
    assert [f["n_calibration"] for f in block["folds"]] == [32] * 5
    assert [f["n_test"] for f in block["folds"]] == [32] * 5
    # the figures measured here (seed 0): 145/160 and 154/160 covered, 148 and 159 labels
    by_alpha = {lv["alpha"]: lv for lv in block["levels"]}
    assert by_alpha[0.1]["coverage"] == pytest.approx(145 / 160)
    assert by_alpha[0.1]["mean_set_size"] == pytest.approx(148 / 160)
    assert by_alpha[0.05]["coverage"] == pytest.approx(154 / 160)
    assert by_alpha[0.05]["mean_set_size"] == pytest.approx(159 / 160)
    assert by_alpha[0.1]["coverage_per_class"] == {
        "black-rot": 0.875,
        "healthy": 1.0,
        "rust": 1.0,
        "scab": 0.75,
    }
    # 148 singletons, 145 of them right; 12 rows deferred (all on empty sets)
    assert by_alpha[0.1]["singleton_accuracy"] == pytest.approx(145 / 148)
    assert by_alpha[0.1]["empty_rate"] == pytest.approx(12 / 160)
    curve = block["risk_coverage"]["confidence"]
    assert curve[-1]["answered"] == 1.0
    assert [p["answered"] for p in curve] == sorted(p["answered"] for p in curve)
    # the replay's own figures are untouched by the sets
    assert report["accuracy"] == 0.96875


def test_calibration_rows_are_held_out_from_the_fit(case3: Path):
    """The calibration rows of each fold are neither fitting rows nor held-out rows."""
    from eval.recorded.records import read_records

    records = read_records(case3)
    setup = ReplaySetup.of(case3, records)
    ids = [li.extra["id"] for li in setup.images]
    held = replay_folds(setup.images, 5, 2)[1]
    fold = conformal_calibration(setup, policy_fitter("trust"), held, 2, 0.25, 2)
    fit, cal, test = set(fold.fit_ids), set(fold.calibration_ids), {ids[i] for i in held}
    assert not (fit & cal) and not (fit & test) and not (cal & test)
    assert len(fit | cal | test) == 160 and (len(fit), len(cal)) == (96, 32)
    assert set(fold.policy.fit_summary_["ids"]) == fit


def test_cli_reports_sets_per_alpha_and_refuses_bad_values(case3: Path, capsys):
    argv = ["eval", "replay", str(case3), "--alpha", "0.1", "--alpha", "0.05", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policy"] == "select"  # the default policy: its sets, seed 0
    assert [lv["alpha"] for lv in report["conformal"]["levels"]] == [0.1, 0.05]
    # select keeps the trust policy on every fold of Case 3 (its agents look again)
    assert report["conformal"]["levels"][0]["coverage"] == pytest.approx(145 / 160)
    for bad, hint in (
        (["--alpha", "1.5"], "'--alpha'"),
        (["--alpha", "0"], "'--alpha'"),
        (["--mondrian"], "--no-tie-break need --alpha"),
        (["--alpha", "0.1", "--conformal-score", "raps"], "must be one of lac, aps"),
    ):
        assert main(["eval", "replay", str(case3), *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and hint in err


def test_policy_file_carries_the_rule_and_the_graph_defers_unless_singleton(
    case3: Path, tmp_path: Path
):
    from eval.recorded.records import read_records
    from orchestrator.policies.conformal import ConformalPolicy, ConformalRule, load_conformal_rule
    from orchestrator.policies.policy_file import save_trust_policy

    records = read_records(case3)
    setup = ReplaySetup.of(case3, records)
    labels = setup.task.labels
    held = replay_folds(setup.images, 5, 0)[3]
    fold = conformal_calibration(setup, policy_fitter("trust"), held, 0, 0.25, 2)
    # the deterministic rule (the graph's tie breaks hash the answers, the replay's the row ids)
    sets = SplitConformal(alpha=0.05, randomized=False)
    sets.fit(fold.calibration, fold.calibration_labels)
    path = tmp_path / "policy.json"
    block = ConformalRule(sets=sets, labels=tuple(labels)).to_block(rows=32)
    save_trust_policy(path, fold.policy, fitted_on={"rows": 96}, conformal=block)
    loaded = load_conformal_rule(path)
    assert np.array_equal(loaded.sets.transform(fold.test), sets.transform(fold.test))

    # the wrapped policy in the real graph answers exactly where the set is a singleton: at
    # alpha 0.05 this fold has 26 singletons and 6 sets of several labels, at 0.1 one empty set
    deferred: list[int] = []
    for alpha, answered in ((0.05, 26), (0.1, 31)):
        rule = load_conformal_rule(path, alpha=alpha)
        direct = SplitConformal(alpha=alpha, randomized=False)
        direct.fit(fold.calibration, fold.calibration_labels)
        assert rule.sets.thresholds_.tolist() == direct.thresholds_.tolist()
        decisions: list = []
        engine, rows = decide_fold(
            setup,
            ConformalPolicy(fold.policy, rule),
            [setup.images[i] for i in held],
            max_rounds=2,
            on_decision=decisions.append,
        )
        assert engine == "graph" and [r.label for r in rows] == [d.label for d in decisions]
        expected = direct.decide(fold.test)
        assert [d.label for d in decisions] == [labels[i] if i >= 0 else None for i in expected]
        members = direct.transform(fold.test)
        assert [len(d.prediction_set) for d in decisions] == members.sum(axis=1).tolist()
        assert sum(d.label is not None for d in decisions) == answered
        deferred += [len(d.prediction_set) for d in decisions if d.label is None]
    assert 0 in deferred and 1 not in deferred and max(deferred) >= 2

    # a damaged conformal field is one line naming it
    data = json.loads(path.read_text())
    data["conformal"]["calibration_scores"] = [[0.1], [0.2]]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"field 'conformal'.*calibration_scores needs 1 list"):
        load_conformal_rule(path)
    data["conformal"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="no conformal calibration"):
        load_conformal_rule(path)


def test_randomized_rule_in_the_policy_breaks_ties_by_the_answers(apple_task):
    import asyncio

    from agents.types import Prediction
    from orchestrator.policies.conformal import ConformalPolicy, ConformalRule, answers_key
    from orchestrator.policies.trust import TrustPolicy

    labels = apple_task.labels
    trust = TrustPolicy.from_profiles({})

    def answer(reason: str) -> list[Prediction]:
        return [Prediction(agent="a", label=labels[0], confidence=0.8, reason=reason)]

    async def assess(policy, reason: str):
        return await policy.assess(
            task=apple_task, predictions=answer(reason), evidence=None, round=0, max_rounds=1
        )

    # calibration rows with the very distribution of the test rows, right on its top label:
    # the top label ties with every calibration score and is in the set half of the time
    fused = asyncio.run(assess(trust, "probe")).scores
    calibration = np.tile([fused[y] for y in labels], (40, 1))
    rule = ConformalRule(
        sets=SplitConformal(alpha=0.5).fit(calibration, np.zeros(40, dtype=int)),
        labels=tuple(labels),
    )
    policy = ConformalPolicy(trust, rule)

    def decide(reason: str):
        return assess(policy, reason)

    outcomes = [asyncio.run(decide(f"reason {i}")) for i in range(40)]
    for i, out in enumerate(outcomes):
        expected = rule.members(out.scores, answers_key(answer(f"reason {i}"), None))
        assert out.prediction_set == expected
        assert out.label == (expected[0] if len(expected) == 1 else None)
    assert asyncio.run(decide("reason 3")).prediction_set == outcomes[3].prediction_set
    answered = sum(out.label == labels[0] for out in outcomes)
    assert 8 < answered < 32  # the tie falls both ways, by the answers' hash
    assert all(out.prediction_set in ([], [labels[0]]) for out in outcomes)


def test_seeds_mean_of_the_conformal_blocks():
    from orchestrator.replay.conformal import conformal_seeds_mean

    def level(coverage: float, accuracy: float | None, scab: float | None) -> dict:
        return {
            "alpha": 0.1,
            "target_coverage": 0.9,
            "coverage": coverage,
            "mean_set_size": 2 * coverage,
            "empty_rate": 0.0,
            "singleton_rate": 0.5,
            "singleton_accuracy": accuracy,
            "coverage_per_class": {"rust": coverage, "scab": scab},
        }

    reports = [
        {"conformal": {"levels": [level(0.8, 0.9, None)]}},
        {"conformal": {"levels": [level(1.0, None, 0.5)]}},
    ]
    (mean,) = conformal_seeds_mean(reports)
    assert mean["coverage"] == pytest.approx(0.9) and mean["mean_set_size"] == pytest.approx(1.8)
    assert mean["singleton_accuracy"] == 0.9  # the seeds that answered anything
    assert mean["coverage_per_class"] == {"rust": pytest.approx(0.9), "scab": 0.5}


def test_the_graph_policy_defers_a_singleton_that_is_not_its_best_label(apple_task):
    import asyncio

    from agents.types import Prediction
    from orchestrator.policies.conformal import ConformalPolicy, ConformalRule
    from orchestrator.policies.trust import TrustPolicy

    labels = apple_task.labels
    trust = TrustPolicy.from_profiles({})
    answers = [Prediction(agent="a", label=labels[0], confidence=0.8)]

    async def assess(policy):
        return await policy.assess(
            task=apple_task, predictions=answers, evidence=None, round=0, max_rounds=1
        )

    fused = asyncio.run(assess(trust)).scores
    assert max(fused, key=fused.__getitem__) == labels[0]
    # Mondrian calibration where labels[0]'s rows were all sure of it and the last label has
    # no row: the fused row drops labels[0] and keeps the last label alone
    sure = np.eye(len(labels))[: len(labels) - 1] * 0.97 + 0.01
    calibration = np.repeat(sure, 20, axis=0)
    truth = np.repeat(np.arange(len(labels) - 1), 20)
    rule = ConformalRule(
        sets=SplitConformal(alpha=0.1, mondrian=True, randomized=False).fit(calibration, truth),
        labels=tuple(labels),
    )
    decided = asyncio.run(assess(ConformalPolicy(trust, rule)))
    assert decided.prediction_set == [labels[-1]]
    assert decided.label is None and "defers" in decided.reason
