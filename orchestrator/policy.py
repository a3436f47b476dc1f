"""The fusion-policy interface the graph's ``assess`` node calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from agents.types import Prediction, Task
from orchestrator.decision import Assessment
from rag.evidence import Evidence


@runtime_checkable
class FusionPolicy(Protocol):
    """Fuses the latest answer of every agent (and the retrieval evidence, once retrieved).

    ``assess`` is called after every round. It returns ``trusted=True`` to finalize now; on the
    last round (``round == max_rounds - 1``) it must give its final answer (a label, or
    ``label=None`` with a ``prediction_set`` to abstain), whatever ``trusted`` says.
    """

    name: str

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment: ...
