"""The conformal abstention rule: answer when the prediction set holds one label, else defer.

``ConformalPolicy`` wraps any fitted ``FusionPolicy``. Routing (trust, retrieval,
re-evaluation) stays the wrapped policy's; on the assessment that decides (trusted, or the last
round) the prediction set is the split-conformal set of the fused distribution
(``eval.conformal.SplitConformal``) and the label is its single member, or None (the image is
deferred) when the set is empty or holds several labels, or its one label is not the fused
distribution's best (``eval.conformal.defer_unless_singleton``: a Mondrian set can keep a
class with few calibration rows alone after the best label fell out). The wrapped policy's
own abstention (``abstain_below``) is replaced by this rule. A policy sees answers, not images,
so the tie break of a randomized rule comes from a hash of the answers it fused (labels,
confidences, scores, reasons, the retrieval vote: ``answers_key``): the same answers always get
the same set, and answers from real models, with their own wording, differ from image to image.

The calibration travels in the trust policy file, under ``conformal`` (``ConformalBlock``):
``trustorch eval replay --save-policy FILE --alpha A`` fits the policy on three quarters of the
rows and calibrates on the held-out quarter (``orchestrator.replay.conformal``); the file keeps
the calibration scores, so a run may ask for another alpha than the one saved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictBool, model_validator

from agents.types import Prediction
from core.errors import InputError
from core.task import Task
from core.validation import Count, FiniteFloat, Name, Probability
from eval.conformal import (
    DEFAULT_SCORE,
    SplitConformal,
    check_alpha,
    defer_unless_singleton,
    tie_breaks,
)
from orchestrator.decision import Assessment
from orchestrator.policies.base import FusionPolicy
from rag.evidence import Evidence


class ConformalBlock(BaseModel):
    """The ``conformal`` field of a trust policy file: ``SplitConformal.to_dict`` and the
    task's labels in the order of the scores."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: Probability
    score: Literal["lac", "aps"] = DEFAULT_SCORE
    mondrian: StrictBool = False
    randomized: StrictBool = True
    empty: Literal["keep", "top"] = "keep"
    seed: Count = 0
    n_labels: Count
    labels: list[Name]
    calibration_scores: list[list[FiniteFloat]]
    calibrated_on: dict[str, Any] = {}

    @model_validator(mode="after")
    def _consistent(self) -> ConformalBlock:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.n_labels != len(self.labels):
            raise ValueError(f"n_labels is {self.n_labels} but {len(self.labels)} labels are named")
        wanted = self.n_labels if self.mondrian else 1
        if len(self.calibration_scores) != wanted:
            raise ValueError(
                f"calibration_scores needs {wanted} list(s), got {len(self.calibration_scores)}"
            )
        if not sum(len(s) for s in self.calibration_scores):
            raise ValueError("calibration_scores holds no score")
        return self


@dataclass(frozen=True)
class ConformalRule:
    """A calibrated set rule and the labels its probabilities are ordered by."""

    sets: SplitConformal
    labels: tuple[str, ...]

    def members(self, scores: dict[str, float], key: str) -> list[str]:
        """The prediction set of one fused distribution (``Assessment.scores``); ``key`` names
        the row for its tie break."""
        return self.decide(scores, key)[0]

    def decide(self, scores: dict[str, float], key: str) -> tuple[list[str], str | None]:
        """The prediction set of one fused distribution and the label it answers with (None:
        defer), by ``eval.conformal.defer_unless_singleton``."""
        row = np.array([[scores.get(y, 0.0) for y in self.labels]])
        inside = self.sets.transform(row, tie_breaks([key], self.sets.seed))
        answer = int(defer_unless_singleton(inside, row)[0])
        members = [y for y, keep in zip(self.labels, inside[0], strict=True) if keep]
        return members, (self.labels[answer] if answer >= 0 else None)

    def to_block(self, **calibrated_on: Any) -> dict[str, Any]:
        """The ``conformal`` field of a policy file."""
        return {**self.sets.to_dict(), "labels": list(self.labels), "calibrated_on": calibrated_on}

    @classmethod
    def from_block(cls, block: ConformalBlock, *, alpha: float | None = None) -> ConformalRule:
        """The rule a policy file holds, at its saved alpha or at ``alpha``."""
        data = block.model_dump()
        sets = SplitConformal.from_dict(data, alpha=None if alpha is None else check_alpha(alpha))
        return cls(sets=sets, labels=tuple(block.labels))


def load_conformal_rule(path: str | Path, *, alpha: float | None = None) -> ConformalRule:
    """The conformal rule saved in the trust policy file ``path`` (``--save-policy --alpha``),
    at ``alpha`` (default: the saved one); InputError when the file has none."""
    from orchestrator.policies.policy_file import read_policy_file

    block = read_policy_file(path).conformal
    if block is None:
        raise InputError(
            "the policy file has no conformal calibration (write it with trustorch eval replay "
            "--save-policy FILE --alpha A)",
            path=str(path),
        )
    return ConformalRule.from_block(block, alpha=alpha)


def answers_key(predictions: Sequence[Prediction], evidence: Evidence | None) -> str:
    """A text that identifies what a policy was given on one image."""
    parts = [
        f"{p.agent}@{p.round}:{p.label}:{p.confidence!r}:{sorted((p.scores or {}).items())}:"
        f"{p.reason}"
        for p in predictions
    ]
    if evidence is not None:
        parts.append(f"vote:{sorted(evidence.vote.items())}")
    return "\n".join(parts)


class ConformalPolicy:
    """A fitted policy whose decisions answer only on a singleton conformal set."""

    def __init__(self, policy: FusionPolicy, rule: ConformalRule) -> None:
        self.policy = policy
        self.rule = rule
        self.name = f"{policy.name}+conformal"
        self.assess_after_retrieval = policy.assess_after_retrieval

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment:
        assessment = await self.policy.assess(
            task=task,
            predictions=predictions,
            evidence=evidence,
            round=round,
            max_rounds=max_rounds,
        )
        if not (assessment.trusted or round >= max_rounds - 1):
            return assessment
        if tuple(task.labels) != self.rule.labels:
            raise InputError(
                f"the conformal calibration is over the labels {list(self.rule.labels)}, "
                f"the task has {list(task.labels)}"
            )
        members, label = self.rule.decide(assessment.scores, answers_key(predictions, evidence))
        alpha = self.rule.sets.alpha
        verdict = "answers" if label is not None else "defers"
        return dataclasses.replace(
            assessment,
            label=label,
            prediction_set=members,
            reason=f"{assessment.reason}; conformal set at alpha {alpha:g}: "
            f"{', '.join(members) or 'empty'}: {verdict}",
        )
