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

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.clip_model import ClipModel
from agents.types import Agent
from core.errors import InputError
from core.task import Task

KINDS: dict[str, str] = {
    "clip": "clip or clip:<hub id or folder>",
    "openai": "openai:<model>",
    "hf-vlm": "hf-vlm:<hub id or folder>",
}
_NAME_PREFIX = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")


@dataclass(frozen=True)
class OptionType:
    """What one agent option accepts; ``coerce`` turns a CLI or Python value into it.

    ``kind``: int, float, bool, str, strs (one text or a list of texts), mapping, dtype."""

    kind: str
    minimum: float | None = None
    exclusive: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        text = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a text",
            "strs": "a text or a list of texts",
            "mapping": "a mapping",
            "dtype": "a torch dtype",
        }[self.kind]
        if self.minimum is not None:
            text += f" {'>' if self.exclusive else '>='} {self.minimum:g}"
        if self.choices:
            text += f" (one of {', '.join(self.choices)})"
        return text + (" or none" if self.optional else "")

    def coerce(self, value: Any) -> Any:
        """The value as this type, or ``ValueError``."""
        if self.optional and (value is None or str(value).strip().lower() in ("none", "null")):
            return None
        out = _COERCE[self.kind](value)
        if self.minimum is not None and (
            out < self.minimum or (self.exclusive and out == self.minimum)
        ):
            raise ValueError(value)
        if self.choices and str(out).lower() not in self.choices:
            raise ValueError(value)
        return str(out).lower() if self.choices and isinstance(out, str) else out


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(value) if isinstance(value, int) else int(str(value).strip())


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(value)
    return out


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(value)


def _as_str(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(value)


def _as_strs(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(value)


def _as_mapping(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    raise ValueError(value)


def _as_dtype(value: Any) -> Any:
    if isinstance(value, str):
        if value.strip().lower() not in TORCH_DTYPES:
            raise ValueError(value)
        return value.strip().lower()
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return value
    raise ValueError(value)


_COERCE: dict[str, Callable[[Any], Any]] = {
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
    "str": _as_str,
    "strs": _as_strs,
    "mapping": _as_mapping,
    "dtype": _as_dtype,
}
TORCH_DTYPES = ("float32", "float16", "bfloat16", "float64")

_POSITIVE_INT = OptionType("int", minimum=1)
_COUNT = OptionType("int", minimum=0)
_IMAGE_OPTIONS = {"max_bytes": _POSITIVE_INT, "max_pixels": _POSITIVE_INT}
_CLIENT_OPTIONS: dict[str, OptionType] = {
    "base_url": OptionType("str"),
    "api_key": OptionType("str"),
    "timeout_s": OptionType("float", minimum=0, exclusive=True),
    "max_retries": _COUNT,
    "backoff_s": OptionType("float", minimum=0),
    "max_backoff_s": OptionType("float", minimum=0),
    "max_concurrency": _POSITIVE_INT,
    "structured_output": OptionType("bool"),
    "logprobs": OptionType("bool"),
    "top_logprobs": _COUNT,
    "temperature": OptionType("float", minimum=0, optional=True),
    "max_tokens": OptionType("int", minimum=1, optional=True),
}
_OPENAI_AGENT_OPTIONS: dict[str, OptionType] = {
    "neighbour_images": _COUNT,
    "image_detail": OptionType("str", choices=("auto", "low", "high")),
    "max_side": OptionType("int", minimum=1, optional=True),
    **_IMAGE_OPTIONS,
}
OPTION_TYPES: dict[str, dict[str, OptionType]] = {
    "clip": {"templates": OptionType("strs"), "batch_size": _POSITIVE_INT, **_IMAGE_OPTIONS},
    "openai": {
        **_CLIENT_OPTIONS,
        **_OPENAI_AGENT_OPTIONS,
        "prices": OptionType("mapping"),
        "price_file": OptionType("str"),
    },
    "hf-vlm": {
        "reason_tokens": _COUNT,
        "length_normalise": OptionType("bool"),
        "dtype": OptionType("dtype"),
        **_IMAGE_OPTIONS,
    },
}
OPTIONS: dict[str, frozenset[str]] = {kind: frozenset(t) for kind, t in OPTION_TYPES.items()}

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


def _options(options: dict[str, Any], kind: str, spec: str) -> dict[str, Any]:
    """``options`` checked against the kind's option types and coerced to them."""
    types = OPTION_TYPES[kind]
    unknown = sorted(set(options) - set(types))
    if unknown:
        raise InputError(f"agent spec {spec!r}: unknown option(s) {unknown}")
    checked: dict[str, Any] = {}
    for key, value in options.items():
        try:
            checked[key] = types[key].coerce(value)
        except (ValueError, TypeError):
            raise InputError(
                f"agent spec {spec!r}: option {key}={value!r} must be {types[key].describe()}"
            ) from None
    return checked


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

        options = _options(options, "clip", spec)
        model = _clip_model(parsed, clip, clip_model, device)
        return ClipAgent(model, name=parsed.name or "clip", **options)
    if parsed.kind == "openai":
        from agents.openai_agent import OpenAIAgent
        from agents.openai_compat import OpenAIChatClient, load_price_table

        if not parsed.target:
            raise InputError(f"agent spec {spec!r}: give a model, e.g. openai:gpt-4o")
        options = _options(options, "openai", spec)
        prices = options.get("prices") or load_price_table(options.get("price_file"))
        client = OpenAIChatClient(
            model=parsed.target,
            prices=prices,
            **{k: v for k, v in options.items() if k in _CLIENT_OPTIONS},
        )
        return OpenAIAgent(
            client,
            name=parsed.name,
            **{k: v for k, v in options.items() if k in _OPENAI_AGENT_OPTIONS},
        )
    if parsed.kind == "hf-vlm":
        from agents.hf_vlm import HFVLMAgent, load_vlm

        if not parsed.target:
            raise InputError(f"agent spec {spec!r}: give a hub id or folder, e.g. hf-vlm:DIR")
        options = _options(options, "hf-vlm", spec)
        vlm = load_vlm(parsed.target, device=device, dtype=options.pop("dtype", None))
        return HFVLMAgent(vlm, name=parsed.name, **options)
    raise InputError(f"unknown agent kind {parsed.kind!r} in {spec!r} (valid: {known_kinds()})")
