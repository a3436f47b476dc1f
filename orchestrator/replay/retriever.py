"""A retriever that plays back recorded retrieval votes (the study's ``rag_*`` columns).

The recorded file holds each image's class vote (``rag_scores_json``, or any
``<source>_scores_json``), not its neighbours: the Evidence it gives has ``neighbours == ()``
and ``vote_rule == "recorded"``. A vote without scores is the recorded top label with its
confidence, the rest spread evenly over the other labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from core.errors import InputError
from core.images import ImageRef
from core.task import Task
from eval.recorded.records import RecordSet, read_records
from eval.scores import peaked_label_scores
from orchestrator.replay.agent import recorded_image_sha256
from rag.evidence import Evidence

DEFAULT_SOURCE = "rag"


class RecordedRetriever:
    """Evidence from recorded votes, found by image sha256, row id or image file name."""

    def __init__(
        self,
        *,
        votes: Mapping[str, Mapping[str, float]],
        keys: Mapping[str, str] | None = None,
        model: str = "recorded",
    ) -> None:
        self.votes = {rid: dict(v) for rid, v in votes.items()}
        self.keys = dict(keys or {})
        self.model = model
        self.calls = 0

    @classmethod
    def from_records(cls, records: RecordSet, *, source: str = DEFAULT_SOURCE) -> RecordedRetriever:
        if source not in records.agents:
            raise InputError(
                f"no recorded retrieval source '{source}' (sources: {', '.join(records.agents)})",
                path=records.path,
            )
        votes: dict[str, dict[str, float]] = {}
        keys: dict[str, str] = {}
        for r in records.records:
            if r.agent != source or (r.pred is None and r.scores is None):
                continue
            if r.scores is not None:
                votes[r.id] = dict(r.scores)
            else:
                votes[r.id] = peaked_label_scores(records.labels, str(r.pred), r.confidence)
            keys[recorded_image_sha256(records.sha256, r.id)] = r.id
            if r.image:
                keys.setdefault(r.image, r.id)
        return cls(votes=votes, keys=keys, model=f"recorded:{Path(records.path).name}#{source}")

    @classmethod
    def from_file(
        cls, path: str | Path, *, task: Task | None = None, source: str = DEFAULT_SOURCE
    ) -> RecordedRetriever:
        return cls.from_records(read_records(path, task=task), source=source)

    def _row_id(self, image: ImageRef) -> str | None:
        for key in (image.sha256, image.name, image.source):
            if key in self.votes:
                return key
            if key in self.keys:
                return self.keys[key]
        return None

    async def retrieve(self, image: ImageRef, task: Task) -> Evidence:
        self.calls += 1
        return self.evidence(image, task)

    def has_vote(self, image: ImageRef) -> bool:
        """Whether ``retrieve`` finds a recorded vote for ``image``."""
        return self._row_id(image) is not None

    def evidence(self, image: ImageRef, task: Task) -> Evidence:
        """The recorded vote of ``image`` as Evidence (what ``retrieve`` gives)."""
        rid = self._row_id(image)
        if rid is None:
            raise InputError(f"no recorded retrieval vote for image '{image.source}'")
        vote = {label: self.votes[rid].get(label, 0.0) for label in task.labels}
        return Evidence(neighbours=(), vote=vote, vote_rule="recorded", k=0, model=self.model)
