"""A local transformers VLM (Qwen2.5-VL, LLaVA and alike) that scores every label.

Instead of asking the model for a number, the agent teacher-forces each candidate answer: the
prompt (the agent template, which asks for a JSON object) and the image, then the answer's
start ``{"label": "``, then the label text and its closing quote. The summed token
log-probability of ``<label>"`` is the model's log P(label | image, prompt); a softmax over the
task's labels gives ``scores``. The closing quote ends the label, so a label that is a prefix of
another does not take its mass. Sums are not length-normalised by default: the sum is the
probability of the whole label string, which is what makes the result a distribution over
answers (``length_normalise=True`` uses the mean per token instead, a common heuristic).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.hub import load_local_first
from agents.prompting import agent_instruction
from agents.types import EvidenceView, Prediction
from core.errors import InputError, TrustorchError
from core.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageRef,
    LoadedImage,
    open_image,
)
from core.task import Task

ANSWER_PREFIX = '{"label": "'
LABEL_SUFFIX = '"'
REASON_PREFIX = ', "reason": "'
HF_VLM_ENV = "TRUSTORCH_HF_VLM"
# A large photo is shrunk while decoded to no less than this on its shorter side: more than the
# few hundred thousand pixels local VLM processors keep by default, far less than 36 MP.
VLM_IMAGE_SIDE = 1024
MAX_REASON_TOKENS = 512
"""The most tokens a generated reason may have (``reason_tokens``): a reason is a sentence or
two, and every token of it is a decoding step on this machine."""


@dataclass
class LoadedVLM:
    """A VLM and its processor on one device; ``name`` is the hub id or folder."""

    name: str
    model: Any
    processor: Any
    device: str
    dtype: Any

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)


def load_vlm(name_or_path: str, *, device: str | None = None, dtype: Any = None) -> LoadedVLM:
    """``AutoProcessor`` + ``AutoModelForImageTextToText`` from a hub id or a local folder."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from agents.clip_model import resolve_device

    dev = resolve_device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32

    def load(local_only: bool) -> tuple[Any, Any]:
        processor = AutoProcessor.from_pretrained(name_or_path, local_files_only=local_only)
        model = AutoModelForImageTextToText.from_pretrained(
            name_or_path, dtype=dtype, local_files_only=local_only
        )
        return model.to(dev).eval(), processor

    hint = (
        "on a machine without internet, download it elsewhere and pass its folder: "
        f"--agent hf-vlm:DIR (or {HF_VLM_ENV}=DIR for the demo)"
    )
    model, processor = load_local_first(load, name_or_path, what="vision-language model", hint=hint)
    return LoadedVLM(name=name_or_path, model=model, processor=processor, device=dev, dtype=dtype)


class HFVLMAgent:
    """Label scoring by teacher-forced log-probabilities; an optional generated reason."""

    can_reevaluate = True

    def __init__(
        self,
        vlm: LoadedVLM,
        *,
        name: str | None = None,
        reason_tokens: int = 0,
        length_normalise: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if not 0 <= reason_tokens <= MAX_REASON_TOKENS:
            raise InputError(
                f"reason_tokens must be in [0, {MAX_REASON_TOKENS}], got {reason_tokens}"
            )
        self.vlm = vlm
        self.name = name or vlm.name.rstrip("/").rsplit("/", 1)[-1]
        self.reason_tokens = reason_tokens
        self.length_normalise = length_normalise
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"HFVLMAgent(name={self.name!r}, model={self.vlm.name!r}, device={self.vlm.device!r})"
        )

    def prompt(
        self,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> str:
        """The model input text up to the answer: chat template, image slot, instruction, and
        the answer's opening ``{"label": "``."""
        text, _ = agent_instruction(task, round=round, previous=previous, evidence=evidence)
        processor = self.vlm.processor
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
        ]
        if getattr(processor, "chat_template", None):
            chat = processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        else:
            image_token = getattr(processor, "image_token", "<image>")
            chat = f"{image_token}\n{text}\nAnswer: "
        return chat + ANSWER_PREFIX

    def label_logprobs(self, image: Any, context: str, labels: Sequence[str]) -> np.ndarray:
        """Summed (or mean) log P(``label"`` | image, context) per label, one batched forward."""
        import torch

        tokenizer = self.vlm.tokenizer
        n = len(labels)
        inputs = self.vlm.processor(text=[context] * n, images=[image] * n, return_tensors="pt")
        ids = inputs["input_ids"]
        continuations = [
            tokenizer(label + LABEL_SUFFIX, add_special_tokens=False)["input_ids"]
            for label in labels
        ]
        context_len = ids.shape[1]
        total = context_len + max(len(c) for c in continuations)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batch: dict[str, Any] = {}
        for key, value in inputs.items():
            if hasattr(value, "shape") and tuple(value.shape) == tuple(ids.shape):
                grown = torch.zeros((n, total), dtype=value.dtype)
                grown[:, :context_len] = value
                batch[key] = grown
            else:
                batch[key] = value
        batch["input_ids"][:, context_len:] = pad_id
        mask = batch.setdefault("attention_mask", torch.zeros((n, total), dtype=torch.long))
        mask[:, :context_len] = inputs.get("attention_mask", torch.ones_like(ids))
        for row, cont in enumerate(continuations):
            end = context_len + len(cont)
            batch["input_ids"][row, context_len:end] = torch.tensor(cont, dtype=ids.dtype)
            mask[row, context_len:end] = 1
        batch = {
            k: v.to(self.vlm.device, dtype=self.vlm.dtype)
            if hasattr(v, "is_floating_point") and v.is_floating_point()
            else (v.to(self.vlm.device) if hasattr(v, "to") else v)
            for k, v in batch.items()
        }
        with torch.inference_mode():
            logits = self.vlm.model(**batch).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        out = np.zeros(n, dtype=np.float64)
        for row, cont in enumerate(continuations):
            positions = torch.arange(context_len, context_len + len(cont))
            targets = torch.tensor(cont)
            picked = logprobs[row, positions - 1, :].cpu().gather(1, targets[:, None])[:, 0]
            value = float(picked.sum())
            out[row] = value / len(cont) if self.length_normalise else value
        return out

    def generate_reason(self, image: Any, context: str, label: str) -> str:
        """A short reason generated after the chosen label (greedy, ``reason_tokens`` long)."""
        import torch

        text = context + label + LABEL_SUFFIX + REASON_PREFIX
        inputs = self.vlm.processor(text=[text], images=[image], return_tensors="pt")
        inputs = {k: v.to(self.vlm.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.vlm.dtype)
        with torch.inference_mode():
            out = self.vlm.model.generate(
                **inputs, max_new_tokens=self.reason_tokens, do_sample=False
            )
        new = out[0, inputs["input_ids"].shape[1] :]
        generated = self.vlm.tokenizer.decode(new, skip_special_tokens=True)
        return generated.split('"', 1)[0].strip()

    def classify(
        self,
        image: ImageRef | LoadedImage,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> Prediction:
        """Synchronous ``predict``."""
        start = time.perf_counter()
        try:
            decoded = open_image(
                image,
                max_bytes=self.max_bytes,
                max_pixels=self.max_pixels,
                shortest_side=VLM_IMAGE_SIDE,
            )
            context = self.prompt(task, round=round, previous=previous, evidence=evidence)
            with self._lock:
                logps = self.label_logprobs(decoded, context, task.labels)
                probs = np.exp(logps - logps.max())
                probs /= probs.sum()
                top = int(np.argmax(probs))
                reason = ""
                if self.reason_tokens > 0:
                    reason = self.generate_reason(decoded, context, task.labels[top])
        except TrustorchError as e:
            return Prediction.failure(
                self.name, str(e), round=round, latency_s=time.perf_counter() - start
            )
        except (RuntimeError, ValueError, IndexError) as e:
            error = (
                f"VLM failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            )
            return Prediction.failure(
                self.name, error, round=round, latency_s=time.perf_counter() - start
            )
        return Prediction(
            agent=self.name,
            label=task.labels[top],
            confidence=min(max(float(probs[top]), 0.0), 1.0),
            scores={label: float(p) for label, p in zip(task.labels, probs, strict=True)},
            reason=reason,
            round=round,
            latency_s=time.perf_counter() - start,
        )

    async def predict(
        self,
        image: ImageRef | LoadedImage,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> Prediction:
        return await asyncio.to_thread(
            self.classify, image, task, round=round, previous=previous, evidence=evidence
        )
