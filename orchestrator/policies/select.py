"""The ``select`` policy: per fit, the family of fusion that cross-validation on the training
rows supports, starting from the best single source (or, when agents can look again, from the
trust policy that reads their second looks), so adding a source does not make the decision
worse than what the user already had.

``SelectPolicy(**settings).fit(records, columns, ids=...)`` scores every family of
``FAMILIES`` by inner cross-validation on the rows ``ids`` only, on the inner folds of the trust
policy's own cross-fitting (``trust_fit.inner_fold_assignment``: stratified, seeded by
``seed``; ``repeats`` > 1 adds more inner splits):

- ``best-single``: the source with the best accuracy on the fitting rows, its answers as they
  are (``families.BestSingle``);
- ``trust``: the calibrated product of experts with its re-evaluation cascade
  (``TrustPolicy``); each inner fold is decided by weights and a threshold fitted on the other
  folds, from ratios of profiles that did not see it (``trust_fit.cross_validated_cascade``);
- ``dawid-skene``, ``stacking`` (``orchestrator.policies.families``): fitted on the other inner
  folds, on first looks and the vote; they never ask for re-evaluation;
- ``second-look`` (only where an agent can look again): the agent whose recorded second look is
  right most often, asked to look again on every image (``families.SecondLook``). The trust
  policy re-evaluates within its budget (a quarter of the images); where first looks are far
  worse than one agent's second look, that is not enough: on Case 3 without its retrieval vote
  the trust policy scores 0.695 (seeds 0-4) and GPT-4o's second look 0.875; ``second-look``
  beats it in 25 of 25 fits (0.875, three calls per image), and is chosen in none on Case 3.

The choice (``choose_family``): the families challenge each other in a preference order
(``preference``); a challenger replaces the family kept so far only when, on the same inner-CV
rows, it gets right more rows the kept one gets wrong than the reverse by more than a margin
of z standard errors of that paired difference. An abstention counts as wrong. The order and
the margin depend on what the families read:
- every agent answers once (no second looks): all families read the same first looks; the
  order is ``FAMILIES`` (the best source alone first, then the trust policy, Dawid-Skene,
  stacking), z is ``margin_z`` (0.5) and, for stacking, ``stacking_margin_z`` (1.645):
  stacking fits the most parameters (a weight per source, label and feature) on a hundred rows,
  and its inner-CV leads are the likeliest to be noise (on Case 1 plus an agent that always
  gives one label it won 4 of 25 fits at z = 0.5 and lost 1-3 held-out rows in each);
- agents can look again: the trust policy alone reads their second looks, the other families
  are its first stage without them; it goes first and a challenger must beat it by
  ``second_look_margin_z`` (1.645, one-sided 5%): on Case 3 the trust policy's lead over the
  others is in the few rows it re-evaluates, a row or two of the inner folds, so inner CV
  cannot show it and a small margin replaced it with a family that reads less (Dawid-Skene on
  one discordant row, the retrieval vote on a 1-1 tie), at the cost of a row each time.
With about a hundred training rows, inner-CV accuracies a row or two apart are noise; the
margins keep a family that is not shown to be better from displacing the prior one. The
cost of a margin is one-sided: a fit whose training rows show a fusion's lead weakly is a fit
whose held-out rows hold much of it (the file's lead is split between the two), so each fit
that stays with the best source is one where the fusion would have gained most. With
``repeats`` > 1 each row's correctness is its fraction right over the inner splits, so a row is
one observation however often it was scored; ``inner_cross_validation`` can also score on
other fold counts (``folds``).

Why this rule (mean accuracy over seeds 0-4, 5-fold; targets: Case 1 >= 0.569, GPT-4o alone,
Case 3 >= 0.98, each set >= its best baseline: each source alone, the majority vote, the best
source, Dawid-Skene, stacking, fitted on the same folds; ``bench/select_rules.py`` scores each
rule on the same fits, on the study's files and on 20 agent sets derived from them): Case 1
0.569 (best-single in 25 of 25 fits), Case 3 0.981 (trust in 25 of 25). Against the rule before
(stacking at z = 0.5 like the others) it is equal or better on every set: Case 1 plus a constant
agent 0.569 (was 0.559), plus a weak, independent third agent 0.619 (0.614; Dawid-Skene 0.645),
plus a random agent 0.565 (Dawid-Skene 0.596, by a random agent that happens to be right less
often than chance); Case 3's first looks 0.966 (Dawid-Skene 0.969, one standard error of the
paired difference), the same with GPT-4o label-only or the vote as a third agent; sets with
second looks unchanged (Case 3 without GPT-4o or without Qwen 0.9625, the vote alone 0.9625;
label-only agents 0.981). A smaller first-look z helps the weak-agent set and hurts agents whose
errors follow another's: z = 0.25 gives 0.630 there but 0.560 on Case 1 plus a noisy copy of
Qwen (GPT-4o alone 0.569; the copy was added after z = 0.25 had been picked, and is the one set
that judged it), z = 0.1 gives 0.5625 on Case 1. Measured and rejected on the same fits: one
order for every file with a margin only for the trust policy (z = 0 against the best source, 0.5
or 1.645 for the others): 0.569 / 0.974-0.976, and 0.555 on Case 1 with 10-fold inner splits;
lowest inner-CV log-loss: 0.519 / 0.980 (on Case 1 fusing the weaker agent makes the
distribution better and the decision worse); the fusion of best log-likelihood against the best
source on accuracy: 0.563-0.569 / 0.974-0.975; best accuracy: 0.559 / 0.976; the trust policy
first on every file (one-SE rules): 0.529-0.540 on Case 1; repeated inner splits on first looks:
Case 1 0.5675 with 5 splits at z = 0.5 or 3-5 at z = 0.25, 0.569 with 3 at z = 0.5 but 0.621
with the weak agent; a final challenge by the family of best inner accuracy after the chain: no
gain (equal or lower); two more candidates, Dawid-Skene with each confusion row shrunk toward
the source's symmetric confusion, and Dawid-Skene over (label, confidence above the source's
median) symbols: alone 0.536 / 0.553 on Case 1, 0.645 / 0.593 with the weak agent, and beside
the others they cost Case 1 (0.550-0.561) in every chain tried.

The chosen family is then fitted on every training row and decides; the trust policy's routing
(evidence, re-evaluation, abstention) is kept when it is chosen. Learned: ``chosen_``,
``scores_`` (family -> inner-CV ``accuracy`` and ``log_loss``, and its challenge's ``against``,
``wins``, ``losses``, ``margin_z``; in the order of preference), ``policy_`` (the fitted
policy that decides), ``trust_`` (the fitted trust policy, always fitted: its settings are
what a saved policy file holds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.types import Prediction
from core.errors import InputError, NotFittedError
from core.task import Task
from eval.folds import held_out_rows
from eval.recorded.records import RecordSet
from orchestrator.decision import Assessment
from orchestrator.policies.base import FusionPolicy
from orchestrator.policies.common import one_blas_thread
from orchestrator.policies.families import (
    ARRAY_FAMILIES,
    BestSingle,
    DawidSkene,
    FamilyPolicy,
    SourceAnswers,
    Stacking,
    answers_from_records,
    log_loss,
)
from orchestrator.policies.trust import TrustPolicy
from orchestrator.policies.trust_fit import cross_validated_cascade, repeated_cross_fit
from orchestrator.policies.trust_sources import SourceColumns
from rag.evidence import Evidence

FOLD_SEED_STEP = 7919
"""Seeds of the repeated inner folds: the policy's seed plus multiples of this prime."""

FAMILIES = ("best-single", "trust", "dawid-skene", "stacking", "second-look")
"""The families ``select`` chooses among, in its order of preference on first looks
(``second-look`` only where an agent can look again)."""

MARGIN_Z = 0.5
"""Margin of a challenge on first looks, in standard errors of the paired difference."""

SECOND_LOOK_MARGIN_Z = 1.645
"""Margin of a challenge to the trust policy when it reads second looks (one-sided 5%)."""

STACKING_MARGIN_Z = 1.645
"""Margin of every challenge by stacking, the family with the most fitted parameters."""


def preference(families: Sequence[str], *, second_looks: bool) -> list[str]:
    """The order in which ``families`` challenge each other: as given (``FAMILIES``: the best
    single source first) when every family reads the same first looks; the trust policy first
    when agents can look again, since it alone reads their second looks."""
    if second_looks and "trust" in families:
        return ["trust", *(f for f in families if f != "trust")]
    return list(families)


def beats(challenger: np.ndarray, incumbent: np.ndarray, z: float) -> tuple[bool, int, int]:
    """Whether per-row correctness ``challenger`` beats ``incumbent`` on the same rows by more
    than ``z`` standard errors of the paired difference, with the counts: rows the challenger
    gets right more often (``wins``) and rows the incumbent gets right more often
    (``losses``). Correctness is a boolean per row, or the fraction of repeated inner splits
    that got the row right; with d the per-row difference, it beats when
    ``sum(d) > z * sqrt(sum(d**2))`` (for booleans: ``wins - losses > z * sqrt(wins +
    losses)``, the normal form of a paired sign test)."""
    d = np.asarray(challenger, dtype=float) - np.asarray(incumbent, dtype=float)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return bool(d.sum() > z * np.sqrt((d**2).sum())), wins, losses


def challenge_margins(
    families: Sequence[str],
    *,
    second_looks: bool,
    margin_z: float = MARGIN_Z,
    second_look_margin_z: float = SECOND_LOOK_MARGIN_Z,
    stacking_margin_z: float = STACKING_MARGIN_Z,
) -> dict[str, float]:
    """Per family, the margin its challenge must clear: ``second_look_margin_z`` when agents
    can look again, else ``margin_z``; for stacking at least ``stacking_margin_z``."""
    base = second_look_margin_z if second_looks else margin_z
    return {f: max(base, stacking_margin_z) if f == "stacking" else base for f in families}


def choose_family(
    scores: dict[str, dict[str, float]],
    right: dict[str, np.ndarray],
    *,
    z: float | Mapping[str, float] = MARGIN_Z,
) -> str:
    """The family to decide with, from each family's per-row inner-CV correctness ``right``
    (booleans, or each row's fraction right over repeated inner splits):
    the families, in the order of ``scores`` (the preference order), challenge the one kept
    so far, starting from the first; a challenger is kept when it ``beats`` it by more than
    ``z`` standard errors (one margin for every challenger, or one per family, as
    ``challenge_margins`` gives). Each family's entry of ``scores`` gets its challenge
    (``against``, ``wins``, ``losses``, ``margin_z``)."""
    order = list(scores)
    kept = order[0]
    for family in order[1:]:
        margin = z[family] if isinstance(z, Mapping) else z
        won, wins, losses = beats(right[family], right[kept], margin)
        scores[family].update(against=kept, wins=wins, losses=losses, margin_z=margin)
        if won:
            kept = family
    return kept


class SelectPolicy:
    """Chooses its family of fusion by inner cross-validation (see the module docstring).

    ``families`` (a subset of ``FAMILIES``, in tie order) are the candidates; the other
    settings are the trust policy's (``TrustPolicy``), ``seed`` and ``inner_folds`` included.
    """

    name = "select"
    assess_after_retrieval = True

    def __init__(
        self,
        *,
        families: Sequence[str] = FAMILIES,
        repeats: int = 1,
        margin_z: float = MARGIN_Z,
        second_look_margin_z: float = SECOND_LOOK_MARGIN_Z,
        stacking_margin_z: float = STACKING_MARGIN_Z,
        **trust_settings: Any,
    ) -> None:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            raise InputError(f"families must be some of {FAMILIES}, got {list(families)}")
        if repeats < 1:
            raise InputError(f"repeats must be at least 1, got {repeats}")
        self.families = list(families)
        self.repeats = repeats
        self.margin_z = margin_z
        self.second_look_margin_z = second_look_margin_z
        self.stacking_margin_z = stacking_margin_z
        self.trust_settings = dict(trust_settings)

    @property
    def retrieval_source(self) -> str | None:
        return self.trust_settings.get("retrieval_source")

    def fit(
        self,
        records: RecordSet,
        columns: Sequence[SourceColumns],
        *,
        ids: Sequence[str] | None = None,
    ) -> SelectPolicy:
        with one_blas_thread():
            return self._fit(records, columns, list(ids) if ids is not None else records.ids())

    def _fit(
        self, records: RecordSet, columns: Sequence[SourceColumns], ids: list[str]
    ) -> SelectPolicy:
        labels = list(records.labels)
        retrieval = self.retrieval_source
        trust = TrustPolicy(**self.trust_settings).fit(records, columns, ids=ids)
        truth = trust.cross_fit_.truth
        answers = answers_from_records(records, columns, retrieval, ids)
        can_look_again = any(c.reeval for c in columns)
        families = [f for f in self.families if f != "second-look" or can_look_again]
        if not families:
            raise InputError(
                "the only family asked for, second-look, needs agents that can "
                "look again (<agent>_* re-evaluation columns)"
            )
        inner = inner_cross_validation(
            records, columns, ids, trust, answers, families=families, repeats=self.repeats
        )
        right = inner.right
        second_looks = "trust" in families and can_look_again
        scores = {
            f: {
                "accuracy": float(right[f].mean()),
                "log_loss": float(np.mean([log_loss(p, truth) for p in inner.probabilities[f]])),
            }
            for f in preference(families, second_looks=second_looks)
        }
        # a row is one observation however many inner splits scored it: the repeats are
        # averaged per row, not stacked as if they were more rows
        chosen = choose_family(
            scores,
            {f: np.mean(right[f], axis=0) for f in families},
            z=challenge_margins(
                families,
                second_looks=second_looks,
                margin_z=self.margin_z,
                second_look_margin_z=self.second_look_margin_z,
                stacking_margin_z=self.stacking_margin_z,
            ),
        )
        self.trust_ = trust
        self.labels_ = labels
        self.scores_ = scores
        self.chosen_ = chosen
        self.inner_folds_ = int(trust.cross_fit_.assignment.max()) + 1
        self.policy_: FusionPolicy
        self.family_: DawidSkene | Stacking | BestSingle | None = None
        if chosen == "trust":
            self.policy_ = trust
        else:
            family = _array_family(chosen)
            if family.reads_second_looks:
                answers = answers_from_records(records, columns, retrieval, ids, second_looks=True)
            self.family_ = family.fit(answers, truth, len(labels))
            self.policy_ = FamilyPolicy(self.family_, labels=labels, retrieval_source=retrieval)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "policy_"):
            raise NotFittedError("SelectPolicy is not fitted; call fit first")

    def selection(self) -> dict[str, Any]:
        """The choice and what it was made on: the family chosen, every family's inner-CV
        scores, the inner folds, and the chosen family's fitted parameters (not for trust,
        whose settings are the policy's own) over ``labels`` (the order of their indices)."""
        self._check_fitted()
        return {
            "chosen": self.chosen_,
            "labels": list(self.labels_),
            "inner_folds": self.inner_folds_,
            "scores": self.scores_,
            "family": self.family_.to_dict() if self.family_ is not None else None,
        }

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment:
        self._check_fitted()
        return await self.policy_.assess(
            task=task,
            predictions=predictions,
            evidence=evidence,
            round=round,
            max_rounds=max_rounds,
        )


@dataclass(frozen=True)
class InnerCV:
    """Each family's inner cross-validated decisions of the training rows, per inner split."""

    truth: np.ndarray
    """Index of each training row's true label."""
    right: dict[str, np.ndarray]
    """Per family, splits x rows: whether the row was decided right (an abstention is wrong)."""
    probabilities: dict[str, np.ndarray]
    """Per family, splits x rows x labels: the distributions the decisions were read from."""


def inner_cross_validation(
    records: RecordSet,
    columns: Sequence[SourceColumns],
    ids: Sequence[str],
    trust: TrustPolicy,
    answers: SourceAnswers,
    *,
    families: Sequence[str],
    repeats: int,
    folds: int | None = None,
) -> InnerCV:
    """Every family of ``families`` scored by inner cross-validation on the rows ``ids`` of the
    fitted ``trust`` policy (its own inner folds first, then ``repeats - 1`` other stratified
    splits); ``answers`` are the first looks of those rows (``second-look`` reads their second
    looks)."""
    retrieval = trust.retrieval_source
    second = (
        answers_from_records(records, columns, retrieval, ids, second_looks=True)
        if "second-look" in families
        else None
    )
    truth = trust.cross_fit_.truth
    n_labels = len(records.labels)
    own = int(trust.cross_fit_.assignment.max()) + 1
    reuse = folds is None or folds == own
    cross_fits = [trust.cross_fit_] if reuse else []
    for r in range(1 if reuse else 0, repeats):
        cross_fits.append(
            repeated_cross_fit(
                records,
                columns,
                ids,
                trust.cross_fit_,
                fold_seed=trust.seed + FOLD_SEED_STEP * r,
                seed=trust.seed,
                retrieval=retrieval,
                agent_model=trust.agent_model,
                keep_first_looks=trust.keep_first_looks,
                folds=folds,
            )
        )
    right: dict[str, list[np.ndarray]] = {f: [] for f in families}
    probabilities: dict[str, list[np.ndarray]] = {f: [] for f in families}
    for cross_fit in cross_fits:
        for family in families:
            if family == "trust":
                probs, decided = cross_validated_cascade(
                    cross_fit,
                    has_retrieval=retrieval is not None,
                    second_looks=any(c.reeval for c in columns),
                    reeval_budget=trust.reeval_budget,
                    reeval_cost=trust.reeval_cost,
                    criterion=trust.criterion,
                    trust_threshold=trust.trust_threshold,
                    abstain_below=trust.abstain_below,
                )
            else:
                read = second if family == "second-look" and second is not None else answers
                probs, decided = _cross_validated_family(
                    family, read, truth, cross_fit.assignment, n_labels
                )
            right[family].append(decided == truth)
            probabilities[family].append(probs)
    return InnerCV(
        truth=truth,
        right={f: np.array(v) for f, v in right.items()},
        probabilities={f: np.array(v) for f, v in probabilities.items()},
    )


def _cross_validated_family(
    family: str, answers: SourceAnswers, truth: np.ndarray, assignment: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Family ``family``'s out-of-fold distributions and decisions on ``answers``: each fold
    decided by the family fitted on the other folds."""
    probabilities = np.zeros((answers.rows, k))
    decided = np.zeros(answers.rows, dtype=np.int64)
    for held in held_out_rows(assignment):
        train = np.setdiff1d(np.arange(answers.rows), held)
        model = _array_family(family).fit(answers.subset(train), truth[train], k)
        probabilities[held] = model.predict_proba(answers.subset(held))
        decided[held] = model.decide(answers.subset(held))
    return probabilities, decided


def _array_family(name: str) -> DawidSkene | Stacking | BestSingle:
    return ARRAY_FAMILIES[name]()
