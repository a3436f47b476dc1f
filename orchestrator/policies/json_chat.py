"""``JsonChat``: one chat model on one OpenAI-compatible server, answering JSON that fits a
schema.

Servers differ in how they take a schema: OpenAI takes ``{"type": "json_schema", ...}``;
llama.cpp's server takes ``{"type": "json_object", "schema": ...}`` and rejects the former (with
an HTTP 500 naming ``response_format``). ``JsonChat`` tries them in order on its first call and
keeps the first one the server accepts; the last resort asks for JSON in the prompt only.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, Literal

from agents.errors import AgentError
from agents.openai_client import Secret

StructuredMode = Literal["json_schema", "json_object_schema", "prompt_only"]
MODES: tuple[StructuredMode, ...] = ("json_schema", "json_object_schema", "prompt_only")
SchemaBuilder = Callable[..., dict[str, Any]]
"""``build_schema(bounded=...)``: the reply schema; ``bounded`` adds length limits (llama.cpp
turns the schema into a grammar, so limits there keep a small model from rambling)."""


class LlmReplyError(AgentError):
    """The LLM gave no usable reply (transport error, no JSON); ``usage`` when it answered.

    ``JsonChat`` redacts its API key from the message (it lands in decision reasons)."""

    def __init__(self, message: str, *, usage: Any = None) -> None:
        super().__init__(message)
        self.usage = usage


def _response_format(mode: StructuredMode, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    if mode == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        }
    return {"type": "json_object", "schema": schema}


def parse_json_object(text: str | None) -> dict[str, Any]:
    """The first JSON object in a reply (code fences and surrounding prose tolerated)."""
    if not text:
        raise LlmReplyError("empty reply")
    cleaned = re.sub(r"^```(?:json)?|```$", "", text.strip(), flags=re.IGNORECASE).strip()
    match = re.search(r"\{.*\}", cleaned, re.DOTALL)
    if match is None:
        raise LlmReplyError(f"no JSON object in reply {text[:80]!r}")
    try:
        data = json.loads(match.group())
    except json.JSONDecodeError as e:
        raise LlmReplyError(f"invalid JSON in reply ({e.msg})") from e
    if not isinstance(data, dict):
        raise LlmReplyError("reply is not a JSON object")
    return data


class JsonChat:
    """One chat model on one OpenAI-compatible server, answering JSON that fits a schema.

    ``mode`` fixes how the schema is sent; ``None`` detects it on the first call (the first
    mode the server accepts is kept as ``mode_``).
    """

    def __init__(
        self,
        *,
        client: Any,
        model: str,
        mode: StructuredMode | None = None,
        temperature: float = 0.0,
        max_tokens: int = 320,
        seed: int | None = 0,
    ) -> None:
        self.client = client
        self.model = model
        self.mode = mode
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.mode_: StructuredMode | None = mode
        self._lock = asyncio.Lock()

    async def _create(
        self,
        mode: StructuredMode,
        prompt: str,
        build_schema: SchemaBuilder,
        *,
        probing: bool = False,
    ) -> Any:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if mode != "prompt_only":
            schema = build_schema(bounded=mode == "json_object_schema")
            kwargs["response_format"] = _response_format(mode, "orchestrator_reply", schema)
        client = self.client.with_options(max_retries=0) if probing else self.client
        return await client.chat.completions.create(**kwargs)

    def redact(self, text: str) -> str:
        """``text`` without the client's API key."""
        key = getattr(self.client, "api_key", None)
        return Secret(key).redact(text) if isinstance(key, str) else text

    async def complete(
        self, prompt: str, build_schema: SchemaBuilder
    ) -> tuple[dict[str, Any], Any]:
        """The reply as a dict, and the usage block (or None); ``LlmReplyError`` (redacted)
        when there is none."""
        try:
            return await self._complete(prompt, build_schema)
        except LlmReplyError as e:
            raise LlmReplyError(self.redact(str(e)), usage=e.usage) from None

    async def _complete(
        self, prompt: str, build_schema: SchemaBuilder
    ) -> tuple[dict[str, Any], Any]:
        import openai

        if self.mode_ is None:
            async with self._lock:
                if self.mode_ is None:
                    return await self._detect(prompt, build_schema)
        try:
            completion = await self._create(self.mode_, prompt, build_schema)
        except openai.OpenAIError as e:
            raise LlmReplyError(f"{type(e).__name__}: {e}") from e
        return self._parsed(completion)

    async def _detect(self, prompt: str, build_schema: SchemaBuilder) -> tuple[dict[str, Any], Any]:
        import openai

        errors: list[str] = []
        for mode in MODES:
            try:
                completion = await self._create(mode, prompt, build_schema, probing=True)
            except openai.APIStatusError as e:
                # llama.cpp's server answers an unknown response_format with a 500 naming it
                if e.status_code in (400, 422) or "response_format" in str(e):
                    errors.append(f"{mode}: HTTP {e.status_code}")
                    continue
                raise LlmReplyError(f"{type(e).__name__}: {e}") from e
            except openai.OpenAIError as e:
                raise LlmReplyError(f"{type(e).__name__}: {e}") from e
            self.mode_ = mode
            return self._parsed(completion)
        raise LlmReplyError(f"the server accepted no response format ({'; '.join(errors)})")

    @staticmethod
    def _parsed(completion: Any) -> tuple[dict[str, Any], Any]:
        usage = getattr(completion, "usage", None)
        choices = getattr(completion, "choices", None) or []
        try:
            if not choices:
                raise LlmReplyError("reply without choices")
            return parse_json_object(choices[0].message.content), usage
        except LlmReplyError as e:
            raise LlmReplyError(str(e), usage=usage) from e
