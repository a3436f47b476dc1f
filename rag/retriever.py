"""The retriever interface the graph's ``retrieve`` node calls."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from core.images import ImageRef, LoadedImage
from core.task import Task
from rag.evidence import Evidence


@runtime_checkable
class Retriever(Protocol):
    """Finds labelled neighbours of an image (a Chroma index, or a recorded vote in replay)."""

    async def retrieve(self, image: ImageRef | LoadedImage, task: Task) -> Evidence: ...
