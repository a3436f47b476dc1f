"""The fusion-policy interface the graph's ``assess`` node calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from agents.types import Prediction
from core.task import Task
from orchestrator.decision import Assessment
from rag.evidence import Evidence


@runtime_checkable
class FusionPolicy(Protocol):
    """Fuses the agents' answers (and the retrieval evidence, once retrieved).

    ``predictions`` holds every answer of every round so far, oldest first; a policy that only
    wants the latest answer per agent takes it itself. ``assess`` is called after every round.
    It returns ``trusted=True`` to finalize now; on the last round
    (``round == max_rounds - 1``) it must give its final answer (a label, or ``label=None``
    with a ``prediction_set`` to abstain), whatever ``trusted`` says.

    ``assess_after_retrieval`` says whether the policy is asked again once the evidence is in,
    before any agent looks again (True: retrieval is cheap, a second VLM look is not, so
    retrieval alone does not count as a round; False: the study's flow, from retrieval straight
    to re-evaluation). Every policy declares it.
    """

    name: str
    assess_after_retrieval: bool

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment: ...
