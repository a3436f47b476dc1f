"""One loaded CLIP model, shared by the CLIP zero-shot agent and the retrieval embedder.

Load it once per process with ``load_clip`` and pass the ``ClipModel`` to whoever needs it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.hub import load_local_first

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_MODEL_ENV = "TRUSTORCH_CLIP_MODEL"


def default_clip_model() -> str:
    return os.environ.get(CLIP_MODEL_ENV, DEFAULT_CLIP_MODEL)


def resolve_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class ClipModel:
    """A CLIP model and its processor on one device. ``name`` is the hub id or folder it came
    from: the retrieval store records it beside its vectors."""

    name: str
    model: Any
    processor: Any
    device: str
    dtype: Any

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def image_side(self) -> int:
        """The shorter side, in pixels, the processor resizes an image to before cropping: an
        image decoded for this model needs no more (``core.images.open_image``)."""
        processor = getattr(self.processor, "image_processor", self.processor)
        sides = [
            getattr(size, key, None) if not isinstance(size, dict) else size.get(key)
            for size in (getattr(processor, "size", None), getattr(processor, "crop_size", None))
            if size is not None
            for key in ("shortest_edge", "height", "width")
        ]
        found = [int(side) for side in sides if side]
        return max(found) if found else int(self.model.config.vision_config.image_size)

    def embed_images(self, images: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
        """L2-normalised float32 image embeddings, shape [len(images), dim]."""
        import torch

        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            inputs = self.processor(images=batch, return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, dtype=self.dtype)
            with torch.inference_mode():
                feats = _features(self.model.get_image_features(pixel_values=pixels))
            out.append(_normalise(feats))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)

    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """L2-normalised float32 text embeddings, shape [len(texts), dim]."""
        import torch

        out: list[np.ndarray] = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            inputs = self.processor(
                text=batch,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_text_tokens,
            )
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.inference_mode():
                feats = _features(self.model.get_text_features(**inputs))
            out.append(_normalise(feats))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)

    @property
    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())


def _features(output: Any) -> Any:
    # transformers >= 5 returns a ModelOutput whose pooler_output is the projected embedding.
    return output if hasattr(output, "shape") else output.pooler_output


def _normalise(feats: Any) -> np.ndarray:
    arr = feats.float().cpu().numpy().astype(np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def load_clip(name_or_path: str | None = None, *, device: str | None = None) -> ClipModel:
    """Load CLIP from a hub id or a local folder; fp16 on CUDA, fp32 on CPU."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    name = name_or_path or default_clip_model()
    if Path(name).expanduser().is_dir():
        # One spelling per folder: the index records the model name beside its vectors.
        name = str(Path(name).expanduser().resolve())
    dev = resolve_device(device)
    dtype = torch.float16 if dev.startswith("cuda") else torch.float32

    def load(local_only: bool) -> tuple[Any, Any]:
        model = CLIPModel.from_pretrained(name, dtype=dtype, local_files_only=local_only)
        processor = CLIPProcessor.from_pretrained(name, local_files_only=local_only)
        return model.to(dev).eval(), processor

    hint = (
        "on a machine without internet, download the model elsewhere and pass its folder "
        f"with --clip-model DIR or {CLIP_MODEL_ENV}=DIR"
    )
    model, processor = load_local_first(load, name, what="CLIP", hint=hint)
    return ClipModel(name=name, model=model, processor=processor, device=dev, dtype=dtype)
