"""Errors of the OpenAI-compatible adapter; both are ``AgentError``s, so a caller that only
needs to know "no answer" catches that."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agents.errors import AgentError

if TYPE_CHECKING:
    from agents.openai_compat.results import ChatResult


class ChatError(AgentError):
    """No usable completion: the request failed (after ``attempts``), or the reply did not hold
    what was asked. The message never contains the API key."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts

    @property
    def cost_usd(self) -> float:
        """What the failed call cost (0.0 when the server sent no completion)."""
        return 0.0


class ReplyFormatError(ChatError):
    """The server answered, but not with the JSON object asked for; ``completion`` is that
    answer (with its usage and cost) when the adapter has it."""

    def __init__(self, message: str, *, completion: ChatResult | None = None) -> None:
        super().__init__(message, attempts=completion.attempts if completion else 1)
        self.completion = completion

    @property
    def cost_usd(self) -> float:
        return self.completion.cost_usd if self.completion is not None else 0.0


class ReplyTooLargeError(ChatError):
    """The server's reply body was over the adapter's byte cap (``max_reply_bytes``), or came
    compressed although the adapter asked for it uncompressed (its size unknowable until
    decoded); the body is not read further."""
