"""What the adapter hands back: typed results, never the provider's response objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from agents.openai_compat.modes import StructuredMode

ReplyModel = TypeVar("ReplyModel", bound=BaseModel)


@dataclass(frozen=True)
class TokenChoice:
    """One generated token, its log-probability and the top alternatives at its position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ChatResult:
    """One successful chat completion, reduced to what a caller needs.

    ``mode`` is how the reply schema was sent (None when the call had no schema);
    ``cost_usd`` comes from the client's price table."""

    content: str | None
    refusal: str | None
    finish_reason: str | None
    tokens: tuple[TokenChoice, ...] | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    attempts: int
    mode: StructuredMode | None


@dataclass(frozen=True)
class JsonReply(Generic[ReplyModel]):
    """A completion whose JSON object validated as ``value``."""

    value: ReplyModel
    completion: ChatResult
