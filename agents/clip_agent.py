"""CLIP zero-shot agent: a prompt ensemble per label, softmax over the task's labels.

The agent uses a loaded ``ClipModel`` (``agents.clip_model.load_clip``), the same object the
retrieval embedder uses; it never loads weights itself. Text embeddings are computed once per
(task, model, templates) and kept on the agent.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from agents.clip_model import ClipModel
from agents.prompting import label_text, render_text, template_lines
from agents.types import EvidenceView, Prediction
from core.errors import TrustorchError
from core.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageRef, LoadedImage, open_image
from core.task import Task


class ClipAgent:
    """Zero-shot CLIP classification; ``scores`` is the softmax over the task's labels of
    ``logit_scale * cosine(image, label ensemble)``."""

    can_reevaluate = False

    def __init__(
        self,
        clip: ClipModel,
        *,
        name: str = "clip",
        templates: Sequence[str] | None = None,
        batch_size: int = 32,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.name = name
        self.clip = clip
        self.templates = tuple(templates) if templates is not None else None
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._text_cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ClipAgent(name={self.name!r}, model={self.clip.name!r}, device={self.clip.device!r})"
        )

    def prompts(self, task: Task) -> dict[str, list[str]]:
        """The ensemble of prompt texts of every label, in the task's label order."""
        templates = self.templates or tuple(template_lines(task.prompts.get("clip", "clip")))
        out: dict[str, list[str]] = {}
        for label in task.labels:
            values = {
                "description": task.descriptions[label].rstrip(". "),
                "label": label_text(label),
                "subject": task.subject,
            }
            texts = [render_text(t, values, source="CLIP prompt template") for t in templates]
            out[label] = list(dict.fromkeys(texts))
        return out

    def text_embeddings(self, task: Task) -> np.ndarray:
        """L2-normalised ensemble embedding per label, shape [n_labels, dim]; cached."""
        template_name = task.prompts.get("clip", "clip")
        parts = [self.clip.name, task.name, task.labels, task.descriptions, task.subject]
        key = json.dumps([*parts, template_name, self.templates], sort_keys=True)
        with self._lock:
            cached = self._text_cache.get(key)
            if cached is not None:
                return cached
            prompts = self.prompts(task)
            flat = [text for label in task.labels for text in prompts[label]]
            embedded = self.clip.embed_texts(flat)
            rows, start = [], 0
            for label in task.labels:
                count = len(prompts[label])
                mean = embedded[start : start + count].mean(axis=0)
                rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
                start += count
            matrix = np.stack(rows).astype(np.float32)
            self._text_cache[key] = matrix
            return matrix

    def probabilities(self, images: Sequence[Any], task: Task) -> np.ndarray:
        """Label distribution per decoded image, shape [len(images), n_labels] (rows sum to 1)."""
        text = self.text_embeddings(task)
        feats = self.clip.embed_images(images, batch_size=self.batch_size)
        return softmax_rows(self.clip.logit_scale * (feats @ text.T))

    def classify(
        self, images: Sequence[ImageRef | LoadedImage], task: Task, *, round: int = 0
    ) -> list[Prediction]:
        """Synchronous batched classification; a bad image gives a failure for that image only."""
        start = time.perf_counter()
        decoded: list[Any] = []
        slots: list[int] = []
        results: list[Prediction | None] = [None] * len(images)
        for i, ref in enumerate(images):
            try:
                image = open_image(
                    ref,
                    max_bytes=self.max_bytes,
                    max_pixels=self.max_pixels,
                    shortest_side=self.clip.image_side,
                )
                decoded.append(image)
                slots.append(i)
            except TrustorchError as e:
                results[i] = Prediction.failure(self.name, str(e), round=round)
        if decoded:
            try:
                probs = self.probabilities(decoded, task)
            except (RuntimeError, ValueError, TrustorchError) as e:
                error = f"CLIP failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                probs = None
                for i in slots:
                    results[i] = Prediction.failure(self.name, error, round=round)
            if probs is not None:
                latency = (time.perf_counter() - start) / len(images)
                for row, i in zip(probs, slots, strict=True):
                    results[i] = self._prediction(row, task, round=round, latency_s=latency)
        return [r for r in results if r is not None]

    def _prediction(
        self, row: np.ndarray, task: Task, *, round: int, latency_s: float
    ) -> Prediction:
        top = int(np.argmax(row))
        scores = {label: float(p) for label, p in zip(task.labels, row, strict=True)}
        return Prediction(
            agent=self.name,
            label=task.labels[top],
            confidence=min(max(float(row[top]), 0.0), 1.0),
            scores=scores,
            reason=f"CLIP zero-shot similarity ({self.clip.name})",
            round=round,
            latency_s=latency_s,
        )

    async def predict_many(
        self, images: Sequence[ImageRef | LoadedImage], task: Task, *, round: int = 0
    ) -> list[Prediction]:
        """Batched ``predict`` for throughput (runs in a worker thread)."""
        return await asyncio.to_thread(self.classify, list(images), task, round=round)

    async def predict(
        self,
        image: ImageRef | LoadedImage,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> Prediction:
        (prediction,) = await self.predict_many([image], task, round=round)
        return prediction


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable), returned as float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
