"""What an OpenAI-compatible server accepts, learnt once per server (base URL) and model and
shared by every client that talks to it.

Servers differ most in how they take a reply schema: OpenAI takes ``{"type": "json_schema",
...}``; llama.cpp's server takes ``{"type": "json_object", "schema": ...}`` and rejects the
former (with an HTTP 500 naming ``response_format``); some take neither, and the schema is then
only asked for in the prompt. The first mode a server does not reject is kept. Optional
parameters a server rejects (log-probabilities, temperature, seed, ``max_tokens`` for reasoning
models) are dropped the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

StructuredMode = Literal["json_schema", "json_object_schema", "prompt_only"]
MODES: tuple[StructuredMode, ...] = ("json_schema", "json_object_schema", "prompt_only")
OPTIONAL_PARAMS = ("response_format", "logprobs", "temperature", "seed")
OPENAI_API_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class ReplySchema:
    """The JSON schema a reply must fit, under ``name``.

    ``bounded`` is the same schema with length limits, sent in ``json_object_schema`` mode:
    llama.cpp turns that schema into a grammar, and limits there keep a small model from
    rambling."""

    name: str
    schema: dict[str, Any]
    bounded: dict[str, Any] | None = None

    def response_format(self, mode: StructuredMode) -> dict[str, Any] | None:
        """The ``response_format`` request field of ``mode`` (None: prompt only)."""
        if mode == "json_schema":
            return {
                "type": "json_schema",
                "json_schema": {"name": self.name, "schema": self.schema, "strict": True},
            }
        if mode == "json_object_schema":
            return {"type": "json_object", "schema": self.bounded or self.schema}
        return None


@dataclass
class ServerFeatures:
    """What one server and model were found to accept (None: not known yet).

    ``mode`` is the best structured-output mode not rejected so far; ``mode_confirmed`` turns
    true once a reply came back in it. ``downgrades`` lists what was given up, in order."""

    mode: StructuredMode = "json_schema"
    mode_confirmed: bool = False
    logprobs: bool | None = None
    temperature: bool | None = None
    seed: bool | None = None
    max_tokens_param: str = "max_tokens"
    downgrades: list[str] = field(default_factory=list)

    def drop_mode(self) -> bool:
        """Move to the next structured-output mode; False when there is none left."""
        index = MODES.index(self.mode)
        if index + 1 >= len(MODES):
            return False
        self.downgrades.append(self.mode)
        self.mode = MODES[index + 1]
        self.mode_confirmed = False
        return True

    def adapt(self, request: dict[str, Any], status: int, message: str) -> bool:
        """After an error reply to ``request``, stop sending what the server rejected; False
        when nothing is left to give up (the error then stands)."""
        text = message.lower()
        if status >= 500:
            # llama.cpp's server answers an unknown response_format with a 500 naming it
            return "response_format" in request and "response_format" in text and self.drop_mode()
        if status not in (400, 422):
            return False
        if "max_completion_tokens" in text and "max_tokens" in request:
            self.max_tokens_param = "max_completion_tokens"
            self.downgrades.append("max_tokens")
            return True
        present = [p for p in OPTIONAL_PARAMS if p in request]
        named = [p for p in present if p in text or (p == "response_format" and "schema" in text)]
        candidates = named or present[:1]
        if not candidates:
            return False
        param = candidates[0]
        if param == "response_format":
            return self.drop_mode()
        setattr(self, param, False)
        self.downgrades.append(param)
        return True


class ServerFeatureTable:
    """What each server and model were found to accept, shared by the clients given the same
    table (a run's agents and its ``llm`` policy), so a mode is learnt once per server."""

    def __init__(self) -> None:
        self._learnt: dict[tuple[str, str], ServerFeatures] = {}

    def features(self, base_url: str | None, model: str) -> ServerFeatures:
        """The features learnt so far for ``model`` on ``base_url`` (None: OpenAI)."""
        key = ((base_url or OPENAI_API_URL).rstrip("/"), model)
        found = self._learnt.get(key)
        if found is None:
            found = self._learnt[key] = ServerFeatures()
        return found
