"""Agents from spec strings, the same on the CLI and in Python.

    clip                      CLIP zero-shot with the shared CLIP model (--clip-model)
    clip:<hub id or folder>   CLIP zero-shot with that CLIP model
    openai:<model>            a VLM behind an OpenAI-compatible API (OPENAI_BASE_URL, _API_KEY)
    hf-vlm:<hub id or folder> a local transformers VLM scored by label log-probabilities

Any spec may start with ``<name>=`` to name the agent (``gpt=openai:gpt-4o``); a CLIP agent is
named ``clip`` wherever its weights live, so its trust profile follows it. Callers with more
kinds (the orchestrator's ``replay:`` and ``retrieval``) handle those and pass the rest here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.clip_model import ClipModel
from agents.errors import InputError
from agents.types import Agent, Task

KINDS: dict[str, str] = {
    "clip": "clip or clip:<hub id or folder>",
    "openai": "openai:<model>",
    "hf-vlm": "hf-vlm:<hub id or folder>",
}
_NAME_PREFIX = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")
_CLIENT_OPTIONS = {
    "base_url",
    "api_key",
    "timeout_s",
    "max_retries",
    "backoff_s",
    "max_backoff_s",
    "max_concurrency",
    "structured_output",
    "logprobs",
    "top_logprobs",
    "temperature",
    "max_tokens",
}

_OPENAI_AGENT_OPTIONS = {"neighbour_images", "image_detail", "max_side", "max_bytes", "max_pixels"}
OPTIONS: dict[str, frozenset[str]] = {
    "clip": frozenset({"templates", "batch_size", "max_bytes", "max_pixels"}),
    "openai": frozenset(_CLIENT_OPTIONS | _OPENAI_AGENT_OPTIONS | {"prices", "price_file"}),
    "hf-vlm": frozenset({"reason_tokens", "length_normalise", "max_bytes", "max_pixels", "dtype"}),
}

ClipSource = ClipModel | Callable[[], ClipModel] | None


@dataclass(frozen=True)
class AgentSpec:
    """A parsed spec: ``kind`` (clip, openai, hf-vlm, or a caller's own), ``target`` (model or
    folder, "" when none) and an optional agent ``name``."""

    kind: str
    target: str
    name: str | None = None
    text: str = ""


def parse_agent_spec(spec: str) -> AgentSpec:
    """Split ``[name=]kind[:target]``; the kind is not checked here (see ``build_agent``)."""
    text = spec.strip()
    if not text:
        raise InputError("empty agent spec (e.g. clip, openai:gpt-4o, hf-vlm:<folder>)")
    name = None
    named = _NAME_PREFIX.match(text)
    if named and ":" not in named.group(1):
        name, text = named.group(1), named.group(2).strip()
    kind, _, target = text.partition(":")
    return AgentSpec(kind=kind.strip().lower(), target=target.strip(), name=name, text=spec)


def known_kinds() -> str:
    return ", ".join(KINDS.values())


def options_for(spec: str, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that the kind of ``spec`` accepts (for shared CLI options)."""
    allowed = OPTIONS.get(parse_agent_spec(spec).kind, frozenset())
    return {k: v for k, v in options.items() if k in allowed}


def _options(options: dict[str, Any], allowed: frozenset[str], spec: str) -> dict[str, Any]:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(f"agent spec {spec!r}: unknown option(s) {unknown}")
    return options


def _clip_model(parsed: AgentSpec, clip: ClipSource, clip_model: str | None, device: Any) -> Any:
    """The shared CLIP when it is the one asked for; a lazy ``clip`` is only called for a bare
    ``clip`` spec (``clip:<id>`` never loads the default model just to compare names)."""
    from agents.clip_model import load_clip

    if parsed.target:
        if isinstance(clip, ClipModel) and clip.name == parsed.target:
            return clip
        return load_clip(parsed.target, device=device)
    if isinstance(clip, ClipModel):
        return clip
    if clip is not None:
        return clip()
    return load_clip(clip_model, device=device)


def build_agent(
    spec: str,
    *,
    task: Task,
    clip: ClipSource = None,
    clip_model: str | None = None,
    device: str | None = None,
    **options: Any,
) -> Agent:
    """Build one agent. ``clip`` is the shared loaded CLIP (or a function that loads it on
    first need); ``options`` go to the agent (and, for ``openai``, to its client)."""
    parsed = parse_agent_spec(spec)
    if parsed.kind == "clip":
        from agents.clip_agent import ClipAgent

        return ClipAgent(
            _clip_model(parsed, clip, clip_model, device),
            name=parsed.name or "clip",
            **_options(options, OPTIONS["clip"], spec),
        )
    if parsed.kind == "openai":
        from agents.openai_agent import OpenAIAgent
        from agents.openai_client import OpenAIChatClient
        from agents.pricing import load_price_table

        if not parsed.target:
            raise InputError(f"agent spec {spec!r}: give a model, e.g. openai:gpt-4o")
        _options(options, OPTIONS["openai"], spec)
        client = OpenAIChatClient(
            model=parsed.target, **{k: v for k, v in options.items() if k in _CLIENT_OPTIONS}
        )
        prices = options.get("prices") or load_price_table(options.get("price_file"))
        return OpenAIAgent(
            client,
            name=parsed.name,
            prices=prices,
            **{k: v for k, v in options.items() if k in _OPENAI_AGENT_OPTIONS},
        )
    if parsed.kind == "hf-vlm":
        from agents.hf_vlm import HFVLMAgent, load_vlm

        if not parsed.target:
            raise InputError(f"agent spec {spec!r}: give a hub id or folder, e.g. hf-vlm:DIR")
        _options(options, OPTIONS["hf-vlm"], spec)
        vlm = load_vlm(parsed.target, device=device, dtype=options.pop("dtype", None))
        return HFVLMAgent(vlm, name=parsed.name, **options)
    raise InputError(f"unknown agent kind {parsed.kind!r} in {spec!r} (valid: {known_kinds()})")
