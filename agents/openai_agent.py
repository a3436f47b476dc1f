"""A VLM behind an OpenAI-compatible chat API (GPT-4o, vLLM, Ollama, llama.cpp server).

The image goes as a base64 data URL (local files) or as its http(s) URL; the answer is a JSON
object (structured output when the server has it, parsed from prose otherwise). When the server
returns token log-probabilities, ``scores`` is the label distribution they give and the model's
own number is kept in ``reported_confidence`` (set whenever the model gave one).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from agents.errors import AgentError
from agents.openai_compat import ChatResult, OpenAIChatClient
from agents.prompting import agent_instruction
from agents.reply_parsing import answer_schema, label_distribution, parse_answer
from agents.types import EvidenceView, Neighbour, Prediction
from core.errors import TrustorchError
from core.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageRef,
    LoadedImage,
    image_to_data_url,
    url_scheme,
)
from core.task import Task


class OpenAIAgent:
    """One VLM through an ``OpenAIChatClient`` (which also prices each call); ``predict`` never
    raises for a model failure."""

    can_reevaluate = True

    def __init__(
        self,
        client: OpenAIChatClient,
        *,
        name: str | None = None,
        neighbour_images: int = 0,
        image_detail: str = "auto",
        max_side: int | None = 1024,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.client = client
        self.name = name or client.model
        self.neighbour_images = neighbour_images
        self.image_detail = image_detail
        self.max_side = max_side
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def __repr__(self) -> str:
        return f"OpenAIAgent(name={self.name!r}, client={self.client!r})"

    def _image_part(self, ref: ImageRef | LoadedImage) -> dict[str, Any]:
        if url_scheme(ref.source) in ("http", "https"):
            url = ref.source
        else:
            url = image_to_data_url(
                ref, max_bytes=self.max_bytes, max_pixels=self.max_pixels, max_side=self.max_side
            )
        return {"type": "image_url", "image_url": {"url": url, "detail": self.image_detail}}

    def _neighbour_parts(self, neighbours: list[Neighbour]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for i, n in enumerate(neighbours, 1):
            if len(parts) // 2 >= self.neighbour_images:
                break
            source = n.source or ""
            usable = url_scheme(source) in ("http", "https") or Path(source).is_file()
            if not source or not usable:
                continue
            try:
                part = self._image_part(ImageRef(source=source, sha256=n.id))
            except TrustorchError:
                continue
            text = f"Retrieved image {i}: labelled {n.label}, similarity {n.similarity:.3f}."
            parts += [{"type": "text", "text": text}, part]
        return parts

    def messages(
        self,
        image: ImageRef | LoadedImage,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> list[dict[str, Any]]:
        """The chat messages of one call: the rendered template, the image, neighbour images."""
        text, second_look = agent_instruction(
            task, round=round, previous=previous, evidence=evidence
        )
        content = [{"type": "text", "text": text}, self._image_part(image)]
        if second_look and evidence is not None and self.neighbour_images > 0:
            content += self._neighbour_parts(list(evidence.neighbours))
        return [{"role": "user", "content": content}]

    async def predict(
        self,
        image: ImageRef | LoadedImage,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> Prediction:
        start = time.perf_counter()
        cost = 0.0
        try:
            messages = await asyncio.to_thread(
                self.messages, image, task, round=round, previous=previous, evidence=evidence
            )
            result = await self.client.complete(messages, schema=answer_schema(task))
            cost = result.cost_usd
            return self._prediction(result, task, round, time.perf_counter() - start)
        except TrustorchError as e:
            return Prediction(
                agent=self.name,
                label=None,
                error=self.client.redact(str(e)),
                round=round,
                latency_s=time.perf_counter() - start,
                cost_usd=cost,
            )

    def _prediction(
        self, result: ChatResult, task: Task, round: int, latency_s: float
    ) -> Prediction:
        if result.refusal:
            raise AgentError(f"the model refused: {' '.join(result.refusal.split())[:200]}")
        try:
            answer = parse_answer(result.content, task)
        except AgentError as e:
            if result.finish_reason == "length":
                raise AgentError(f"{e} (the answer was cut off at max_tokens)") from None
            raise
        scores = None
        if result.tokens is not None:
            scores = label_distribution(result.tokens, task, answer.label, answer.raw_label)
        if scores is not None:
            confidence = scores[answer.label]
        elif answer.confidence is not None:
            confidence = answer.confidence
        else:
            confidence = 0.0
        return Prediction(
            agent=self.name,
            label=answer.label,
            confidence=confidence,
            scores=scores,
            reason=self.client.redact(answer.reason),
            round=round,
            latency_s=latency_s,
            cost_usd=result.cost_usd,
            reported_confidence=answer.confidence,
        )
