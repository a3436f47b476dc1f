"""How the ``openai`` package's errors are read: which are worth retrying, how long the server
asks to wait, and one line that says what happened (without request headers, so no key)."""

from __future__ import annotations

import random

_RETRY_STATUS = {408, 409, 429}


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
