"""One image is read once and decoded once per run, however many agents look at it: the tiny
seeded CLIP, an OpenAI agent against the scripted local server, and retrieval from a real
Chroma index; the loaded image is let go when the run ends."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import weakref
from pathlib import Path

import PIL.Image
import PIL.ImageFile
import pytest
from openai_server import openai_server
from test_demo_report import COLOURS, leaf_image, make_index, make_leaf_folder

from agents.clip_agent import ClipAgent
from agents.openai_agent import OpenAIAgent
from agents.openai_compat import OpenAIChatClient
from core.images import ImageRef, LoadedImage, image_to_data_url, open_image
from orchestrator.context import GraphContext
from orchestrator.graph import build_graph, classify
from orchestrator.policies.trust import TrustPolicy


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    from agents.clip_model import load_clip

    return load_clip(str(tiny_clip_dir), device="cpu")


class ReadCounter:
    """Counts opens of one file (every reader of user files opens through ``os.open``: the
    bounded readers of ``core.reading``), PIL opens and first decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.reads = self.pil_opens = self.decodes = 0
        real_open, real_pil_open = os.open, PIL.Image.open
        real_load = PIL.ImageFile.ImageFile.load

        def os_open(p, *args, **kwargs):
            self.reads += isinstance(p, str | Path) and Path(p) == path
            return real_open(p, *args, **kwargs)

        def pil_open(*args, **kwargs):
            self.pil_opens += 1
            return real_pil_open(*args, **kwargs)

        def load(image):
            self.decodes += getattr(image, "_im", None) is None
            return real_load(image)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(PIL.Image, "open", pil_open)
        monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", load)


def test_three_agents_share_one_read_and_one_decode(clip, apple_task, tmp_path, monkeypatch):
    from rag.agent import RetrievalAgent

    index = make_index(clip, tmp_path / "index", make_leaf_folder(tmp_path / "refs"), apple_task)
    query = leaf_image(tmp_path / "query.png", COLOURS["rust"], seed=7, size=80)
    loaded: list[weakref.ref] = []
    for_image = GraphContext.for_image

    def remembered(self, image):
        context = for_image(self, image)
        loaded.append(weakref.ref(context.image))
        return context

    monkeypatch.setattr(GraphContext, "for_image", remembered)
    answer = json.dumps({"label": "rust", "confidence": 0.4, "reason": "orange spots"})
    with openai_server([answer] * 4) as server:
        client = OpenAIChatClient(
            model="gpt-4o", base_url=server.base_url, api_key="sk-test", timeout_s=5.0
        )
        retrieval = RetrievalAgent(clip, index, k=4)
        agents = [ClipAgent(clip), OpenAIAgent(client), retrieval]
        graph = build_graph(
            task=apple_task,
            agents=agents,
            policy=TrustPolicy.from_profiles({}),
            retriever=retrieval,
            max_rounds=2,
        )
        counter = ReadCounter(monkeypatch, query)

        async def run():
            try:
                return await classify(graph, ImageRef.from_path(query))
            finally:
                await client.aclose()

        decision = asyncio.run(run())
        requests = list(server.requests)
    # Every agent answered, the VLM twice (a first look, then a second with the evidence).
    assert all(p.ok for p in decision.predictions), decision.notes
    assert decision.rounds_used == 2 and len(requests) == 2, decision.notes
    # One read hashes the file (ImageRef.from_path), one serves every agent; one decode.
    assert (counter.reads, counter.pil_opens, counter.decodes) == (2, 1, 1)
    gc.collect()
    assert len(loaded) == 1 and loaded[0]() is None, "the run's image outlived the run"


def test_loaded_image_applies_each_callers_caps(tmp_path):
    path = tmp_path / "leaf.png"
    PIL.Image.new("RGB", (40, 30), (200, 120, 40)).save(path)
    image = LoadedImage(ImageRef.from_path(path))
    assert open_image(image).size == (40, 30)
    assert image_to_data_url(image).startswith("data:image/png;base64,")
    size = path.stat().st_size
    with pytest.raises(Exception, match=f"{size} bytes, over the cap of 10 bytes"):
        open_image(image, max_bytes=10)
    with pytest.raises(Exception, match="40x30 = 1200 pixels, over the cap of 100"):
        open_image(image, max_pixels=100)
    # The decoded pixels are shared, not decoded again.
    assert open_image(image) is open_image(image)
