"""``OpenAIChatClient``: the one adapter to OpenAI and OpenAI-compatible servers (vLLM, Ollama,
llama.cpp). It owns retries with backoff (honouring ``Retry-After``) inside one deadline per
call, the concurrency of each server shared with the other clients on it (``limits``), a cap on
reply bytes, what each server accepts (``modes``), the cost of each call (``pricing``) and
keeping the API key and URL credentials out of every message. Callers get a ``ChatResult`` or a
``JsonReply``, or a ``ChatError``.

How overload replies (429, 503) meet the retries and the deadline: such a reply is an attempt
like any other failure, so it counts against ``max_retries``; it also halves the endpoint's
window and, with a ``Retry-After``, pauses the endpoint for every client on it (capped at
``max_backoff_s``, like the retry's own wait). Waiting for a slot or for a pause to end is part
of the call's ``deadline_s``: a call that would only start after its deadline fails at once and
says so, rather than waiting to time out.
"""

from __future__ import annotations

import asyncio
import os
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agents.openai_compat.direct import (
    HTTP_CLIENTS,
    CompletionTransport,
    HttpClientKind,
    make_transport,
)
from agents.openai_compat.errors import ChatError, ReplyFormatError, ReplyTooLargeError
from agents.openai_compat.json_text import extract_json_object
from agents.openai_compat.limits import EndpointLimit, EndpointLimits, PausedPastDeadline
from agents.openai_compat.modes import (
    MODES,
    OPTIONAL_PARAMS,
    ReplySchema,
    ServerFeatures,
    ServerFeatureTable,
    StructuredMode,
)
from agents.openai_compat.pricing import ModelPrice, call_cost_usd, load_price_table
from agents.openai_compat.results import ChatResult, JsonReply, ReplyModel, TokenChoice
from agents.openai_compat.secret import Secret
from agents.openai_compat.transport import (
    DEFAULT_MAX_REPLY_BYTES,
    backoff_s,
    describe,
    is_retryable,
    load_signal,
    redact_http_logs,
)
from core.errors import InputError
from core.redact import redact_text, redact_url, url_secrets

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
_MAX_ADAPTATIONS = len(OPTIONAL_PARAMS) + len(MODES)
DEFAULT_DEADLINE_S = 180.0
"""Seconds one call may take in all: every attempt, every backoff, waiting for a slot."""


@dataclass
class _Attempts:
    """One call's deadline (event-loop time) and the attempts made so far."""

    deadline: float
    made: int = 0
    timeout: float = 0.0
    """The timeout of the attempt made last."""


@dataclass
class _LoopResources:
    transport: CompletionTransport
    slots: asyncio.Semaphore | None
    """This client's own cap (``max_concurrency``), under the endpoint's shared limit."""
    detecting: asyncio.Lock


class OpenAIChatClient:
    """Chat completions of one model. ``api_key`` / ``base_url`` default to ``OPENAI_API_KEY``
    / ``OPENAI_BASE_URL``; a local server (a base URL without a key) gets a placeholder key.

    ``structured_output``, ``logprobs``, ``temperature`` (None: not sent) and ``seed`` (None:
    not sent) are what this caller asks for; what the server accepts is learnt per server and
    model (``features``). ``prices`` (default: the built-in table) gives ``cost_usd``.

    ``deadline_s`` bounds one call as a whole (up to ``max_retries`` retries and their backoff
    included): each attempt waits ``min(timeout_s, time left)``, and a retry whose backoff would
    end past the deadline is not made. ``max_reply_bytes`` bounds a reply's body: a larger one
    is refused unread (``ReplyTooLargeError``, not retried).

    ``limits`` is the table of endpoint limits this client shares with the others given it (a
    run's agents and its ``llm`` policy; None: a table of its own); ``max_concurrency`` caps this
    client's calls under its endpoint's limit (None: the endpoint's limit alone).

    ``http_client`` is how requests go out: ``"direct"`` (HTTP/1.1 straight to the server,
    connections shared per endpoint, a tenth of the CPU per call; the ``openai`` package still
    where a proxy is set) or ``"openai"`` (the ``openai`` package's client, ``direct``)."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        deadline_s: float = DEFAULT_DEADLINE_S,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_concurrency: int | None = None,
        structured_output: bool = True,
        logprobs: bool = True,
        top_logprobs: int = 10,
        temperature: float | None = 0.0,
        max_tokens: int | None = 400,
        seed: int | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        servers: ServerFeatureTable | None = None,
        limits: EndpointLimits | None = None,
        http_client: HttpClientKind = "direct",
    ) -> None:
        if not model:
            raise InputError("an OpenAI-compatible client needs a model name (openai:<model>)")
        if (max_concurrency is not None and max_concurrency < 1) or max_retries < 0:
            raise InputError("max_concurrency must be >= 1 and max_retries >= 0")
        if not (timeout_s > 0 and deadline_s > 0 and max_reply_bytes >= 1):
            raise InputError("timeout_s and deadline_s must be > 0 and max_reply_bytes >= 1")
        if http_client not in HTTP_CLIENTS:
            choices = ", ".join(HTTP_CLIENTS)
            raise InputError(f"http_client must be one of {choices}, got {http_client!r}")
        self.model = model
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        self._url_secrets = url_secrets(self.base_url)
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
        self.deadline_s = deadline_s
        self.max_reply_bytes = max_reply_bytes
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_concurrency = max_concurrency
        self.http_client = http_client
        self.structured_output = structured_output
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.prices = dict(prices) if prices is not None else load_price_table()
        self.servers = servers if servers is not None else ServerFeatureTable()
        self.limits = limits if limits is not None else EndpointLimits()
        self._limit: EndpointLimit = self.limits.register(self.base_url, max_concurrency)
        self._per_loop: weakref.WeakKeyDictionary[Any, _LoopResources] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        shown = redact_url(self.base_url) if self.base_url else None
        return f"OpenAIChatClient(model={self.model!r}, base_url={shown!r})"

    @property
    def features(self) -> ServerFeatures:
        """What this client's server and model were found to accept (shared through
        ``servers`` with the other clients given the same table)."""
        return self.servers.features(self.base_url, self.model)

    def redact(self, text: str) -> str:
        """``text`` without the API key, and without any URL's credentials (the base URL's
        ones also where the text quotes them bare)."""
        return self._key.redact(redact_text(text, self._url_secrets))

    def _resources(self) -> _LoopResources:
        # Connections, a semaphore and a lock belong to one event loop: one set per loop.
        loop = asyncio.get_running_loop()
        resources = self._per_loop.get(loop)
        if resources is None:
            redact_http_logs()
            transport = make_transport(
                self.http_client,
                self.base_url,
                self._key.reveal(),
                pools=self.limits.connections,
                max_reply_bytes=self.max_reply_bytes,
                timeout_s=self.timeout_s,
            )
            own = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
            resources = _LoopResources(transport, own, asyncio.Lock())
            self._per_loop[loop] = resources
        return resources

    async def aclose(self) -> None:
        """Close the connections of the running event loop."""
        resources = self._per_loop.pop(asyncio.get_running_loop(), None)
        if resources is not None:
            await resources.transport.aclose()

    def _mode(self, schema: ReplySchema | None) -> StructuredMode | None:
        if schema is None:
            return None
        return self.features.mode if self.structured_output else "prompt_only"

    def _request(
        self, messages: Sequence[dict[str, Any]], schema: ReplySchema | None
    ) -> tuple[dict[str, Any], StructuredMode | None]:
        features = self.features
        kwargs: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if self.max_tokens is not None:
            kwargs[features.max_tokens_param] = self.max_tokens
        if self.temperature is not None and features.temperature is not False:
            kwargs["temperature"] = self.temperature
        if self.seed is not None and features.seed is not False:
            kwargs["seed"] = self.seed
        mode = self._mode(schema)
        response_format = schema.response_format(mode) if schema and mode else None
        if response_format is not None:
            kwargs["response_format"] = response_format
        if self.logprobs and features.logprobs is not False:
            kwargs["logprobs"] = True
            if self.top_logprobs > 0:
                kwargs["top_logprobs"] = self.top_logprobs
        return kwargs, mode

    async def complete(
        self, messages: Sequence[dict[str, Any]], *, schema: ReplySchema | None = None
    ) -> ChatResult:
        """One chat completion, its reply asked to fit ``schema`` in the best mode the server
        takes. Retried on 429 / 5xx / connection errors and timeouts with exponential backoff,
        all within ``deadline_s``; a ``ChatError`` (its cause chained) when it cannot succeed."""
        resources = self._resources()
        calls = _Attempts(deadline=asyncio.get_running_loop().time() + self.deadline_s)
        try:
            async with asyncio.timeout_at(calls.deadline):
                if (
                    schema is not None
                    and self.structured_output
                    and not self.features.mode_confirmed
                ):
                    # Until a mode is confirmed, one call at a time finds it; the rest then use it.
                    async with resources.detecting:
                        if not self.features.mode_confirmed:
                            return await self._complete(resources, messages, schema, calls)
                return await self._complete(resources, messages, schema, calls)
        except TimeoutError:
            tries = f" ({calls.made} attempts)" if calls.made > 1 else ""
            message = f"timed out: no reply within the call's {self.deadline_s:g} s deadline{tries}"
            raise ChatError(message, attempts=max(calls.made, 1)) from None

    async def complete_json(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        schema: ReplySchema,
        model: type[ReplyModel],
    ) -> JsonReply[ReplyModel]:
        """A completion whose JSON object (found in prose when the server took no schema)
        validates as ``model``; ``ReplyFormatError`` (with the completion) when it does not."""
        result = await self.complete(messages, schema=schema)
        try:
            value = model.model_validate(extract_json_object(result.content))
        except ReplyFormatError as e:
            raise ReplyFormatError(self.redact(str(e)), completion=result) from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "reply"
            message = f"reply does not fit the schema ({where}: {first['msg']})"
            raise ReplyFormatError(message, completion=result) from None
        return JsonReply(value=value, completion=result)

    async def _complete(
        self,
        resources: _LoopResources,
        messages: Sequence[dict[str, Any]],
        schema: ReplySchema | None,
        calls: _Attempts,
    ) -> ChatResult:
        loop = asyncio.get_running_loop()
        attempt = 0
        adaptations = 0
        while True:
            kwargs, mode = self._request(messages, schema)
            calls.timeout = self.timeout_s
            try:
                if resources.slots is None:
                    response = await self._send(resources, kwargs, calls, attempt)
                else:
                    async with resources.slots:
                        response = await self._send(resources, kwargs, calls, attempt)
            except ReplyTooLargeError as e:
                raise ReplyTooLargeError(self.redact(str(e)), attempts=attempt + 1) from None
            except Exception as e:
                # Either transport fails with the openai package's errors (loaded by then).
                openai = sys.modules.get("openai")
                if openai is None or not isinstance(e, openai.OpenAIError):
                    raise
                if not isinstance(e, openai.APIConnectionError | openai.APIStatusError):
                    raise ChatError(self.redact(describe(e)), attempts=attempt + 1) from e
                if isinstance(e.__cause__, ReplyTooLargeError):  # openai 1.x wraps it
                    message = self.redact(str(e.__cause__))
                    raise ReplyTooLargeError(message, attempts=attempt + 1) from None
                status = getattr(e, "status_code", None)
                if (
                    isinstance(status, int)
                    and adaptations < _MAX_ADAPTATIONS
                    and self.features.adapt(kwargs, status, str(e.message))
                ):
                    adaptations += 1
                    continue
                if status in (400, 422):
                    message = f"request rejected: {describe(e)}"
                    raise ChatError(self.redact(message), attempts=attempt + 1) from e
                tries = f" after {attempt + 1} attempts" if attempt else ""
                message = f"{describe(e, round(calls.timeout, 2))}{tries}"
                if not is_retryable(e) or attempt >= self.max_retries:
                    raise ChatError(self.redact(message), attempts=attempt + 1) from e
                delay = backoff_s(attempt, e, base_s=self.backoff_s, max_s=self.max_backoff_s)
                if loop.time() + delay >= calls.deadline:
                    message += f"; no time left to retry within the {self.deadline_s:g} s deadline"
                    raise ChatError(self.redact(message), attempts=attempt + 1) from e
                await asyncio.sleep(delay)
                attempt += 1
                continue
            return self._result(response, mode, attempt + 1)

    async def _send(
        self, resources: _LoopResources, kwargs: dict[str, Any], calls: _Attempts, attempt: int
    ) -> Any:
        """One request, in a slot of the endpoint's limit, telling the limit how it went."""
        loop = asyncio.get_running_loop()
        try:
            slot = await self._limit.acquire(calls.deadline)
        except PausedPastDeadline:
            message = (
                f"the server at {self._limit.endpoint} asked for a pause (Retry-After) that "
                f"ends past this call's {self.deadline_s:g} s deadline"
            )
            raise ChatError(self.redact(message), attempts=max(calls.made, 1)) from None
        try:
            calls.timeout = min(self.timeout_s, max(calls.deadline - loop.time(), 0.01))
            calls.made = attempt + 1
            response = await resources.transport.create(kwargs, calls.timeout)
        except BaseException as e:
            signal = load_signal(e, max_pause_s=self.max_backoff_s)
            slot.release(
                overloaded=signal.overloaded, answered=signal.answered, pause_s=signal.pause_s
            )
            raise
        slot.release()
        return response

    def _result(self, reply: Any, mode: StructuredMode | None, attempts: int) -> ChatResult:
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ChatError("the server returned no choices", attempts=attempts)
        features = self.features
        if mode is not None and self.structured_output and mode == features.mode:
            features.mode_confirmed = True
        choice = choices[0]
        message = _mapping(choice.get("message"))
        usage = _mapping(reply.get("usage"))
        try:
            tokens = _token_choices(choice.get("logprobs"))
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (KeyError, TypeError, ValueError) as e:
            why = f"the server returned a malformed completion ({type(e).__name__}: {e})"
            raise ChatError(self.redact(why[:300]), attempts=attempts) from None
        if tokens is not None:
            features.logprobs = True
        return ChatResult(
            content=_text(message.get("content")),
            refusal=_text(message.get("refusal")),
            finish_reason=_text(choice.get("finish_reason")),
            tokens=tokens,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=call_cost_usd(self.model, prompt_tokens, completion_tokens, self.prices),
            attempts=attempts,
            mode=mode,
        )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _token_choices(logprobs: Any) -> tuple[TokenChoice, ...] | None:
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content:
        return None
    return tuple(
        TokenChoice(
            token=str(item["token"]),
            logprob=float(item["logprob"]),
            top=tuple(
                (str(t["token"]), float(t["logprob"])) for t in item.get("top_logprobs") or []
            ),
        )
        for item in content
    )
