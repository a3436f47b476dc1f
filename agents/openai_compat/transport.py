"""The HTTP side of the adapter: how the ``openai`` package's errors are read (which are worth
retrying, how long the server asks to wait, what they say about the server's load, one line
that says what happened, without request headers, so no key), and the cap on how many bytes a
reply may have."""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agents.openai_compat.errors import ReplyTooLargeError
from core.redact import redact_text

OVERLOAD_STATUS = frozenset({429, 503})
"""The statuses that say the server is over its load (see ``limits``)."""

_RETRY_STATUS = {408, 409, 429}
DIRECT_HTTP_LOGGER = "agents.openai_compat.http"
"""The direct path's logger (``direct``): one INFO line per request, as httpx writes it."""
HTTP_LOGGERS = ("httpx", "httpx2", "openai", "openai._base_client", DIRECT_HTTP_LOGGER)
"""The loggers of the HTTP stack: httpx logs every request's URL (credentials included) at
INFO."""
DEFAULT_MAX_REPLY_BYTES = 8_000_000
"""The largest reply body read: a completion with top-10 log-probabilities of 400 tokens is
about 0.3 MB; anything near this is a runaway server, not an answer."""


def is_retryable(error: Exception) -> bool:
    """A connection error, a timeout, 408 / 409 / 429 or a 5xx."""
    import openai

    if isinstance(error, openai.APIConnectionError):
        return True
    status = getattr(error, "status_code", None)
    return isinstance(status, int) and (status in _RETRY_STATUS or status >= 500)


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` value asks for: a number of seconds, or an HTTP date
    (seconds from ``now``, Unix time, default the clock); None when it is neither. Never
    negative."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT even when it does not say so
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def retry_after_s(error: Exception) -> float | None:
    """The seconds the reply's ``Retry-After`` (or OpenAI's ``retry-after-ms``) asks to wait,
    if it says."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    millis = response.headers.get("retry-after-ms")
    if millis is not None:
        asked = parse_retry_after(millis)
        if asked is not None:
            return asked / 1000
    value = response.headers.get("retry-after")
    return parse_retry_after(value) if value is not None else None


@dataclass(frozen=True)
class LoadSignal:
    """What a failed request says about the endpoint's load: ``overloaded`` (429, 503, or a
    connection not opened in time), for how long the server asked to pause (``pause_s``), and
    whether it ``answered`` at all."""

    overloaded: bool = False
    answered: bool = False
    pause_s: float | None = None


def load_signal(error: BaseException, *, max_pause_s: float) -> LoadSignal:
    """How the endpoint's concurrency limit should read ``error`` (see ``limits``)."""
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and isinstance(error, Exception):
        if status not in OVERLOAD_STATUS:
            return LoadSignal(answered=True)
        asked = retry_after_s(error)
        pause = min(asked, max_pause_s) if asked is not None else None
        return LoadSignal(overloaded=True, answered=True, pause_s=pause)
    cause = error.__cause__ or error.__context__
    if cause is not None and type(cause).__name__ == "ConnectTimeout":
        return LoadSignal(overloaded=True)
    if isinstance(error, ReplyTooLargeError):
        return LoadSignal(answered=True)
    return LoadSignal()


def backoff_s(attempt: int, error: Exception, *, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter, at least the server's ``Retry-After``, at most
    ``max_s``."""
    delay = base_s * (2**attempt) * (1 + 0.25 * random.random())
    asked = retry_after_s(error)
    if asked is not None:
        delay = max(delay, asked)
    return min(delay, max_s)


def describe(error: Exception, timeout_s: float | None = None) -> str:
    """One line about an ``openai`` error."""
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


def _format_bytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size:,} bytes"


def compressed_reply(encoding: str) -> ReplyTooLargeError:
    return ReplyTooLargeError(
        f"the server compressed its reply (Content-Encoding: {encoding}) although asked "
        "not to; its size cannot be bounded before decoding"
    )


def declared_too_large(size: int, max_bytes: int) -> ReplyTooLargeError:
    return ReplyTooLargeError(
        f"the reply is {_format_bytes(size)}, over the {_format_bytes(max_bytes)} cap "
        "(max_reply_bytes); not read"
    )


def over_cap(max_bytes: int) -> ReplyTooLargeError:
    return ReplyTooLargeError(
        f"the reply is over the {_format_bytes(max_bytes)} cap (max_reply_bytes); not read further"
    )


def _counting_stream_class(byte_stream_base: type) -> type:
    """A byte stream (of the HTTP library whose base class is given) that raises
    ``ReplyTooLargeError`` once more than ``limit`` bytes have come through it."""

    class CappedStream(byte_stream_base):  # type: ignore[misc, valid-type]
        def __init__(self, inner: Any, limit: int) -> None:
            self._inner = inner
            self._limit = limit

        async def __aiter__(self) -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in self._inner:
                seen += len(chunk)
                if seen > self._limit:
                    raise over_cap(self._limit)
                yield chunk

        async def aclose(self) -> None:
            await self._inner.aclose()

    return CappedStream


_CAPPED_STREAMS: dict[type, type] = {}


def reply_cap_hook(max_bytes: int) -> Callable[[Any], Awaitable[None]]:
    """An httpx response hook (it runs once the headers are in, before the body is read) that
    refuses a body over ``max_bytes``: at once when its ``Content-Length`` says so, else while
    it streams in. A compressed body is refused too: the client asks for ``identity``, and
    only the decoded size would count (a small gzip body can decode to gigabytes)."""

    async def cap(response: Any) -> None:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            await response.aclose()
            raise compressed_reply(encoding)
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > max_bytes:
            await response.aclose()
            raise declared_too_large(int(declared), max_bytes)
        # httpx or httpx2 (whichever the openai package drives): its own stream base class.
        base = sys.modules[type(response).__module__.partition(".")[0]].AsyncByteStream
        stream_class = _CAPPED_STREAMS.get(base)
        if stream_class is None:
            stream_class = _CAPPED_STREAMS.setdefault(base, _counting_stream_class(base))
        response.stream = stream_class(response.stream, max_bytes)

    return cap


class RedactingLogFilter(logging.Filter):
    """Masks URL credentials in every record it sees (the message as formatted)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_LOG_FILTER = RedactingLogFilter()


def redact_http_logs() -> None:
    """Put the redacting filter on the HTTP stack's loggers (once)."""
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)
