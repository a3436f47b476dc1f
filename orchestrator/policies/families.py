"""Families of fusion beside the trust policy, as estimators on arrays of first looks.

Each family reads the same thing: per row, every agent's first look and the retrieval vote
(its top label and that label's share, ``trust_sources.record_prediction``), as a
``SourceAnswers`` array (a label index per source, -1 where the source gave no usable answer,
and the stated confidence). None of them asks an agent to look again: their decision is made
on the first looks and, where there is a retriever, the vote. An agent that only states a
label (a constant or empty confidence) is read by its label.

- ``DawidSkene``: supervised Dawid-Skene, i.e. naive Bayes over the sources' answers: a
  Laplace-smoothed class prior and one confusion matrix per source, P(answer | truth); a row's
  distribution is the prior times each answered source's column, normalised.
- ``Stacking``: a multinomial logistic regression (scikit-learn) over, per source, the one-hot
  answered label, the same one-hot scaled by the confidence, and a "no answer" flag.
- ``BestSingle``: the one source with the best accuracy on the rows it is fitted on (ties go
  to the source listed first); its answer as it is, with a calibrated confidence.
- ``SecondLook``: the exception to "first looks only": ``BestSingle`` over the agents' second
  looks (``answers_from_records(..., second_looks=True)``). Its policy asks that one agent to
  look again on every image and answers with the second look: one more call per image, which
  pays where an agent's second look is much better than any first-look fusion (the study's
  Case 3 without its retrieval vote: GPT-4o's second look 0.875, the best first-look fusion
  0.62).

``FamilyPolicy`` is the ``FusionPolicy`` of a fitted family: it waits for the vote when the family
reads it, then decides; only ``SecondLook`` asks for re-evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from agents.types import Prediction
from core.errors import InputError, NotFittedError
from core.task import Task
from eval.recorded.records import RecordSet
from eval.scores import peaked_scores
from orchestrator.decision import Assessment
from orchestrator.policies.common import one_blas_thread
from orchestrator.policies.fusion import log_softmax
from orchestrator.policies.trust import prediction_set
from orchestrator.policies.trust_sources import (
    SourceColumns,
    evidence_prediction,
    record_prediction,
    records_by_agent,
)
from rag.evidence import Evidence

LAPLACE = 1.0


@dataclass(frozen=True)
class SourceAnswers:
    """The first looks (and the vote) of some rows: ``labels[n, s]`` is the index of source s's
    answered label on row n (-1: no usable answer), ``confidence[n, s]`` its confidence."""

    sources: tuple[str, ...]
    labels: np.ndarray
    confidence: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: np.ndarray) -> SourceAnswers:
        return SourceAnswers(self.sources, self.labels[rows], self.confidence[rows])


def family_sources(columns: Sequence[SourceColumns], retrieval: str | None) -> tuple[str, ...]:
    """The sources every family reads, in order: each agent, then the retrieval vote."""
    return (*(c.agent for c in columns), *((retrieval,) if retrieval else ()))


def second_look_sources(columns: Sequence[SourceColumns]) -> tuple[str, ...]:
    """The agents that can look again, in order: the sources of ``SecondLook``."""
    return tuple(c.agent for c in columns if c.reeval)


def answers_from_records(
    records: RecordSet,
    columns: Sequence[SourceColumns],
    retrieval: str | None,
    ids: Sequence[str],
    *,
    second_looks: bool = False,
) -> SourceAnswers:
    """The first looks of the agents ``columns`` and the vote ``retrieval`` on the rows ``ids``;
    with ``second_looks``, the recorded second looks of the agents that can look again
    instead (no vote)."""
    labels = list(records.labels)
    index = {y: k for k, y in enumerate(labels)}
    recorded = records_by_agent(records, set(ids))
    if second_looks:
        played = [(c.reeval, False) for c in columns if c.reeval]
        sources = second_look_sources(columns)
    else:
        played = [(c.first, False) for c in columns] + ([(retrieval, True)] if retrieval else [])
        sources = family_sources(columns, retrieval)
    label_of = np.full((len(ids), len(played)), -1, dtype=np.int64)
    confidence = np.zeros((len(ids), len(played)))
    for s, (agent, is_vote) in enumerate(played):
        by_id = recorded.get(agent, {})
        for n, rid in enumerate(ids):
            rec = by_id.get(rid)
            if rec is None:
                continue
            pred = record_prediction(rec, retrieval=is_vote)
            if pred.ok and str(pred.label) in index:
                label_of[n, s] = index[str(pred.label)]
                confidence[n, s] = pred.confidence
    return SourceAnswers(sources, label_of, confidence)


def answers_from_predictions(
    sources: Sequence[str],
    labels: Sequence[str],
    predictions: Sequence[Prediction],
    evidence: Evidence | None,
    retrieval_source: str | None,
    *,
    second_looks: bool = False,
) -> SourceAnswers:
    """One row of ``SourceAnswers``: each source's first look (round 0) in ``predictions`` and
    the vote of ``evidence`` (read as ``answers_from_records`` reads a recorded vote); with
    ``second_looks``, each source's latest answer after round 0 instead."""
    index = {y: k for k, y in enumerate(labels)}
    found: dict[str, Prediction] = {}
    for p in sorted(predictions, key=lambda p: p.round):
        if p.agent != retrieval_source and (p.round > 0 if second_looks else p.round == 0):
            found[p.agent] = p
    if evidence is not None and evidence.vote and retrieval_source and not second_looks:
        found[retrieval_source] = evidence_prediction(evidence, retrieval_source)
    label_of = np.full((1, len(sources)), -1, dtype=np.int64)
    confidence = np.zeros((1, len(sources)))
    for s, name in enumerate(sources):
        pred = found.get(name)
        if pred is not None and pred.ok and str(pred.label) in index:
            label_of[0, s] = index[str(pred.label)]
            confidence[0, s] = pred.confidence
    return SourceAnswers(tuple(sources), label_of, confidence)


class ArrayFamily(Protocol):
    """A fusion family on ``SourceAnswers``: fitted on labelled rows, a distribution per row."""

    name: str
    reads_second_looks: bool
    """Fitted on the agents' second looks (``answers_from_records(..., second_looks=True)``)."""

    def fit(self, answers: SourceAnswers, truth: np.ndarray, n_labels: int) -> ArrayFamily: ...

    def predict_proba(self, answers: SourceAnswers) -> np.ndarray: ...

    def decide(self, answers: SourceAnswers) -> np.ndarray: ...


class DawidSkene:
    """Supervised Dawid-Skene (naive Bayes over the answers), Laplace ``alpha``."""

    name = "dawid-skene"
    reads_second_looks = False

    def __init__(self, *, alpha: float = LAPLACE) -> None:
        self.alpha = alpha

    def fit(self, answers: SourceAnswers, truth: np.ndarray, n_labels: int) -> DawidSkene:
        k, a = n_labels, self.alpha
        counts = np.bincount(truth, minlength=k).astype(float)
        self.log_prior_ = np.log((counts + a) / (counts.sum() + k * a))
        log_confusion = np.zeros((len(answers.sources), k, k))
        for s in range(len(answers.sources)):
            said = answers.labels[:, s]
            table = np.full((k, k), a)
            np.add.at(table, (truth[said >= 0], said[said >= 0]), 1.0)
            log_confusion[s] = np.log(table / table.sum(axis=1, keepdims=True))
        self.log_confusion_ = log_confusion
        self.sources_ = answers.sources
        return self

    def predict_proba(self, answers: SourceAnswers) -> np.ndarray:
        if not hasattr(self, "log_confusion_"):
            raise NotFittedError("DawidSkene is not fitted; call fit first")
        logits = np.tile(self.log_prior_, (answers.rows, 1))
        for s in range(len(answers.sources)):
            said = answers.labels[:, s]
            answered = said >= 0
            logits[answered] += self.log_confusion_[s][:, said[answered]].T
        return np.exp(log_softmax(logits))

    def decide(self, answers: SourceAnswers) -> np.ndarray:
        return _decided(answers, self.predict_proba(answers))

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources_),
            "log_prior": self.log_prior_.tolist(),
            "log_confusion": self.log_confusion_.tolist(),
        }


def stacking_features(answers: SourceAnswers, n_labels: int) -> np.ndarray:
    """Per source: one-hot answered label, the same times the confidence, a no-answer flag."""
    rows, sources = answers.labels.shape
    width = 2 * n_labels + 1
    out = np.zeros((rows, sources * width))
    for s in range(sources):
        said = answers.labels[:, s]
        answered = np.flatnonzero(said >= 0)
        base = s * width
        out[answered, base + said[answered]] = 1.0
        out[answered, base + n_labels + said[answered]] = answers.confidence[answered, s]
        out[said < 0, base + 2 * n_labels] = 1.0
    return out


class Stacking:
    """Multinomial logistic regression over ``stacking_features`` (inverse L2 strength ``C``)."""

    name = "stacking"
    reads_second_looks = False

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000) -> None:
        self.C = C
        self.max_iter = max_iter

    def fit(self, answers: SourceAnswers, truth: np.ndarray, n_labels: int) -> Stacking:
        from sklearn.linear_model import LogisticRegression

        self.n_labels_ = n_labels
        self.classes_ = np.unique(truth)
        features = stacking_features(answers, n_labels)
        if self.classes_.size < 2:
            self.coef_ = np.zeros((1, features.shape[1]))
            self.intercept_ = np.zeros(1)
        else:
            model = LogisticRegression(C=self.C, max_iter=self.max_iter)
            model.fit(features, truth)
            coef, intercept = model.coef_, model.intercept_
            if self.classes_.size == 2:
                # scikit-learn's binary model: the logit of the second class; as two classes
                coef = np.vstack([-coef / 2, coef / 2])
                intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
            self.coef_, self.intercept_ = coef, intercept
        self.sources_ = answers.sources
        return self

    def predict_proba(self, answers: SourceAnswers) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise NotFittedError("Stacking is not fitted; call fit first")
        logits = stacking_features(answers, self.n_labels_) @ self.coef_.T + self.intercept_
        out = np.zeros((answers.rows, self.n_labels_))
        out[:, self.classes_] = np.exp(log_softmax(logits))
        return out

    def decide(self, answers: SourceAnswers) -> np.ndarray:
        return _decided(answers, self.predict_proba(answers))

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources_),
            "classes": self.classes_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_.tolist(),
        }


class BestSingle:
    """The source with the best accuracy on the fitting rows (ties: the source listed first).

    Its decision is the source's answer as it is; its confidence is how often that answer was
    right on the fitting rows (Laplace ``alpha``), the rest spread evenly over the other labels,
    so the source alone is calibrated without changing a single decision.
    """

    name = "best-single"
    reads_second_looks = False

    def __init__(self, *, alpha: float = LAPLACE) -> None:
        self.alpha = alpha

    def fit(self, answers: SourceAnswers, truth: np.ndarray, n_labels: int) -> BestSingle:
        if not answers.sources:
            raise InputError("no source to choose from")
        accuracy = (answers.labels == truth[:, None]).mean(axis=0)
        self.index_ = int(np.argmax(accuracy))
        self.source_ = answers.sources[self.index_]
        self.accuracy_ = {s: float(a) for s, a in zip(answers.sources, accuracy, strict=True)}
        said = answers.labels[:, self.index_]
        answered = said >= 0
        times = np.bincount(said[answered], minlength=n_labels)
        right = np.bincount(said[answered & (said == truth)], minlength=n_labels)
        self.precision_ = (right + self.alpha) / (times + n_labels * self.alpha)
        self.n_labels_ = n_labels
        self.sources_ = answers.sources
        return self

    def predict_proba(self, answers: SourceAnswers) -> np.ndarray:
        """Flat where the source has no answer (the decision abstains there)."""
        if not hasattr(self, "index_"):
            raise NotFittedError("BestSingle is not fitted; call fit first")
        said = answers.labels[:, self.index_]
        out = np.full((answers.rows, self.n_labels_), 1.0 / self.n_labels_)
        answered = said >= 0
        out[answered] = peaked_scores(
            self.precision_[said[answered]], said[answered], self.n_labels_
        )
        return out

    def decide(self, answers: SourceAnswers) -> np.ndarray:
        return answers.labels[:, self.index_].copy()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources_),
            "source": self.source_,
            "accuracy": self.accuracy_,
            "precision": self.precision_.tolist(),
        }


class SecondLook(BestSingle):
    """``BestSingle`` fitted on the agents' second looks (``answers_from_records(...,
    second_looks=True)``): the agent whose second look is right most often; its policy asks it
    to look again on every image."""

    name = "second-look"
    reads_second_looks = True

    def fit(self, answers: SourceAnswers, truth: np.ndarray, n_labels: int) -> SecondLook:
        if not answers.sources:
            raise InputError(
                "second-look needs an agent that can look again (re-evaluation columns "
                "<agent>_pred beside <agent>_initial_pred); no agent has them"
            )
        super().fit(answers, truth, n_labels)
        return self


def _decided(answers: SourceAnswers, probabilities: np.ndarray) -> np.ndarray:
    """The most probable label of each row, -1 where no source answered (an abstention)."""
    return np.where((answers.labels >= 0).any(axis=1), probabilities.argmax(axis=1), -1)


def family_from_dict(
    name: str, data: Mapping[str, Any], n_labels: int
) -> DawidSkene | Stacking | BestSingle:
    """Family ``name`` of ``ARRAY_FAMILIES`` as fitted, from what its ``to_dict`` wrote (the
    ``family`` of a saved policy file's ``selection``), for ``n_labels`` labels; an InputError
    naming the field when the parameters do not fit together."""
    try:
        if name == "dawid-skene":
            ds = DawidSkene()
            ds.sources_ = tuple(str(x) for x in data["sources"])
            ds.log_prior_ = np.asarray(data["log_prior"], dtype=float)
            ds.log_confusion_ = np.asarray(data["log_confusion"], dtype=float)
            shape = (len(ds.sources_), n_labels, n_labels)
            _check_shape("log_prior", ds.log_prior_, (n_labels,))
            _check_shape("log_confusion", ds.log_confusion_, shape)
            return ds
        if name == "stacking":
            st = Stacking()
            st.sources_ = tuple(str(x) for x in data["sources"])
            st.n_labels_ = n_labels
            st.classes_ = np.asarray(data["classes"], dtype=np.int64)
            st.coef_ = np.asarray(data["coef"], dtype=float)
            st.intercept_ = np.asarray(data["intercept"], dtype=float)
            width = len(st.sources_) * (2 * n_labels + 1)
            if st.classes_.size and (st.classes_.min() < 0 or st.classes_.max() >= n_labels):
                raise InputError(f"classes must be label indices below {n_labels}")
            rows = st.classes_.size if st.classes_.size >= 2 else 1
            _check_shape("coef", st.coef_, (rows, width))
            _check_shape("intercept", st.intercept_, (rows,))
            return st
        if name in ("best-single", "second-look"):
            bs = SecondLook() if name == "second-look" else BestSingle()
            bs.accuracy_ = {str(k): float(v) for k, v in data["accuracy"].items()}
            bs.sources_ = tuple(str(x) for x in data.get("sources", bs.accuracy_))
            bs.source_ = str(data["source"])
            if bs.source_ not in bs.sources_:
                raise InputError(f"source {bs.source_!r} is not one of {list(bs.sources_)}")
            bs.index_ = bs.sources_.index(bs.source_)
            bs.precision_ = np.asarray(data["precision"], dtype=float)
            bs.n_labels_ = n_labels
            _check_shape("precision", bs.precision_, (n_labels,))
            return bs
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"the {name} parameters are unusable ({type(e).__name__}: {e})") from None
    raise InputError(f"no fitted family {name!r}; families: {sorted(ARRAY_FAMILIES)}")


def _check_shape(field: str, value: np.ndarray, shape: tuple[int, ...]) -> None:
    if value.shape != shape or not np.isfinite(value).all():
        raise InputError(f"{field} must be finite numbers of shape {list(shape)}")


ARRAY_FAMILIES: dict[str, type] = {
    "stacking": Stacking,
    "dawid-skene": DawidSkene,
    "best-single": BestSingle,
    "second-look": SecondLook,
}


class FamilyPolicy:
    """A fitted family of ``ARRAY_FAMILIES`` as a ``FusionPolicy`` (module docstring)."""

    assess_after_retrieval = True

    def __init__(
        self,
        family: DawidSkene | Stacking | BestSingle,
        *,
        labels: Sequence[str],
        retrieval_source: str | None = None,
    ) -> None:
        self.family = family
        self.name = family.name
        self.labels = list(labels)
        self.retrieval_source = retrieval_source
        used = (family.source_,) if isinstance(family, BestSingle) else family.sources_
        self.waits_for_vote = retrieval_source is not None and retrieval_source in used

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment:
        if list(task.labels) != self.labels:
            raise InputError(
                f"policy {self.name!r} was fitted on labels {self.labels}, not {list(task.labels)}"
            )
        if self.family.reads_second_looks:
            return self._second_look(task, predictions, round, max_rounds)
        answers = answers_from_predictions(
            self.family.sources_, self.labels, predictions, evidence, self.retrieval_source
        )
        waiting = self.waits_for_vote and (evidence is None or not evidence.vote)
        if not (answers.labels >= 0).any():
            return Assessment.abstention(
                policy=self.name,
                labels=task.labels,
                round=round,
                reason="no usable answer from any source",
                trusted=not waiting,
            )
        decided = int(self.family.decide(answers)[0])
        if decided < 0:
            return Assessment.abstention(
                policy=self.name,
                labels=task.labels,
                round=round,
                reason=f"{self.name}: no answer from {self.family.sources_}",
                trusted=not waiting,
            )
        used = sum(int(s >= 0) for s in answers.labels[0])
        reason = f"{self.name} over {used} first look(s)"
        reason += "; waiting for the retrieval vote" if waiting else ""
        return self._decided(answers, decided, round=round, trusted=not waiting, reason=reason)

    def _decided(
        self,
        answers: SourceAnswers,
        decided: int,
        *,
        round: int,
        trusted: bool,
        reason: str,
        reevaluate: Sequence[str] = (),
    ) -> Assessment:
        """The assessment of label index ``decided`` with the family's distribution of the one
        row ``answers`` (the family's decision need not be that distribution's argmax)."""
        row = self.family.predict_proba(answers)[0]
        scores = dict(zip(self.labels, row.tolist(), strict=True))
        label = self.labels[decided]
        return Assessment(
            policy=self.name,
            round=round,
            scores=scores,
            label=label,
            confidence=scores[label],
            trusted=trusted,
            reevaluate=list(reevaluate),
            prediction_set=prediction_set(scores, 0.95),
            reason=reason,
        )

    def _second_look(
        self, task: Task, predictions: Sequence[Prediction], round: int, max_rounds: int
    ) -> Assessment:
        """The chosen agent's second look once it has one; before that, a request for it
        (not trusted), or, when no round is left, its first look read with the second look's
        precision."""
        family = self.family
        assert isinstance(family, BestSingle)
        agent = family.source_
        second = answers_from_predictions(
            family.sources_, self.labels, predictions, None, None, second_looks=True
        )
        looked_again = bool(second.labels[0, family.index_] >= 0)
        can_ask = not looked_again and round < max_rounds - 1
        answers = (
            second
            if looked_again
            else answers_from_predictions(family.sources_, self.labels, predictions, None, None)
        )
        decided = int(answers.labels[0, family.index_])
        if decided < 0:
            nothing = Assessment.abstention(
                policy=self.name,
                labels=task.labels,
                round=round,
                reason=f"{self.name}: no answer from {agent}",
                trusted=not can_ask,
            )
            return replace(nothing, reevaluate=[agent] if can_ask else [])
        if looked_again:
            reason = f"{self.name}: {agent}'s second look"
        elif can_ask:
            reason = f"{self.name}: asking {agent} to look again"
        else:
            reason = f"{self.name}: no second look from {agent}; its first look"
        return self._decided(
            answers,
            decided,
            round=round,
            trusted=not can_ask,
            reason=reason,
            reevaluate=[agent] if can_ask else [],
        )


def fit_family_policy(
    name: str,
    records: RecordSet,
    columns: Sequence[SourceColumns],
    ids: Sequence[str],
    retrieval: str | None,
) -> FamilyPolicy:
    """Family ``name`` of ``ARRAY_FAMILIES`` fitted on the rows ``ids``."""
    labels = list(records.labels)
    truth_of = {r.id: r.truth for r in records.records}
    truth = np.array([labels.index(truth_of[i]) for i in ids])
    family = ARRAY_FAMILIES[name]()
    answers = answers_from_records(
        records, columns, retrieval, ids, second_looks=family.reads_second_looks
    )
    with one_blas_thread():
        family.fit(answers, truth, len(labels))
    return FamilyPolicy(family, labels=labels, retrieval_source=retrieval)


def log_loss(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Mean negative log-probability of the true labels (probabilities floored at 1e-12)."""
    picked = probabilities[np.arange(truth.size), truth]
    return float(-np.log(np.maximum(picked, 1e-12)).mean())
