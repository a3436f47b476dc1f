"""CLIP on one Ray actor for a distributed run: the model loaded once (on a GPU when the cluster
has one), the images of every worker embedded in shared batches.

Without it each worker would load its own CLIP and embed its images one call at a time. Under
``--engine ray`` the driver starts ``ClipEmbedder`` when an agent needs the run's shared CLIP
(``clip``, ``retrieval``); it claims ``num_gpus=1`` where the cluster has a GPU, else runs on
CPU. The workers' agents get a ``RemoteClip``: the same attributes as ``ClipModel``, its
embeddings computed by the actor. The actor gathers the images of the requests that reach it
while it is busy, or within ``BATCH_WAIT_S`` of the first, into one forward pass of at most
``MAX_BATCH`` images, and answers each request with its rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BATCH_WAIT_S = 0.005
MAX_BATCH = 64
ACTOR_PREFIX = "trustorch-clip-"


class ClipEmbedder:
    """The body of the run's CLIP actor (async: requests wait while a batch runs)."""

    def __init__(self, name: str | None, device: str | None) -> None:
        from agents.clip_model import load_clip

        self.clip = load_clip(name, device=device)
        self._pending: list[tuple[list[Any], asyncio.Future[np.ndarray]]] = []
        self._flush_soon: asyncio.TimerHandle | None = None
        self.batches = 0
        self.images = 0
        self.largest = 0

    async def describe(self) -> dict[str, Any]:
        """What a ``RemoteClip`` needs to stand for the model."""
        clip = self.clip
        return {
            "name": clip.name,
            "device": clip.device,
            "dim": clip.dim,
            "image_side": clip.image_side,
            "logit_scale": clip.logit_scale,
            "max_text_tokens": clip.max_text_tokens,
        }

    async def embed_images(self, images: list[Any]) -> np.ndarray:
        """The images' embeddings, computed in a batch with other requests' images."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((images, done))
        if sum(len(i) for i, _ in self._pending) >= MAX_BATCH:
            self._flush()
        elif self._flush_soon is None:
            self._flush_soon = loop.call_later(BATCH_WAIT_S, self._flush)
        return await done

    def _flush(self) -> None:
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        flat = [image for images, _ in pending for image in images]
        try:
            # on the actor's loop: requests arriving meanwhile queue up for the next batch
            rows = self.clip.embed_images(flat, batch_size=MAX_BATCH)
        except Exception as e:
            for _, done in pending:
                done.set_exception(e)
            return
        self.batches += 1
        self.images += len(flat)
        self.largest = max(self.largest, len(flat))
        start = 0
        for images, done in pending:
            done.set_result(rows[start : start + len(images)])
            start += len(images)

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.clip.embed_texts(texts)

    async def stats(self) -> dict[str, Any]:
        """Where the model runs and how its batches went."""
        return {
            "device": self.clip.device,
            "batches": self.batches,
            "images": self.images,
            "largest_batch": self.largest,
        }


@dataclass
class RemoteClip:
    """A worker's stand-in for ``ClipModel`` (what the CLIP agent and retrieval use of it),
    embedding through the run's ``ClipEmbedder`` actor. Its calls block: the agents make them
    from worker threads."""

    actor: Any
    name: str
    device: str
    dim: int
    image_side: int
    logit_scale: float
    max_text_tokens: int

    def embed_images(self, images: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
        import ray

        return ray.get(self.actor.embed_images.remote(list(images)))

    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        import ray

        return ray.get(self.actor.embed_texts.remote(list(texts)))


def remote_clip_loader(actor_name: str) -> Callable[[str | None], RemoteClip]:
    """What ``build_agents(load_clip=...)`` takes in a worker: the run's CLIP actor, whatever
    model name it is asked for (the driver started the actor with the run's shared one)."""

    def load(_name: str | None) -> RemoteClip:
        import ray

        actor = ray.get_actor(actor_name)
        return RemoteClip(actor=actor, **ray.get(actor.describe.remote()))

    return load


def start_clip_actor(run_id: str, model: str | None) -> tuple[str, Any]:
    """The run's ``ClipEmbedder`` on ``model`` (None: the default CLIP), on a GPU when the
    cluster has one; its name and handle, once the model is loaded."""
    import ray

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    name = ACTOR_PREFIX + run_id
    actor = (
        ray.remote(ClipEmbedder)
        .options(name=name, num_cpus=0, num_gpus=gpus, max_concurrency=1000)
        .remote(model, "cuda" if gpus else "cpu")
    )
    ray.get(actor.describe.remote())  # a model that cannot load fails here, once
    return name, actor
