"""The two ways a chat completion request goes out: straight over HTTP/1.1 (``DirectTransport``,
the default) or through the ``openai`` package (``SdkTransport``). Both take the request body
as JSON values and give the reply's JSON back (None when the body is not JSON), and both fail
with the ``openai`` package's errors, so that the client's retry, overload and error rules
(``client``, ``transport``) are one for both.

The direct path costs about a tenth of the CPU per call: no typed request and response models,
no retry layer of its own, one pool of connections per endpoint shared by every client on it
(``http1``). It never imports ``openai`` until a call fails. It is not taken where a proxy is
set for the URL (``http1.reaches_directly``): the ``openai`` package then handles it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

from agents.openai_compat.errors import ReplyTooLargeError
from agents.openai_compat.http1 import (
    ConnectionPools,
    HttpProtocolError,
    HttpReply,
    Origin,
    reaches_directly,
)
from agents.openai_compat.modes import OPENAI_API_URL
from agents.openai_compat.transport import DIRECT_HTTP_LOGGER, reply_cap_hook

HttpClientKind = Literal["direct", "openai"]
HTTP_CLIENTS: tuple[HttpClientKind, ...] = ("direct", "openai")
_log = logging.getLogger(DIRECT_HTTP_LOGGER)


class CompletionTransport(Protocol):
    """Sends one chat completion request; owned by one event loop."""

    async def create(self, body: dict[str, Any], timeout_s: float) -> Any:
        """The reply's JSON (None when it is not JSON); the ``openai`` package's errors."""
        ...

    async def aclose(self) -> None: ...


class DirectTransport:
    """POST ``{base_url}/chat/completions`` over the running loop's pool to its origin, out of
    ``pools`` (shared with the other clients of a run)."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str,
        *,
        pools: ConnectionPools,
        max_reply_bytes: int,
        timeout_s: float,
    ) -> None:
        self.url = (base_url or OPENAI_API_URL).rstrip("/") + "/chat/completions"
        parts = urlsplit(self.url)
        self.origin = Origin.of(self.url)
        self._pools = pools
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.username or parts.password:
            # What httpx does, under the openai package too: URL credentials are Basic auth.
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        else:
            auth = f"Bearer {api_key}"
        self._headers = (
            f"Authorization: {auth}\r\nContent-Type: application/json\r\n"
            "Accept: application/json\r\nAccept-Encoding: identity\r\n"
            "User-Agent: trustorch\r\n"
        ).encode()
        self.max_reply_bytes = max_reply_bytes
        self.timeout_s = timeout_s

    async def create(self, body: dict[str, Any], timeout_s: float) -> Any:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            reply = await self._pools.get(self.origin).post(
                self.target,
                self._headers,
                data,
                timeout_s=timeout_s,
                max_reply_bytes=self.max_reply_bytes,
            )
        except ReplyTooLargeError:
            raise
        except TimeoutError as e:
            import openai

            raise openai.APITimeoutError(request=_request(self.url)) from e
        except (OSError, asyncio.IncompleteReadError, HttpProtocolError) as e:
            import openai

            raise openai.APIConnectionError(request=_request(self.url)) from e
        if _log.isEnabledFor(logging.INFO):
            _log.info(
                'HTTP Request: POST %s "HTTP/1.1 %d %s"', self.url, reply.status, reply.reason
            )
        if not 200 <= reply.status < 300:
            raise status_error(self.url, reply)
        try:
            return json.loads(reply.body)
        except ValueError:
            return None

    async def aclose(self) -> None:
        self._pools.get(self.origin).close()


def _http_library() -> Any:
    """The HTTP library whose request and response objects the ``openai`` package's errors
    carry: httpx2, or httpx for an older ``openai``."""
    try:
        import httpx2
    except ImportError:
        import httpx

        return httpx
    return httpx2


def _request(url: str) -> Any:
    return _http_library().Request("POST", url)


def status_error(url: str, reply: HttpReply) -> Exception:
    """The ``openai`` package's error for a reply of status ``reply.status``, as its client
    makes it: its class by status, ``Error code: N - <the error's message>``, the body."""
    import openai

    library = _http_library()
    response = library.Response(
        reply.status,
        headers=list(reply.headers.items()),
        content=reply.body,
        request=library.Request("POST", url),
    )
    text = reply.body.decode("utf-8", "replace").strip()
    message = f"Error code: {reply.status}"
    body: Any = text
    try:
        body = json.loads(text)
    except ValueError:
        pass
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        said = error.get("message") if isinstance(error, dict) else None
        if isinstance(said, str) and said:
            message += f" - {said}"
    data = body.get("error", body) if isinstance(body, dict) else body
    by_status: dict[int, type[openai.APIStatusError]] = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        403: openai.PermissionDeniedError,
        404: openai.NotFoundError,
        409: openai.ConflictError,
        422: openai.UnprocessableEntityError,
        429: openai.RateLimitError,
    }
    kind = by_status.get(reply.status)
    if kind is None:
        kind = openai.InternalServerError if reply.status >= 500 else openai.APIStatusError
    return kind(message, response=response, body=data)


class SdkTransport:
    """The ``openai`` package's ``AsyncOpenAI`` (proxies, HTTP/2 and whatever else it does)."""

    def __init__(
        self, base_url: str | None, api_key: str, *, max_reply_bytes: int, timeout_s: float
    ) -> None:
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        http_client = DefaultAsyncHttpxClient(
            timeout=timeout_s,
            # Only an uncompressed body can be bounded before it is decoded.
            headers={"accept-encoding": "identity"},
            event_hooks={"response": [reply_cap_hook(max_reply_bytes)]},
        )
        self._client = AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,  # retries are the adapter's, inside its deadline
            http_client=http_client,
        )

    async def create(self, body: dict[str, Any], timeout_s: float) -> Any:
        fields = dict(body)
        # The body is plain JSON already: as extra_body it skips the SDK's walk over its
        # typed parameters, which cost more CPU per call than all the rest of the call.
        response = await self._client.chat.completions.create(
            model=fields.pop("model"), messages=[], extra_body=fields, timeout=timeout_s
        )
        to_dict = getattr(response, "to_dict", None)
        return to_dict() if to_dict is not None else None

    async def aclose(self) -> None:
        await self._client.close()


def make_transport(
    kind: HttpClientKind,
    base_url: str | None,
    api_key: str,
    *,
    pools: ConnectionPools,
    max_reply_bytes: int,
    timeout_s: float,
) -> CompletionTransport:
    """``kind``'s transport (``pools``: the direct one's connections); the ``openai``
    package's where a proxy is set for the URL, or where it is no http(s) URL with a host (the
    package then says what is wrong with it)."""
    options = {"max_reply_bytes": max_reply_bytes, "timeout_s": timeout_s}
    if kind == "direct" and reaches_directly(base_url or OPENAI_API_URL):
        try:
            return DirectTransport(base_url, api_key, pools=pools, **options)
        except ValueError:
            pass
    return SdkTransport(base_url, api_key, **options)
