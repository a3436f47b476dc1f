"""Rules of choice for the select policy, measured on the study's files and on agent sets
derived from them.

For every file, seed and outer fold this script records, once, what a rule of choice may read
and what it would get:
- per family, the inner cross-validated correctness of every training row on ``--repeats``
  inner splits (the trust policy's own inner folds first) and the log-probability it gave the
  true label (``select.inner_cross_validation``, on the training rows only);
- per family, fitted on all training rows, its correctness on the held-out rows (the replay's
  own decisions, ``decide_fold``), and that of the baselines that are not families: the
  majority vote and each recorded source alone (a second-look column counts as a source: it
  stands for re-evaluating every row).
A rule maps the first to a family; its replay accuracy is then the chosen families' held-out
correctness, with no refit. Every rule of ``RULES`` is scored this way on the same fits; the
last table gives, per set, the select rule beside every baseline, its gap to the best one with
the paired standard error (``paired_gap``), and the families it chose.

The agent sets: the two study files as they are, and sets derived from them: Case 3 without
GPT-4o, without Qwen, without the retrieval vote, with first looks only, first looks with GPT-4o
label-only, first looks plus a random agent, its first looks and the vote as three agents (no
retriever), with label-only agents; Case 1 with a third, weak synthetic agent (right 35% of the
time, seeded), a random agent, an agent that always says the first label, a copy of GPT-4o and
one of Qwen with a quarter of their answers replaced at random (agents whose errors follow
another's), and label-only; Case 3's first looks plus such a copy of the vote. The select rule
of this commit was chosen with these sets in view: they check it, they are not a held-out test
of it.

Usage:
  python bench/select_rules.py                       # writes bench/results/select_rules.json
  python bench/select_rules.py --sets case3 --seeds 0 1 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.tables import read_rows  # noqa: E402
from eval.recorded.records import read_records  # noqa: E402
from orchestrator.policies.common import one_blas_thread  # noqa: E402
from orchestrator.policies.families import answers_from_records, fit_family_policy  # noqa: E402
from orchestrator.policies.select import (  # noqa: E402
    FAMILIES,
    MARGIN_Z,
    SECOND_LOOK_MARGIN_Z,
    STACKING_MARGIN_Z,
    challenge_margins,
    choose_family,
    inner_cross_validation,
    preference,
)
from orchestrator.policies.trust import TrustPolicy  # noqa: E402
from orchestrator.replay.run import (  # noqa: E402
    ORCHESTRATOR_SOURCE,
    ReplaySetup,
    decide_fold,
    policy_fitter,
    replay_folds,
)

PAPER_DIR = Path(os.environ.get("TRUSTORCH_PAPER_DATA", ROOT.parent / "shared/data/paper"))
CASE1 = PAPER_DIR / "case1_zero_shot.csv"
CASE3 = PAPER_DIR / "case3_trust_rag.csv"


def derived_file(source: Path, edit: Callable[..., Any], target: Path) -> Path:
    """``source``'s rows and columns as ``edit(rows, fields)`` changes them, written to
    ``target``."""
    fields, numbered = read_rows(source)
    rows, fields = edit([{k: str(v) for k, v in row.items()} for _, row in numbered], fields)
    with target.open("w", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        out.writeheader()
        out.writerows(rows)
    return target


def without(prefixes: Sequence[str]) -> Callable[[list[dict[str, str]], list[str]], Any]:
    def edit(rows: list[dict[str, str]], fields: list[str]) -> tuple[list, list[str]]:
        return rows, [f for f in fields if not any(f.startswith(p) for p in prefixes)]

    return edit


def first_looks_only(rows: list[dict[str, str]], fields: list[str]) -> tuple[list, list[str]]:
    second = {f"{a}_{x}" for a in ("qwen", "gpt") for x in ("pred", "conf", "reason")}
    return rows, [f for f in fields if f not in second]


def label_only(rows: list[dict[str, str]], fields: list[str]) -> tuple[list, list[str]]:
    agents = [f[: -len("_conf")] for f in fields if f.endswith("_conf") and not f.startswith("rag")]
    for row in rows:
        for agent in agents:
            if row.get(f"{agent}_pred"):
                row[f"{agent}_conf"] = "1.0"
    return rows, fields


def weak_third_agent(rows: list[dict[str, str]], fields: list[str]) -> tuple[list, list[str]]:
    rng = np.random.default_rng(2024)
    labels = sorted({r["category"] for r in rows})
    for row in rows:
        truth = row["category"]
        others = [y for y in labels if y != truth]
        row["weak_pred"] = truth if rng.random() < 0.35 else str(rng.choice(others))
        row["weak_conf"] = f"{rng.uniform(0.6, 1.0):.2f}"
    return rows, [*fields, "weak_pred", "weak_conf"]


def extra_agent(name: str, answer: Callable[[str, list[str], np.random.Generator, dict], str]):
    """An edit adding agent ``name``, whose label on a row is ``answer(truth, labels, rng, row)``
    and whose confidence is uniform in [0.6, 1] (seeded)."""

    def edit(rows: list[dict[str, str]], fields: list[str]) -> tuple[list, list[str]]:
        rng = np.random.default_rng(2024)
        labels = sorted({r["category"] for r in rows})
        for row in rows:
            row[f"{name}_pred"] = answer(row["category"], labels, rng, row)
            row[f"{name}_conf"] = f"{rng.uniform(0.6, 1.0):.2f}"
        return rows, [*fields, f"{name}_pred", f"{name}_conf"]

    return edit


def random_answer(truth: str, labels: list[str], rng: np.random.Generator, row: dict) -> str:
    return str(rng.choice(labels))


def constant_answer(truth: str, labels: list[str], rng: np.random.Generator, row: dict) -> str:
    return labels[0]


def noisy_copy(column: str) -> Callable[[str, list[str], np.random.Generator, dict], str]:
    """An answer: the row's ``column``, replaced by a random label on a quarter of the rows."""

    def answer(truth: str, labels: list[str], rng: np.random.Generator, row: dict) -> str:
        return str(rng.choice(labels)) if rng.random() < 0.25 else row[column]

    return answer


def rare_class(label: str, keep: int) -> Callable[..., Any]:
    """An edit keeping ``keep`` rows (seeded choice) of the rows whose truth is ``label``: a
    class that is rare among the labelled rows, as in most field data."""

    def edit(rows: list[dict[str, str]], fields: list[str]) -> tuple[list, list[str]]:
        rng = np.random.default_rng(2024)
        of_label = [i for i, r in enumerate(rows) if r["category"] == label]
        kept = set(rng.choice(of_label, size=keep, replace=False).tolist())
        return [r for i, r in enumerate(rows) if r["category"] != label or i in kept], fields

    return edit


def then(*edits: Callable[..., Any]) -> Callable[..., Any]:
    def edit(rows: list[dict[str, str]], fields: list[str]) -> tuple[list, list[str]]:
        for one in edits:
            rows, fields = one(rows, fields)
        return rows, fields

    return edit


def label_only_agent(agent: str) -> Callable[..., Any]:
    def edit(rows: list[dict[str, str]], fields: list[str]) -> tuple[list, list[str]]:
        for row in rows:
            if row.get(f"{agent}_pred"):
                row[f"{agent}_conf"] = "1.0"
        return rows, fields

    return edit


def vote_as_agent(rows: list[dict[str, str]], fields: list[str]) -> tuple[list, list[str]]:
    """Case 3's first looks and its retrieval vote as a third agent (``clip``): three agents
    with first looks only, no retriever."""
    for row in rows:
        row["clip_pred"], row["clip_conf"] = row["rag_pred"], row["rag_conf"]
    rows, fields = first_looks_only(rows, fields)
    return rows, [*(f for f in fields if not f.startswith("rag_")), "clip_pred", "clip_conf"]


AGENT_SETS: dict[str, tuple[Path, Callable[..., Any] | None]] = {
    "case1": (CASE1, None),
    "case3": (CASE3, None),
    "case3-no-gpt": (CASE3, without(["gpt_"])),
    "case3-no-qwen": (CASE3, without(["qwen_"])),
    "case3-no-rag": (CASE3, without(["rag_"])),
    "case3-first-looks": (CASE3, first_looks_only),
    "case3-label-only": (CASE3, label_only),
    "case1-weak-third": (CASE1, weak_third_agent),
    "case1-label-only": (CASE1, label_only),
    "case3-first-gpt-label": (CASE3, then(first_looks_only, label_only_agent("gpt_initial"))),
    "case3-three-agents": (CASE3, vote_as_agent),
    "case3-first-random": (CASE3, then(first_looks_only, extra_agent("rand", random_answer))),
    "case1-random": (CASE1, extra_agent("rand", random_answer)),
    "case1-constant": (CASE1, extra_agent("const", constant_answer)),
    "case1-noisy-gpt": (CASE1, extra_agent("gpt2", noisy_copy("gpt_pred"))),
    "case1-noisy-qwen": (CASE1, extra_agent("qwen2", noisy_copy("qwen_pred"))),
    "case3-first-noisy-vote": (
        CASE3,
        then(first_looks_only, extra_agent("rag2", noisy_copy("rag_pred"))),
    ),
    "case3-rare-black-rot": (CASE3, rare_class("black-rot", 4)),
    "case3-rare-scab": (CASE3, rare_class("scab", 8)),
    "case3-first-rare-healthy": (CASE3, then(first_looks_only, rare_class("healthy", 6))),
    "case1-rare-black-rot": (CASE1, rare_class("black-rot", 4)),
    "case1-rare-rust": (CASE1, rare_class("rust", 8)),
}


def agent_set_file(name: str, folder: Path) -> Path:
    source, edit = AGENT_SETS[name]
    if edit is None:
        return source
    return derived_file(source, edit, folder / f"{name}.csv")


def record_fits(
    path: Path, seeds: Sequence[int], repeats: int, folds: int | None = None
) -> list[dict[str, Any]]:
    """Per seed and outer fold: the inner-CV arrays of every family and its held-out
    correctness (the module docstring)."""
    records = read_records(path)
    setup = ReplaySetup.of(path, records)
    labels = list(records.labels)
    truth_of = {r.id: r.truth for r in records.records}
    sources: dict[str, dict[str, str | None]] = {}
    for r in records.records:
        if r.round == 0 and r.agent != ORCHESTRATOR_SOURCE:
            sources.setdefault(r.agent, {})[r.id] = r.pred
    second_looks = any(c.reeval for c in setup.columns)
    families = [f for f in FAMILIES if f != "second-look" or second_looks]
    out = []
    for seed in seeds:
        for k, held in enumerate(replay_folds(setup.images, 5, seed)):
            held_set = set(held)
            train = [li.extra["id"] for i, li in enumerate(setup.images) if i not in held_set]
            images = [setup.images[i] for i in held]
            with one_blas_thread():
                trust = TrustPolicy(retrieval_source=setup.retrieval, seed=seed).fit(
                    records, setup.columns, ids=train
                )
                answers = answers_from_records(records, setup.columns, setup.retrieval, train)
                inner = inner_cross_validation(
                    records,
                    setup.columns,
                    train,
                    trust,
                    answers,
                    families=families,
                    repeats=repeats,
                    folds=folds,
                )
            held_right: dict[str, list[bool]] = {}
            majority = policy_fitter("majority")(
                records, setup.columns, train, setup.retrieval, seed
            )
            _, decided = decide_fold(setup, majority, images, max_rounds=2)
            baseline_right = {"majority": [d.label == d.truth for d in decided]}
            held_ids = [li.extra["id"] for li in images]
            for agent, answers_of in sources.items():
                baseline_right[agent] = [answers_of.get(i) == truth_of[i] for i in held_ids]
            for family in families:
                policy = (
                    trust
                    if family == "trust"
                    else fit_family_policy(family, records, setup.columns, train, setup.retrieval)
                )
                _, decided = decide_fold(setup, policy, images, max_rounds=2)
                held_right[family] = [d.label == d.truth for d in decided]
            rows = np.arange(inner.truth.size)
            out.append(
                {
                    "seed": seed,
                    "fold": k,
                    "labels": labels,
                    "second_looks": second_looks,
                    "families": families,
                    "inner_right": {f: inner.right[f].tolist() for f in families},
                    "inner_logp": {
                        f: np.log(np.maximum(inner.probabilities[f][:, rows, inner.truth], 1e-12))
                        .round(6)
                        .tolist()
                        for f in families
                    },
                    "held_right": held_right,
                    "baseline_right": baseline_right,
                    "held_ids": held_ids,
                }
            )
    return out


# ---------------------------------------------------------------- rules of choice
# Each rule reads one fit's inner-CV arrays (``splits``: how many of the recorded inner splits
# it averages per row) and names a family; none reads ``held_right``.

Rule = Callable[[dict[str, Any]], str]
FUSIONS = ("trust", "dawid-skene", "stacking")
CHAIN = ("best-single", *FUSIONS)
"""The first-look families, in ``select``'s order of preference on first looks."""


def families_of(fit: dict[str, Any]) -> list[str]:
    return list(fit.get("families", FAMILIES))


def inner_right(fit: dict[str, Any], family: str, splits: int) -> np.ndarray:
    return np.asarray(fit["inner_right"][family][:splits], dtype=float).mean(axis=0)


def inner_loglik(fit: dict[str, Any], family: str, splits: int) -> float:
    return float(np.mean(fit["inner_logp"][family][:splits]))


def paired_beats(challenger: np.ndarray, incumbent: np.ndarray, z: float) -> bool:
    d = challenger - incumbent
    return bool(d.sum() > z * np.sqrt((d**2).sum()))


def chain(margins: Sequence[float], splits: int = 1) -> Rule:
    """``select``'s chain (best-single, trust, dawid-skene, stacking), each challenge with its
    own margin in standard errors (``margins[i]`` for the (i+1)-th family)."""

    def rule(fit: dict[str, Any]) -> str:
        kept = CHAIN[0]
        for family, z in zip(CHAIN[1:], margins, strict=True):
            if paired_beats(inner_right(fit, family, splits), inner_right(fit, kept, splits), z):
                kept = family
        return kept

    return rule


def always(family: str) -> Rule:
    """``family``, or the trust policy on a set where ``family`` was not fitted."""
    return lambda fit: family if family in families_of(fit) else "trust"


def best_accuracy(splits: int = 1) -> Rule:
    return lambda fit: max(families_of(fit), key=lambda f: inner_right(fit, f, splits).mean())


def best_loglik(splits: int = 1) -> Rule:
    return lambda fit: max(families_of(fit), key=lambda f: inner_loglik(fit, f, splits))


def one_se(prior: str, z: float, splits: int = 1) -> Rule:
    """The best inner accuracy, but ``prior`` unless the best beats it by ``z`` paired SEs."""

    def rule(fit: dict[str, Any]) -> str:
        best = max(families_of(fit), key=lambda f: inner_right(fit, f, splits).mean())
        won = paired_beats(inner_right(fit, best, splits), inner_right(fit, prior, splits), z)
        return best if won else prior

    return rule


def loglik_fusion_then_source(z: float, splits: int = 1) -> Rule:
    """The fusion with the best inner log-likelihood, kept when its accuracy beats the best
    single source by ``z`` paired SEs (log-likelihood ranks fusions; accuracy guards the
    source)."""

    def rule(fit: dict[str, Any]) -> str:
        fusion = max(FUSIONS, key=lambda f: inner_loglik(fit, f, splits))
        source = inner_right(fit, "best-single", splits)
        return fusion if paired_beats(inner_right(fit, fusion, splits), source, z) else CHAIN[0]

    return rule


def pooled_fusions(z: float, by: str = "accuracy") -> Rule:
    """On first looks: the fusions' mean per-row correctness (less noisy than any one's) must
    beat the best single source by ``z`` paired SEs; then the fusion of best inner
    ``accuracy`` (or ``log-lik``). With second looks as ``select``."""

    def rule(fit: dict[str, Any]) -> str:
        if fit["second_looks"]:
            return select_rule(fit)
        fused = np.mean([inner_right(fit, f, 1) for f in FUSIONS], axis=0)
        if not paired_beats(fused, inner_right(fit, CHAIN[0], 1), z):
            return CHAIN[0]
        if by == "log-lik":
            return max(FUSIONS, key=lambda f: inner_loglik(fit, f, 1))
        return max(FUSIONS, key=lambda f: inner_right(fit, f, 1).mean())

    return rule


def accuracy_and_loglik(z: float) -> Rule:
    """On first looks: ``select``'s chain with ``z`` for the trust policy and Dawid-Skene
    (stacking at ``STACKING_MARGIN_Z``), where a challenger must also have an inner
    log-likelihood no lower than the kept family's. With second looks as ``select``."""
    margins = (z, z, STACKING_MARGIN_Z)

    def rule(fit: dict[str, Any]) -> str:
        if fit["second_looks"]:
            return select_rule(fit)
        kept = CHAIN[0]
        for family, margin in zip(CHAIN[1:], margins, strict=True):
            won = paired_beats(inner_right(fit, family, 1), inner_right(fit, kept, 1), margin)
            if won and inner_loglik(fit, family, 1) >= inner_loglik(fit, kept, 1):
                kept = family
        return kept

    return rule


def select_rule(fit: dict[str, Any]) -> str:
    """The select policy's own rule (``preference``, ``challenge_margins`` and
    ``choose_family``) on one split."""
    second = bool(fit["second_looks"])
    families = families_of(fit)
    scores: dict[str, dict[str, float]] = {f: {} for f in preference(families, second_looks=second)}
    right = {f: inner_right(fit, f, 1) for f in families}
    return choose_family(scores, right, z=challenge_margins(families, second_looks=second))


def previous_select_rule(fit: dict[str, Any]) -> str:
    """The rule before this one: on first looks, z = 0.5 for every challenger, stacking too."""
    second = bool(fit["second_looks"])
    families = families_of(fit)
    scores: dict[str, dict[str, float]] = {f: {} for f in preference(families, second_looks=second)}
    right = {f: inner_right(fit, f, 1) for f in families}
    return choose_family(scores, right, z=SECOND_LOOK_MARGIN_Z if second else MARGIN_Z)


def first_look_chain(margins: Sequence[float]) -> Rule:
    """``select``'s rule with its own first-look margins (``chain``); with second looks as
    ``select``."""
    first_looks = chain(margins)
    return lambda fit: select_rule(fit) if fit["second_looks"] else first_looks(fit)


SELECT_RULE = "select (this commit's default)"

RULES: dict[str, Rule] = {
    SELECT_RULE: select_rule,
    "select before (stacking at z=0.5)": previous_select_rule,
    "as select, first looks at z=0.1": first_look_chain([0.1, 0.1, STACKING_MARGIN_Z]),
    "as select, first looks at z=0.25": first_look_chain([0.25, 0.25, STACKING_MARGIN_Z]),
    "as select, first looks at z=0.4": first_look_chain([0.4, 0.4, STACKING_MARGIN_Z]),
    "chain z=0.5 on every file": chain([0.5, 0.5, 0.5]),
    **{f"always {f}": always(f) for f in FAMILIES},
    "best accuracy": best_accuracy(),
    "best accuracy, 5 splits": best_accuracy(5),
    "best log-lik": best_loglik(),
    "one-SE for trust, z=1": one_se("trust", 1.0),
    "one-SE for trust, z=0.5": one_se("trust", 0.5),
    "chain z=0.5, 3 splits": chain([0.5, 0.5, 0.5], 3),
    "chain z=0.5, 5 splits": chain([0.5, 0.5, 0.5], 5),
    "chain z=1": chain([1.0, 1.0, 1.0]),
    "chain trust z=0, others 0.5": chain([0.0, 0.5, 0.5]),
    "chain trust z=0, others 1.645": chain([0.0, 1.645, 1.645]),
    "chain trust z=0, others 1.645, 5 sp": chain([0.0, 1.645, 1.645], 5),
    "log-lik fusion, z=0 vs source": loglik_fusion_then_source(0.0),
    "log-lik fusion, z=0.5 vs source": loglik_fusion_then_source(0.5),
    **{f"pooled fusions z={z} vs source": pooled_fusions(z) for z in (0.0, 0.25, 0.5)},
    "pooled fusions z=0, best log-lik": pooled_fusions(0.0, by="log-lik"),
    "as select z=0.1, no log-lik loss": accuracy_and_loglik(0.1),
    "as select z=0.25, no log-lik loss": accuracy_and_loglik(0.25),
}


def baseline_accuracies(fits: list[dict[str, Any]]) -> dict[str, float]:
    """Mean held-out accuracy over seeds of every baseline of a set: each source alone, the
    majority vote, and the fitted baseline families (best-single, dawid-skene, stacking)."""
    names = [*fits[0]["baseline_right"], *(f for f in families_of(fits[0]) if f != "trust")]
    out = {}
    for name in names:
        per_seed: dict[int, list[bool]] = {}
        for fit in fits:
            right = fit["held_right"].get(name, fit["baseline_right"].get(name))
            per_seed.setdefault(fit["seed"], []).extend(right)
        out[name] = float(np.mean([np.mean(v) for v in per_seed.values()]))
    return out


def score_rules(fits_by_set: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per rule and agent set: mean held-out accuracy over seeds, per seed, families chosen,
    and the gap to the best baseline of the set (``baseline_accuracies``)."""
    out: dict[str, Any] = {}
    for rule_name, rule in RULES.items():
        row: dict[str, Any] = {}
        for set_name, fits in fits_by_set.items():
            per_seed: dict[int, list[bool]] = {}
            chosen: dict[str, int] = {}
            for fit in fits:
                family = rule(fit)
                chosen[family] = chosen.get(family, 0) + 1
                per_seed.setdefault(fit["seed"], []).extend(fit["held_right"][family])
            accs = [float(np.mean(v)) for v in per_seed.values()]
            row[set_name] = {"accuracy": float(np.mean(accs)), "per_seed": accs, "chosen": chosen}
        out[rule_name] = row
    for set_name, fits in fits_by_set.items():
        baseline = max(baseline_accuracies(fits).values())
        for row in out.values():
            row[set_name]["below_best_baseline"] = baseline - row[set_name]["accuracy"]
    return out


def paired_gap(fits: list[dict[str, Any]], rule: Rule, baseline: str) -> tuple[float, float]:
    """How far ``rule`` falls below ``baseline`` on a set, and that gap's standard error:
    per row, the difference of their correctness averaged over the seeds; the gap is its
    mean over the rows, the error sqrt(sum of squares) / rows (the paired form of ``beats``)."""
    diff: dict[str, list[float]] = {}
    for fit in fits:
        family = rule(fit)
        base = fit["held_right"].get(baseline, fit["baseline_right"].get(baseline))
        for rid, ours, theirs in zip(fit["held_ids"], fit["held_right"][family], base, strict=True):
            diff.setdefault(rid, []).append(float(theirs) - float(ours))
    per_row = np.array([np.mean(v) for v in diff.values()])
    return float(per_row.mean()), float(np.sqrt((per_row**2).sum()) / per_row.size)


def print_set_table(fits_by_set: dict[str, list[dict[str, Any]]], scores: dict[str, Any]) -> None:
    """Per set: the select rule, trust alone, every baseline, and the families select chose."""
    chosen_by = scores[SELECT_RULE]
    for set_name, fits in fits_by_set.items():
        baselines = baseline_accuracies(fits)
        best = max(baselines, key=baselines.__getitem__)
        row = chosen_by[set_name]
        chosen = ", ".join(f"{f} {n}" for f, n in sorted(row["chosen"].items()))
        others = "  ".join(f"{n} {a:.4f}" for n, a in baselines.items())
        trust = scores["always trust"][set_name]["accuracy"]
        gap, error = paired_gap(fits, RULES[SELECT_RULE], best)
        print(
            f"{set_name:22s} select {row['accuracy']:.4f} (best baseline {best} "
            f"{baselines[best]:.4f}; gap {gap:+.4f} +- {error:.4f}); trust {trust:.4f}"
        )
        print(f"{'':22s} {others}\n{'':22s} chosen: {chosen}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(AGENT_SETS), choices=list(AGENT_SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner-folds", type=int, help="inner folds (default: the trust policy's)")
    parser.add_argument("--fits-in", type=Path, help="reuse the fits of an earlier run's JSON")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench/results/select_rules.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.fits_in:
        fits_by_set = json.loads(args.fits_in.read_text())["fits"]
    else:
        fits_by_set = {}
        with tempfile.TemporaryDirectory() as folder:
            for name in args.sets:
                path = agent_set_file(name, Path(folder))
                fits_by_set[name] = record_fits(path, args.seeds, args.repeats, args.inner_folds)
                print(f"recorded {name} ({time.perf_counter() - started:.0f} s)", flush=True)
    scores = score_rules(fits_by_set)
    names = list(fits_by_set)
    print(f"{'rule':37s}" + "".join(f"{n[:13]:>14s}" for n in names) + "  worst gap")
    for rule_name, row in scores.items():
        worst = max(row[n]["below_best_baseline"] for n in names)
        print(
            f"{rule_name:37s}"
            + "".join(f"{row[n]['accuracy']:14.4f}" for n in names)
            + f"  {worst:+9.4f}"
        )
    print("worst gap: the largest shortfall against the best baseline of a set")
    print()
    print_set_table(fits_by_set, scores)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(
        json.dumps(
            {
                "seeds": args.seeds,
                "repeats": args.repeats,
                "inner_folds": args.inner_folds,
                "rules": scores,
                "fits": fits_by_set,
            }
        )
        + "\n"
    )
    print(f"wrote {args.json_out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
