"""The adapter around the ``openai`` client: retries with backoff, a concurrency limit,
feature detection (structured output, log-probabilities), and secrets kept out of messages.

Everything provider-specific stops here: callers get a ``ChatResult`` or an ``AgentError``.
"""

from __future__ import annotations

import asyncio
import os
import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.errors import AgentError
from agents.reply_parsing import TokenChoice
from core.errors import InputError

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
_RETRY_STATUS = {408, 409, 429}
_OPTIONAL_PARAMS = ("response_format", "logprobs", "temperature")


class Secret:
    """A string that never shows itself in a repr, str or f-string."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the secret replaced by ``***``."""
        if len(self._value) < 4:
            return text
        return text.replace(self._value, "***")

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class ChatResult:
    """One successful chat completion, reduced to what an agent needs."""

    content: str | None
    refusal: str | None
    finish_reason: str | None
    tokens: tuple[TokenChoice, ...] | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    structured: bool


@dataclass
class Features:
    """What this server was found to accept (None: not tried yet)."""

    response_format: bool | None = None
    logprobs: bool | None = None
    temperature: bool | None = None
    max_tokens_param: str = "max_tokens"
    downgrades: list[str] = field(default_factory=list)


class OpenAIChatClient:
    """Chat completions against OpenAI or any OpenAI-compatible server (vLLM, Ollama,
    llama.cpp). ``api_key`` / ``base_url`` default to ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``;
    a local server (a base URL without a key) gets a placeholder key."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_concurrency: int = 4,
        structured_output: bool = True,
        logprobs: bool = True,
        top_logprobs: int = 10,
        temperature: float | None = 0.0,
        max_tokens: int | None = 400,
    ) -> None:
        if not model:
            raise InputError("an OpenAI-compatible agent needs a model name (openai:<model>)")
        if max_concurrency < 1 or max_retries < 0:
            raise InputError("max_concurrency must be >= 1 and max_retries >= 0")
        self.model = model
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        key = api_key or os.environ.get(API_KEY_ENV)
        if not key:
            if self.base_url is None:
                raise InputError(
                    f"no API key: set {API_KEY_ENV}, or {BASE_URL_ENV} for a local "
                    "OpenAI-compatible server that needs none"
                )
            key = "not-needed"
        self._key = Secret(key)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_concurrency = max_concurrency
        self.top_logprobs = top_logprobs
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.features = Features(
            response_format=None if structured_output else False,
            logprobs=None if logprobs else False,
            temperature=None if temperature is not None else False,
        )
        self._per_loop: weakref.WeakKeyDictionary[Any, tuple[Any, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"OpenAIChatClient(model={self.model!r}, base_url={self.base_url!r})"

    def redact(self, text: str) -> str:
        return self._key.redact(text)

    def _connection(self) -> tuple[Any, asyncio.Semaphore]:
        # An httpx pool and a semaphore belong to one event loop: keep one pair per loop.
        from openai import AsyncOpenAI

        loop = asyncio.get_running_loop()
        pair = self._per_loop.get(loop)
        if pair is None:
            client = AsyncOpenAI(
                api_key=self._key.reveal(),
                base_url=self.base_url,
                timeout=self.timeout_s,
                max_retries=0,
            )
            pair = (client, asyncio.Semaphore(self.max_concurrency))
            self._per_loop[loop] = pair
        return pair

    async def aclose(self) -> None:
        """Close the connection pool of the running event loop."""
        pair = self._per_loop.pop(asyncio.get_running_loop(), None)
        if pair is not None:
            await pair[0].close()

    def _request(self, messages: Sequence[dict[str, Any]], schema: dict[str, Any]) -> dict:
        kwargs: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if self.max_tokens is not None:
            kwargs[self.features.max_tokens_param] = self.max_tokens
        if self.features.temperature is not False and self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.features.response_format is not False:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        if self.features.logprobs is not False:
            kwargs["logprobs"] = True
            if self.top_logprobs > 0:
                kwargs["top_logprobs"] = self.top_logprobs
        return kwargs

    def _downgrade(self, kwargs: dict[str, Any], message: str) -> bool:
        """After an HTTP 400, stop sending the optional parameter the server rejected."""
        text = message.lower()
        if "max_completion_tokens" in text and "max_tokens" in kwargs:
            self.features.max_tokens_param = "max_completion_tokens"
            self.features.downgrades.append("max_tokens")
            return True
        present = [p for p in _OPTIONAL_PARAMS if p in kwargs]
        named = [p for p in present if p in text or (p == "response_format" and "schema" in text)]
        candidates = named or present[:1]
        if not candidates:
            return False
        param = candidates[0]
        setattr(self.features, param, False)
        self.features.downgrades.append(param)
        return True

    async def complete(
        self, messages: Sequence[dict[str, Any]], *, schema: dict[str, Any]
    ) -> ChatResult:
        """One chat completion, retried on 429 / 5xx / connection errors and timeouts with
        exponential backoff; an ``AgentError`` (its cause chained) when it cannot succeed."""
        import openai

        client, semaphore = self._connection()
        attempt = 0
        downgrades = 0
        while True:
            kwargs = self._request(messages, schema)
            try:
                async with semaphore:
                    response = await client.chat.completions.create(**kwargs)
            except openai.BadRequestError as e:
                if downgrades <= len(_OPTIONAL_PARAMS) and self._downgrade(kwargs, str(e.message)):
                    downgrades += 1
                    continue
                raise AgentError(self.redact(f"request rejected: {describe(e)}")) from e
            except (openai.APIConnectionError, openai.APIStatusError) as e:
                if not _retryable(e) or attempt >= self.max_retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise AgentError(self.redact(f"{describe(e, self.timeout_s)}{tries}")) from e
                await asyncio.sleep(self._backoff(attempt, e))
                attempt += 1
                continue
            except openai.OpenAIError as e:
                raise AgentError(self.redact(describe(e))) from e
            return self._result(response, kwargs, attempt + 1)

    def _backoff(self, attempt: int, error: Exception) -> float:
        retry_after = _retry_after_s(error)
        delay = self.backoff_s * (2**attempt) * (1 + 0.25 * random.random())
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff_s)

    def _result(self, response: Any, kwargs: dict[str, Any], attempts: int) -> ChatResult:
        if not getattr(response, "choices", None):
            raise AgentError("the server returned no choices")
        choice = response.choices[0]
        message = choice.message
        tokens = _token_choices(getattr(choice, "logprobs", None))
        if tokens is not None:
            self.features.logprobs = True
        if "response_format" in kwargs:
            self.features.response_format = True
        usage = getattr(response, "usage", None)
        return ChatResult(
            content=message.content,
            refusal=getattr(message, "refusal", None),
            finish_reason=choice.finish_reason,
            tokens=tokens,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            attempts=attempts,
            structured="response_format" in kwargs,
        )


def _token_choices(logprobs: Any) -> tuple[TokenChoice, ...] | None:
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        return None
    return tuple(
        TokenChoice(
            token=str(item.token),
            logprob=float(item.logprob),
            top=tuple((str(t.token), float(t.logprob)) for t in (item.top_logprobs or [])),
        )
        for item in content
    )


def _retryable(error: Exception) -> bool:
    import openai

    if isinstance(error, openai.APIConnectionError):
        return True
    status = getattr(error, "status_code", None)
    return isinstance(status, int) and (status in _RETRY_STATUS or status >= 500)


def _retry_after_s(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def describe(error: Exception, timeout_s: float | None = None) -> str:
    """One line about an ``openai`` error (no request headers, so no key)."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return f"timed out after {timeout_s:g} s" if timeout_s else "timed out"
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error.__context__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        return f"connection error{detail}"
    if isinstance(error, openai.APIStatusError):
        message = " ".join(str(error.message).split())[:300]
        return f"HTTP {error.status_code}: {message}"
    return f"{type(error).__name__}: {str(error)[:300]}"
