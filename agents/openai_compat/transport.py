"""The HTTP side of the adapter: how the ``openai`` package's errors are read (which are worth
retrying, how long the server asks to wait, one line that says what happened, without request
headers, so no key), and the cap on how many bytes a reply may have."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from agents.openai_compat.errors import ReplyTooLargeError
from core.redact import redact_text

_RETRY_STATUS = {408, 409, 429}
HTTP_LOGGERS = ("httpx", "httpx2", "openai", "openai._base_client")
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


def retry_after_s(error: Exception) -> float | None:
    """The seconds of the reply's ``Retry-After`` header, if it has one."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


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
                    raise ReplyTooLargeError(
                        f"the reply is over the {_format_bytes(self._limit)} cap "
                        "(max_reply_bytes); not read further"
                    )
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
            raise ReplyTooLargeError(
                f"the server compressed its reply (Content-Encoding: {encoding}) although asked "
                "not to; its size cannot be bounded before decoding"
            )
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > max_bytes:
            await response.aclose()
            raise ReplyTooLargeError(
                f"the reply is {_format_bytes(int(declared))}, over the "
                f"{_format_bytes(max_bytes)} cap (max_reply_bytes); not read"
            )
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
