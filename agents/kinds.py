"""This layer's agent kinds: CLIP zero-shot, an OpenAI-compatible VLM, a local transformers VLM.

Each kind is declared once here (syntax, option types, builder, and how the demo finds it on this
machine); ``agents.registry.default_registry`` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.clip_model import ClipModel
from agents.hf_vlm import MAX_REASON_TOKENS
from agents.options import OptionType
from agents.registry import AgentKind, AgentSpec, AgentStatus, BuildContext
from agents.types import Agent
from core.redact import redact_url

OPENAI_MODEL_ENV = "TRUSTORCH_OPENAI_MODEL"
DEFAULT_OPENAI_MODEL = "gpt-4o"

_POSITIVE_INT = OptionType("int", minimum=1)
_COUNT = OptionType("int", minimum=0)
_IMAGE_OPTIONS = {"max_bytes": _POSITIVE_INT, "max_pixels": _POSITIVE_INT}
_CLIENT_OPTIONS: dict[str, OptionType] = {
    "base_url": OptionType("str"),
    "api_key": OptionType("str", secret=True),
    "timeout_s": OptionType("float", minimum=0, exclusive=True),
    "deadline_s": OptionType("float", minimum=0, exclusive=True),
    "max_reply_bytes": _POSITIVE_INT,
    "max_retries": _COUNT,
    "backoff_s": OptionType("float", minimum=0),
    "max_backoff_s": OptionType("float", minimum=0),
    "max_concurrency": _POSITIVE_INT,
    "structured_output": OptionType("bool"),
    "logprobs": OptionType("bool"),
    "top_logprobs": _COUNT,
    "temperature": OptionType("float", minimum=0, optional=True),
    "max_tokens": OptionType("int", minimum=1, optional=True),
    "http_client": OptionType("str", choices=("direct", "openai")),
}
_OPENAI_AGENT_OPTIONS: dict[str, OptionType] = {
    "neighbour_images": _COUNT,
    "image_detail": OptionType("str", choices=("auto", "low", "high")),
    "max_side": OptionType("int", minimum=1, optional=True),
    **_IMAGE_OPTIONS,
}


def _clip_model(spec: AgentSpec, context: BuildContext) -> ClipModel:
    """The shared CLIP when it is the one asked for; a lazy shared CLIP is only loaded for a
    bare ``clip`` spec (``clip:<id>`` never loads the default model just to compare names)."""
    from agents.clip_model import load_clip

    if not spec.target:
        return context.shared_clip()
    if isinstance(context.clip, ClipModel) and context.clip.name == spec.target:
        return context.clip
    return load_clip(spec.target, device=context.device)


def build_clip(spec: AgentSpec, options: dict[str, Any], context: BuildContext) -> Agent:
    from agents.clip_agent import ClipAgent

    return ClipAgent(_clip_model(spec, context), name=spec.name or "clip", **options)


def build_openai(spec: AgentSpec, options: dict[str, Any], context: BuildContext) -> Agent:
    from agents.openai_agent import OpenAIAgent
    from agents.openai_compat import OpenAIChatClient, load_price_table

    prices = options.get("prices") or load_price_table(options.get("price_file"))
    client = OpenAIChatClient(
        model=spec.target,
        prices=prices,
        servers=context.servers,
        limits=context.limits,
        **{k: v for k, v in options.items() if k in _CLIENT_OPTIONS},
    )
    return OpenAIAgent(
        client,
        name=spec.name,
        **{k: v for k, v in options.items() if k in _OPENAI_AGENT_OPTIONS},
    )


def probe_openai(environ: Mapping[str, str]) -> AgentStatus:
    """Available when an API key or an OpenAI-compatible server is set."""
    model = environ.get(OPENAI_MODEL_ENV) or DEFAULT_OPENAI_MODEL
    base_url = environ.get("OPENAI_BASE_URL")
    if environ.get("OPENAI_API_KEY") or base_url:
        where = f"the server at {redact_url(base_url)}" if base_url else "the OpenAI API"
        return AgentStatus("openai", f"'{model}' through {where}", f"openai:{model}")
    return AgentStatus(
        "openai",
        "set OPENAI_API_KEY (GPT-4o) or OPENAI_BASE_URL (a local vLLM or Ollama server) "
        f"and {OPENAI_MODEL_ENV}=<model>",
    )


def build_hf_vlm(spec: AgentSpec, options: dict[str, Any], context: BuildContext) -> Agent:
    from agents.hf_vlm import HFVLMAgent, load_vlm

    vlm = load_vlm(spec.target, device=context.device, dtype=options.pop("dtype", None))
    return HFVLMAgent(vlm, name=spec.name, **options)


def probe_hf_vlm(environ: Mapping[str, str]) -> AgentStatus | None:
    """Offered when ``TRUSTORCH_HF_VLM`` names a model whose weights are on this machine."""
    from agents.hf_vlm import HF_VLM_ENV
    from agents.hub import local_weights_folder

    name = environ.get(HF_VLM_ENV)
    if not name:
        return None
    folder = local_weights_folder(name)
    if folder is None:
        return AgentStatus(
            "hf-vlm", f"no local weights for '{name}' ({HF_VLM_ENV}; the demo never downloads)"
        )
    return AgentStatus("hf-vlm", f"local VLM from {folder}", f"hf-vlm:{folder}")


CLIP_KIND = AgentKind(
    name="clip",
    syntax="clip or clip:<hub id or folder>",
    build=build_clip,
    target="optional",
    options={"templates": OptionType("strs"), "batch_size": _POSITIVE_INT, **_IMAGE_OPTIONS},
)
OPENAI_KIND = AgentKind(
    name="openai",
    syntax="openai:<model>",
    build=build_openai,
    hint="give a model, e.g. openai:gpt-4o",
    options={
        **_CLIENT_OPTIONS,
        **_OPENAI_AGENT_OPTIONS,
        "prices": OptionType("mapping"),
        "price_file": OptionType("str"),
    },
    probe=probe_openai,
)
HF_VLM_KIND = AgentKind(
    name="hf-vlm",
    syntax="hf-vlm:<hub id or folder>",
    build=build_hf_vlm,
    hint="give a hub id or folder, e.g. hf-vlm:DIR",
    options={
        "reason_tokens": OptionType("int", minimum=0, maximum=MAX_REASON_TOKENS),
        "length_normalise": OptionType("bool"),
        "dtype": OptionType("dtype"),
        **_IMAGE_OPTIONS,
    },
    probe=probe_hf_vlm,
)
