"""The orchestrator's agent kinds, added to the agents layer's registry.

- ``replay:<file>#<agent>``: recorded answers played back (``orchestrator.replay.agent``);
- ``retrieval``: the CLIP-neighbour vote over the image index (``rag.agent``); it is also the
  graph's retriever;
- ``py:<module or file.py>:<callable>[?key=value&...]``: your own ``Agent``, made by calling
  ``callable(**params)`` (params are strings).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from agents.registry import AgentKind, AgentRegistry, AgentSpec, BuildContext, default_registry
from agents.types import RETRIEVAL_AGENT, Agent
from core.errors import InputError

REPLAY_KIND = "replay"
RETRIEVAL_KIND = "retrieval"
PLUGIN_KIND = "py"


@dataclass(frozen=True)
class RetrievalSettings:
    """Where the image index lives and which CLIP embeds the query images."""

    index_dir: str | None = None
    chroma_url: str | None = None
    clip_model: str | None = None
    k: int = 10


def _load_callable(target: str, attr: str, spec: str) -> Any:
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise InputError(f"agent spec {spec!r}: no such Python file", path=str(path))
        module_name = f"trustorch_plugin_{abs(hash(path.resolve()))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise InputError(f"agent spec {spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise InputError(f"agent spec {spec!r}: cannot import module {target!r} ({e})") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"agent spec {spec!r}: {target} has no callable {attr!r}")
    return factory


def build_plugin(spec: AgentSpec, options: dict[str, Any], context: BuildContext) -> Agent:
    """``py:<module or file.py>:<callable>[?key=value&...]`` -> ``callable(**params)``."""
    body, _, query = spec.target.partition("?")
    target, sep, attr = body.rpartition(":")
    if not sep or not target or not attr:
        raise InputError(
            f"agent spec must be 'py:<module or file.py>:<callable>[?key=value]', got {spec.text!r}"
        )
    params = dict(parse_qsl(query, keep_blank_values=True))
    agent = _load_callable(target, attr, spec.text)(**params)
    if not isinstance(agent, Agent):
        raise InputError(
            f"agent spec {spec.text!r} did not return an Agent ({type(agent).__name__})"
        )
    if spec.name:
        agent.name = spec.name
    return agent


def build_replay(spec: AgentSpec, options: dict[str, Any], context: BuildContext) -> Agent:
    from orchestrator.replay.agent import replay_agent_from_spec

    agent = replay_agent_from_spec(f"{REPLAY_KIND}:{spec.target}", task=context.task)
    agent.name = spec.name or agent.name
    return agent


def retrieval_kind(settings: RetrievalSettings, index: Any = None) -> AgentKind:
    """``retrieval`` over ``index`` when one is already open, else over the index of
    (task, shared CLIP) found where ``settings`` say."""

    def build(spec: AgentSpec, options: dict[str, Any], context: BuildContext) -> Agent:
        from rag.agent import RetrievalAgent

        clip = context.shared_clip()
        found = index
        if found is None:
            from rag.store import ChromaStore

            store = ChromaStore.open(
                index_dir=settings.index_dir, chroma_url=settings.chroma_url, create=False
            )
            found = store.existing(context.task.name, clip.name)
        return RetrievalAgent(clip, found, k=settings.k, name=spec.name or RETRIEVAL_AGENT)

    return AgentKind(
        name=RETRIEVAL_KIND,
        syntax=RETRIEVAL_KIND,
        build=build,
        target="none",
    )


def agent_registry(
    retrieval: RetrievalSettings | None = None, *, index: Any = None
) -> AgentRegistry:
    """The agents layer's kinds plus ``retrieval``, ``replay:`` and ``py:``."""
    replay = AgentKind(
        name=REPLAY_KIND,
        syntax="replay:<file>#<agent>",
        build=build_replay,
        hint="give a file and an agent, e.g. replay:case3.csv#gpt",
    )
    plugin = AgentKind(
        name=PLUGIN_KIND,
        syntax="py:<module or file.py>:<callable>[?key=value]",
        build=build_plugin,
        hint="give py:<module or file.py>:<callable>[?key=value]",
    )
    settings = retrieval or RetrievalSettings()
    return default_registry().with_kinds(retrieval_kind(settings, index), replay, plugin)
