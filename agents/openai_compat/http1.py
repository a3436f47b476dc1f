"""A small HTTP/1.1 client for one kind of request: a POST with a body, answered by a bounded
body, over keep-alive connections to one origin.

The ``openai`` package's stack (its request builder, httpx2, httpcore2, anyio) costs a few
milliseconds of CPU per call, which at tens of calls in flight is most of a run's CPU; this
costs a tenth of a millisecond. It does what a completion call needs and no more: plain
``http`` or ``https`` (TLS with the CA bundle of ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, else
certifi's, else the system's), ``Content-Length``, chunked and read-to-close bodies, keep-alive
and ``Connection: close``. No proxies, redirects, compression or HTTP/2 (``reaches_directly``
says when a proxy is set for a URL: its caller then takes the ``openai`` package's path).

Failures: ``ConnectTimeout`` / ``ReadTimeout`` (both ``TimeoutError``), ``OSError`` and
``asyncio.IncompleteReadError`` for a connection that failed or closed, ``HttpProtocolError``
for a reply that is not HTTP, and ``ReplyTooLargeError`` for a body over the cap (or a
compressed one), which is not read further.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import urllib.request
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit

from agents.openai_compat.transport import compressed_reply, declared_too_large, over_cap

_HEAD_END = b"\r\n\r\n"
_READ_SIZE = 65536


class ConnectTimeout(TimeoutError):
    """The connection was not opened in time (a full accept queue says the server is over its
    load: ``transport.load_signal``)."""


class ReadTimeout(TimeoutError):
    """The request was sent, its reply did not come in time."""


class HttpProtocolError(Exception):
    """The peer answered with something that is not an HTTP/1.x reply."""


@dataclass(frozen=True)
class HttpReply:
    """A whole reply: status, reason, headers (names in lower case) and body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Origin:
    """Where connections go: scheme, host and port."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {scheme or 'no'} scheme")
        return cls(scheme, parts.hostname, parts.port or (443 if scheme == "https" else 80))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def reaches_directly(url: str) -> bool:
    """Whether ``url`` is reached without a proxy (none set for its scheme, or its host is in
    ``no_proxy``)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme.lower()) or proxies.get("all")):
        return True
    return bool(parts.hostname) and bool(urllib.request.proxy_bypass(parts.hostname or ""))


_TLS: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """One TLS client context per process (loading a CA bundle takes milliseconds)."""
    global _TLS
    if _TLS is None:
        cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
        if not cafile and not capath:
            with contextlib.suppress(ImportError):
                import certifi

                cafile = certifi.where()
        _TLS = ssl.create_default_context(cafile=cafile or None, capath=capath or None)
    return _TLS


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        """Still open at both ends (a server that closed an idle connection shows as EOF)."""
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class ConnectionPool:
    """Keep-alive connections to one origin, for the event loop that made it: a request takes
    the connection used last (or opens one), and hands it back once its reply is read whole.
    How many are open at once is the caller's to bound."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self._idle: list[_Connection] = []

    async def post(
        self,
        target: str,
        headers: bytes,
        body: bytes,
        *,
        timeout_s: float,
        max_reply_bytes: int,
    ) -> HttpReply:
        """POST ``body`` to ``target`` (path and query) with ``headers`` (``Name: value\\r\\n``
        lines, without Host and Content-Length); the whole reply within ``timeout_s``.

        A kept-alive connection that turns out closed before any byte of the reply came (the
        server dropped it while idle) is replaced once by a new one."""
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {self.origin.host_header}\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode("latin-1")
        request = head + headers + b"\r\n" + body
        connecting = False
        try:
            async with asyncio.timeout(timeout_s):
                while self._idle:
                    connection = self._idle.pop()
                    if not connection.usable:
                        connection.close()
                        continue
                    try:
                        return await self._exchange(connection, request, max_reply_bytes)
                    except _StaleConnection:
                        break
                connecting = True
                connection = await self._connect()
                connecting = False
                try:
                    return await self._exchange(connection, request, max_reply_bytes)
                except _StaleConnection as e:
                    raise ConnectionResetError("the server closed the connection") from e.__cause__
        except TimeoutError:
            if connecting:
                raise ConnectTimeout(f"no connection within {timeout_s:g} s") from None
            raise ReadTimeout(f"no reply within {timeout_s:g} s") from None
        except asyncio.LimitOverrunError:
            raise HttpProtocolError("a reply head or chunk line over 64 KiB") from None

    async def _connect(self) -> _Connection:
        origin = self.origin
        tls = tls_context() if origin.scheme == "https" else None
        reader, writer = await asyncio.open_connection(
            origin.host, origin.port, ssl=tls, limit=_READ_SIZE
        )
        return _Connection(reader, writer)

    async def _exchange(
        self, connection: _Connection, request: bytes, max_reply_bytes: int
    ) -> HttpReply:
        """Send ``request`` and read its reply; the connection goes back to the pool when it
        may carry another request, else it is closed."""
        try:
            try:
                connection.writer.write(request)
                await connection.writer.drain()
                head = await connection.reader.readuntil(_HEAD_END)
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                    raise
                raise _StaleConnection() from e
            while True:
                status, reason, headers, version = _parse_head(head)
                if not 100 <= status < 200 or status == 101:
                    break
                head = await connection.reader.readuntil(_HEAD_END)
            if status in (204, 304):  # no body, whatever the headers say
                body, reusable = b"", True
            else:
                body, reusable = await _read_body(connection.reader, headers, max_reply_bytes)
        except BaseException:
            connection.close()
            raise
        if reusable and version == "HTTP/1.1" and connection.usable:
            self._idle.append(connection)
        else:
            connection.close()
        return HttpReply(status, reason, headers, body)

    def close(self) -> None:
        """Close the idle connections (the pool can still be used: it opens new ones)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class _StaleConnection(Exception):
    """A reused connection was closed by the server before it answered."""


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str], str]:
    status_line, *lines = head[: -len(_HEAD_END)].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HttpProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(code), reason, headers, version


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], cap: int
) -> tuple[bytes, bool]:
    """The body and whether the connection may be reused; ``ReplyTooLargeError`` past ``cap``
    bytes (at once when the declared length is over it), and for a compressed body."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise compressed_reply(encoding)
    keep_alive = "close" not in headers.get("connection", "").lower()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, cap), keep_alive
    declared = headers.get("content-length", "").strip()
    if declared:
        if not declared.isdigit():
            raise HttpProtocolError(f"a bad Content-Length: {declared[:40]!r}")
        size = int(declared)
        if size > cap:
            raise declared_too_large(size, cap)
        return await reader.readexactly(size), keep_alive
    parts: list[bytes] = []
    seen = 0
    while chunk := await reader.read(_READ_SIZE):
        seen += len(chunk)
        if seen > cap:
            raise over_cap(cap)
        parts.append(chunk)
    return b"".join(parts), False


async def _read_chunked(reader: asyncio.StreamReader, cap: int) -> bytes:
    parts: list[bytes] = []
    seen = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpProtocolError(f"a bad chunk size: {size_text[:20]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        seen += size
        if seen > cap:
            raise over_cap(cap)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpProtocolError("a chunk without its line break")


class ConnectionPools:
    """One ``ConnectionPool`` per origin and event loop (connections belong to the loop that
    opened them), for the clients given this table to share."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[Origin, ConnectionPool]
        ] = weakref.WeakKeyDictionary()

    def get(self, origin: Origin) -> ConnectionPool:
        """The running event loop's pool to ``origin``."""
        pools = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        pool = pools.get(origin)
        if pool is None:
            pool = pools[origin] = ConnectionPool(origin)
        return pool
