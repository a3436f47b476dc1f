"""Batched CLIP image and text embeddings on a shared ``ClipModel``.

``ImageEmbedder.stream`` walks labelled image files in batches; an image that cannot be read or
decoded is yielded as a ``SkippedImage``, never raised, so a build skips it and lists it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.clip_model import ClipModel
from core.errors import InputError
from core.images import ImageRef, LabelledImage, LoadedImage, SkippedImage, open_image


@dataclass(frozen=True)
class EmbeddedBatch:
    """Images that embedded (``items[i]`` has row ``vectors[i]``) and the ones that failed."""

    items: list[LabelledImage]
    vectors: np.ndarray
    failures: list[SkippedImage] = field(default_factory=list)


class ImageEmbedder:
    """Embeds images and texts with one loaded CLIP (the one the CLIP agent uses)."""

    def __init__(self, clip: ClipModel, *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.clip = clip
        self.batch_size = batch_size

    @property
    def model(self) -> str:
        return self.clip.name

    @property
    def dim(self) -> int:
        return self.clip.dim

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """L2-normalised float32 [n, dim] for decoded images."""
        return self.clip.embed_images(images, batch_size=self.batch_size)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 [n, dim] for texts."""
        return self.clip.embed_texts(texts)

    def open_rgb(self, ref: ImageRef | LoadedImage) -> Any:
        """The decoded RGB image of ``ref``, shrunk while decoded to what CLIP needs
        (InputError when it is not a readable image)."""
        return open_image(ref, shortest_side=self.clip.image_side)

    def embed_refs(self, refs: Sequence[ImageRef | LoadedImage]) -> np.ndarray:
        """Embeddings of image references; an unreadable image raises InputError."""
        return self.embed_images([self.open_rgb(ref) for ref in refs])

    def stream(self, items: Iterable[LabelledImage]) -> Iterator[EmbeddedBatch]:
        """Embedded batches of ``batch_size`` readable images, failures alongside."""
        images: list[Any] = []
        kept: list[LabelledImage] = []
        failures: list[SkippedImage] = []
        for item in items:
            try:
                images.append(self.open_rgb(item.image))
            except InputError as e:
                failures.append(SkippedImage(item.image.source, e.message))
                continue
            kept.append(item)
            if len(kept) == self.batch_size:
                yield EmbeddedBatch(kept, self.embed_images(images), failures)
                images, kept, failures = [], [], []
        if kept or failures:
            yield EmbeddedBatch(kept, self.embed_images(images), failures)
