"""Fusion policies with numbers: trust fusion, its fitting, the baselines, the factory."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from agents.types import Prediction
from core.errors import InputError
from core.task import Task
from eval.profile import TrustProfile, fit_trust_profile
from eval.recorded.records import Record
from orchestrator.policies import make_policy, policy_names
from orchestrator.policies.baselines import MajorityPolicy, MaxConfidencePolicy, SinglePolicy
from orchestrator.policies.fusion import fuse
from orchestrator.policies.trust import TrustPolicy, prediction_set, stage_of
from orchestrator.policies.trust_fit import choose_threshold, fit_weights
from orchestrator.policies.trust_sources import confusion_scores, log_ratio, profile_key
from rag.evidence import Evidence

LABELS = ("black-rot", "healthy", "rust", "scab")


def profile(agent: str, pairs: dict[tuple[str, str], int], confidence: float = 0.9):
    """A profile fitted on records with the given (truth, pred) -> count."""
    records = [
        Record(id=f"{t}-{p}-{i}", agent=agent, truth=t, pred=p, confidence=confidence)
        for (t, p), n in pairs.items()
        for i in range(n)
    ]
    return fit_trust_profile(agent, records, LABELS, bootstrap=0, cv_folds=0)


@pytest.fixture(scope="module")
def scab_sayer() -> TrustProfile:
    """Says scab for every scab and rust leaf, right on the others: 'scab' is ambiguous."""
    return profile(
        "vlm",
        {("scab", "scab"): 6, ("rust", "scab"): 2, ("rust", "rust"): 6}
        | {("healthy", "healthy"): 8, ("black-rot", "black-rot"): 8},
    )


def run(coro):
    return asyncio.run(coro)


def test_fuse_is_weighted_log_linear_pooling():
    out = fuse(np.array([[[math.log(2), 0.0]]]), np.array([1.0]))
    assert out[0, 0] == pytest.approx(2 / 3)
    two = fuse(
        np.array([[[math.log(2), 0.0], [0.0, math.log(3)]]]),
        np.array([1.0, 0.5]),
    )
    assert two[0, 0] == pytest.approx(2 / (2 + math.sqrt(3)))
    assert two.sum() == pytest.approx(1.0)
    assert fuse(np.array([[[5.0, 0.0]]]), np.array([0.0])).tolist() == [[0.5, 0.5]]


def test_confusion_scores_read_the_answered_column(scab_sayer):
    q = confusion_scores(scab_sayer, Prediction(agent="vlm", label="scab", confidence=0.9))
    # column 'scab': black-rot 0, healthy 0, rust 2, scab 6, plus 4 pseudo-answers spread by
    # the prior [9, 9, 9, 7] / 34 (Laplace rows): [36, 36, 104, 232] / 34 over 12
    assert q == pytest.approx(
        {y: n / 34 / 12 for y, n in zip(LABELS, (36, 36, 104, 232), strict=True)}
    )
    ratio = log_ratio(
        scab_sayer, Prediction(agent="vlm", label="scab", confidence=0.9), agent_model="confusion"
    )
    prior = scab_sayer.class_prior()
    assert ratio["rust"] == pytest.approx(math.log(104 / 34 / 12) - math.log(prior["rust"]))
    # a label never behind this answer reads as evidence against it, whatever its prior
    assert ratio["black-rot"] == pytest.approx(math.log(1 / 3))


def test_prediction_set_and_stage_and_keys():
    scores = {"a": 0.6, "b": 0.3, "c": 0.1}
    assert prediction_set(scores, 0.5) == ["a"]
    assert prediction_set(scores, 0.85) == ["a", "b"]
    assert prediction_set(scores, 0.95) == ["a", "b", "c"]
    p0 = Prediction(agent="x", label="a", round=0)
    p1 = Prediction(agent="x", label="a", round=1)
    ev = Evidence(neighbours=(), vote={"a": 1.0})
    assert stage_of([p0], None) == "first"
    assert stage_of([p0], ev) == "evidence"
    assert stage_of([p0, p1], ev) == "reeval"
    assert profile_key("qwen", 0) == "qwen" and profile_key("qwen", 2) == "qwen@reeval"


def test_trust_policy_trusts_fuses_and_asks_again(scab_sayer):
    task = Task(name="t", labels=LABELS, descriptions={y: y for y in LABELS})
    policy = TrustPolicy.from_profiles(
        {"vlm": scab_sayer},
        weights={"first": {"vlm": 1.0}},
        thresholds={"first": 0.8},
        retrieval_source="rag",
    )
    healthy = run(
        policy.assess(
            task=task,
            predictions=[Prediction(agent="vlm", label="healthy", confidence=0.9)],
            evidence=None,
            round=0,
            max_rounds=2,
        )
    )
    # column 'healthy' [0, 8, 0, 0] + 4 x prior: [36, 308, 36, 28] / 34 / 12, over the prior
    # [9, 9, 9, 7] / 34: ratios [1, 77 / 9, 1, 1] / 3
    assert healthy.label == "healthy"
    assert healthy.confidence == pytest.approx(1 / (1 + 27 / 77))
    assert not healthy.trusted and healthy.reevaluate == ["vlm"]
    assert "< threshold 0.800" in healthy.reason
    scab = run(
        policy.assess(
            task=task,
            predictions=[Prediction(agent="vlm", label="scab", confidence=0.9)],
            evidence=Evidence(neighbours=(), vote={"rust": 0.9, "scab": 0.1}),
            round=0,
            max_rounds=2,
        )
    )
    # no profile for 'rag': a conservative default with weight 0.5, said in the reason
    assert scab.weights == {"vlm": 1.0, "rag": 0.5}
    assert "rag: no trust profile, conservative default" in scab.reason
    assert scab.scores["scab"] + scab.scores["rust"] > 0.8


def test_trust_policy_final_round_abstains_below_threshold(scab_sayer):
    task = Task(name="t", labels=LABELS, descriptions={y: y for y in LABELS})
    policy = TrustPolicy.from_profiles({"vlm": scab_sayer}, abstain_below=0.7, set_coverage=0.9)
    a = run(
        policy.assess(
            task=task,
            predictions=[Prediction(agent="vlm", label="scab", confidence=0.9, round=0)],
            evidence=None,
            round=1,
            max_rounds=2,
        )
    )
    # column 'scab' + 4 x prior: [36, 36, 104, 232] / 34 / 12 over the prior [9, 9, 9, 7] / 34
    assert a.label is None and a.confidence == pytest.approx(1 / (1 + 154 / 261))
    assert a.prediction_set[:2] == ["scab", "rust"]
    assert "abstains" in a.reason
    failed = run(
        policy.assess(
            task=task,
            predictions=[Prediction.failure("vlm", "down")],
            evidence=None,
            round=1,
            max_rounds=2,
        )
    )
    assert failed.label is None and failed.prediction_set == list(LABELS)
    assert "vlm failed, left out" in failed.reason


def test_trust_policy_uses_latest_answers_and_reeval_profiles(scab_sayer):
    task = Task(name="t", labels=LABELS, descriptions={y: y for y in LABELS})
    sharp = profile("vlm@reeval", {(y, y): 10 for y in LABELS})
    policy = TrustPolicy.from_profiles({"vlm": scab_sayer, "vlm@reeval": sharp})
    a = run(
        policy.assess(
            task=task,
            predictions=[
                Prediction(agent="vlm", label="scab", confidence=0.9, round=0),
                Prediction(agent="vlm", label="rust", confidence=0.9, round=1),
            ],
            evidence=None,
            round=1,
            max_rounds=2,
        )
    )
    assert list(a.weights) == ["vlm@reeval"] and a.label == "rust"
    assert a.confidence == pytest.approx(11 / 14)
    both = TrustPolicy.from_profiles(policy.profiles_, keep_first_looks=True)
    b = run(
        both.assess(
            task=task,
            predictions=[
                Prediction(agent="vlm", label="scab", confidence=0.9, round=0),
                Prediction(agent="vlm", label="rust", confidence=0.9, round=1),
            ],
            evidence=None,
            round=1,
            max_rounds=2,
        )
    )
    assert set(b.weights) == {"vlm", "vlm@reeval"}


def test_fit_weights_recovers_a_known_weight():
    rng = np.random.default_rng(0)
    n, k = 4000, 3
    r1 = rng.normal(size=(n, k))
    r2 = rng.normal(size=(n, k))
    logits = 2.0 * r1 + 0.0 * r2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    truth = np.array([rng.choice(k, p=row) for row in p])
    w = fit_weights(np.stack([r1, r2], axis=1), truth, l2=0.0)
    assert w[0] == pytest.approx(2.0, abs=0.15)
    assert w[1] == pytest.approx(0.0, abs=0.1)


def test_choose_threshold_reevaluates_the_unsure_rows_that_the_second_look_fixes():
    first = np.array([[0.9, 0.1], [0.95, 0.05], [0.55, 0.45], [0.6, 0.4], [0.99, 0.01]])
    second = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.2, 0.8], [0.9, 0.1]])
    truth = np.array([0, 0, 1, 1, 0])
    threshold, summary = choose_threshold(first, second, truth, budget=0.5, cost=0.0)
    assert 0.6 < threshold < 0.9
    assert summary["accuracy"] == 1.0 and summary["reeval_rate"] == pytest.approx(0.4)
    none, s = choose_threshold(first, second, truth, budget=0.0, cost=0.0)
    assert none == 0.0 and s["accuracy"] == pytest.approx(0.6)
    with pytest.raises(InputError, match="criterion"):
        choose_threshold(first, second, truth, budget=0.5, cost=0.0, criterion="vibes")


def test_baselines():
    task = Task(name="t", labels=LABELS, descriptions={y: y for y in LABELS})
    preds = [
        Prediction(agent="a", label="scab", confidence=0.6),
        Prediction(agent="b", label="scab", confidence=0.7),
        Prediction(agent="c", label="rust", confidence=0.99),
        Prediction.failure("d", "down"),
    ]
    ev = Evidence(neighbours=(), vote={"healthy": 0.8, "rust": 0.2})
    kw = {"task": task, "round": 0, "max_rounds": 2}
    maj = run(MajorityPolicy().assess(predictions=preds, evidence=ev, **kw))
    assert maj.label == "scab" and maj.confidence == pytest.approx(0.5, abs=1e-5)
    assert maj.trusted and maj.reevaluate == []
    mx = run(MaxConfidencePolicy().assess(predictions=preds, evidence=ev, **kw))
    assert mx.label == "rust" and mx.confidence == pytest.approx(0.99)
    rag = SinglePolicy(source="rag", retrieval_source="rag")
    waiting = run(rag.assess(predictions=preds, evidence=None, **kw))
    assert not waiting.trusted and waiting.label is None
    got = run(rag.assess(predictions=preds, evidence=ev, **kw))
    assert got.label == "healthy" and got.confidence == pytest.approx(0.8)
    down = run(SinglePolicy(source="d").assess(predictions=preds, evidence=None, **kw))
    assert down.label is None and "down" in down.reason
    later = [*preds, Prediction(agent="b", label="rust", confidence=0.9, round=1)]
    assert run(SinglePolicy(source="b").assess(predictions=later, evidence=None, **kw)).label == (
        "rust"
    )


def test_make_policy():
    assert make_policy("trust").name == "trust"
    assert make_policy("majority").name == "majority"
    assert make_policy("max-confidence").name == "max-confidence"
    assert make_policy("single:gpt").name == "single:gpt"
    assert "single:<agent>" in policy_names()
    with pytest.raises(InputError, match="unknown policy 'vote'"):
        make_policy("vote")
    with pytest.raises(InputError, match="needs a source"):
        make_policy("single")
    with pytest.raises(InputError, match="policy 'majority'"):
        make_policy("majority", colour="red")
    assert policy_names() == ["trust", "llm", "majority", "max-confidence", "single:<agent>"]
    with pytest.raises(InputError, match="policy 'llm' needs an orchestrator LLM"):
        make_policy("llm")
    with pytest.raises(InputError, match="agent_model"):
        make_policy("trust", agent_model="magic")


def test_an_agent_named_rag_is_fused_when_no_retriever_is_named():
    task = Task(name="t", labels=LABELS, descriptions={y: y for y in LABELS})
    preds = [
        Prediction(agent="qwen", label="scab", confidence=0.9),
        Prediction(agent="gpt", label="rust", confidence=0.9),
        Prediction(agent="rag", label="rust", confidence=0.9),
    ]
    kw = {"task": task, "evidence": None, "round": 0, "max_rounds": 2}
    trust = run(TrustPolicy.from_profiles({}).assess(predictions=preds, **kw))
    assert trust.weights == {"qwen": 0.5, "gpt": 0.5, "rag": 0.5}
    assert trust.label == "rust" and trust.reevaluate == ["qwen", "gpt", "rag"]
    majority = run(MajorityPolicy().assess(predictions=preds, **kw))
    assert majority.label == "rust" and majority.confidence == pytest.approx(2 / 3, abs=1e-5)


def test_baselines_count_the_retrievers_answer_once_with_the_evidence():
    task = Task(name="t", labels=LABELS, descriptions={y: y for y in LABELS})
    preds = [
        Prediction(agent="a", label="scab", confidence=0.6),
        Prediction(agent="b", label="scab", confidence=0.7),
        Prediction(agent="retrieval", label="healthy", confidence=0.9),
    ]
    ev = Evidence(neighbours=(), vote={"healthy": 0.8, "rust": 0.2})
    kw = {"task": task, "round": 0, "max_rounds": 2}
    policy = MajorityPolicy(retrieval_source="retrieval")
    with_evidence = run(policy.assess(predictions=preds, evidence=ev, **kw))
    # a, b and the evidence vote: scab 2 of 3 (the retriever's own answer is not a 4th vote)
    assert with_evidence.label == "scab"
    assert with_evidence.confidence == pytest.approx(2 / 3, abs=1e-5)
    before = run(policy.assess(predictions=preds, evidence=None, **kw))
    assert before.scores["healthy"] == pytest.approx(1 / 3, abs=1e-5)
