"""The retrieval agent: CLIP neighbours from the index, their class vote as a Prediction.

It is also the graph's ``Retriever``: ``retrieve`` returns the neighbours and vote as Evidence.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from agents.clip_model import ClipModel
from agents.types import RETRIEVAL_AGENT, EvidenceView, Neighbour, Prediction
from core.errors import TrustorchError
from core.images import ImageRef, LoadedImage
from core.task import Task
from rag.embedder import ImageEmbedder
from rag.errors import StoreError
from rag.evidence import Evidence
from rag.store import ChromaStore, ImageIndex
from rag.vote import SimilarityShareVote, VoteRule, vote_dict


class RetrievalAgent:
    """k nearest labelled images of the shared CLIP's embedding, voted into a label.

    ``vote`` defaults to the reference study's similarity share; pass a fitted
    ``SoftmaxVote`` for calibrated confidences. ``split`` restricts neighbours to one split.
    """

    can_reevaluate = False
    recent_evidence_size = 256

    def __init__(
        self,
        clip: ClipModel,
        index: ImageIndex,
        *,
        k: int = 10,
        vote: VoteRule | None = None,
        split: str | None = None,
        name: str = RETRIEVAL_AGENT,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if clip.name != index.model or clip.dim != index.dim:
            raise StoreError(
                f"the index '{index.name}' holds {index.dim}-d vectors of '{index.model}'; "
                f"the CLIP model '{clip.name}' ({clip.dim}-d) cannot query it"
            )
        self.embedder = ImageEmbedder(clip)
        self.index = index
        self.k = k
        self.vote = vote or SimilarityShareVote()
        self.split = split
        self.name = name
        # The graph asks twice for the same image (its first-look answer, then the evidence):
        # the last few answers are kept so it is embedded and queried once.
        self._recent: OrderedDict[tuple[str, str], Evidence] = OrderedDict()

    @classmethod
    def from_store(
        cls, clip: ClipModel, store: ChromaStore, task: Task, **options: Any
    ) -> RetrievalAgent:
        """The agent over the store's index for (task, this CLIP); StoreError when absent."""
        return cls(clip, store.existing(task.name, clip.name), **options)

    def _check_task(self, task: Task) -> None:
        if task.name != self.index.task:
            raise StoreError(
                f"the index '{self.index.name}' is for task '{self.index.task}', not '{task.name}'"
            )

    def neighbours(self, image: ImageRef | LoadedImage) -> list[Neighbour]:
        """The k nearest indexed images of ``image``, best first (blocking)."""
        vector = self.embedder.embed_refs([image])
        return self.index.query(vector, self.k, model=self.embedder.model, split=self.split)[0]

    def evidence(self, image: ImageRef | LoadedImage, task: Task) -> Evidence:
        """Neighbours and vote of ``image`` (blocking)."""
        self._check_task(task)
        found = self.neighbours(image)
        return Evidence(
            neighbours=tuple(found),
            vote=vote_dict(self.vote, found, task.labels),
            vote_rule=self.vote.name,
            k=self.k,
            model=self.embedder.model,
        )

    async def retrieve(self, image: ImageRef | LoadedImage, task: Task) -> Evidence:
        key = (image.sha256, task.name)
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        found = await asyncio.to_thread(self.evidence, image, task)
        self._recent[key] = found
        while len(self._recent) > self.recent_evidence_size:
            self._recent.popitem(last=False)
        return found

    async def predict(
        self,
        image: ImageRef | LoadedImage,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> Prediction:
        started = time.perf_counter()
        try:
            found = await self.retrieve(image, task)
        except (TrustorchError, OSError, ValueError, RuntimeError) as e:
            return Prediction.failure(
                self.name,
                f"{type(e).__name__}: {e}",
                round=round,
                latency_s=time.perf_counter() - started,
            )
        if not found.neighbours:
            return Prediction.failure(
                self.name,
                f"the index '{self.index.name}' returned no neighbours",
                round=round,
                latency_s=time.perf_counter() - started,
            )
        label = max(task.labels, key=lambda c: found.vote[c])
        counts = {c: sum(n.label == c for n in found.neighbours) for c in task.labels}
        reason = f"{len(found.neighbours)} nearest indexed images: " + ", ".join(
            f"{counts[c]} {c}" for c in task.labels if counts[c]
        )
        return Prediction(
            agent=self.name,
            label=label,
            confidence=min(max(found.vote[label], 0.0), 1.0),
            scores=found.vote,
            reason=reason,
            round=round,
            latency_s=time.perf_counter() - started,
        )
