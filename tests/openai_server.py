"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, with scripted replies.

    with openai_server([chat_reply('{"label": "rust", ...}'), error_reply(429)]) as server:
        client = OpenAIChatClient(model="m", base_url=server.base_url, api_key="sk-test")
        ...
        server.requests[0].body["messages"]

Replies are served in order and the last one repeats once the list runs out; a callable
``reply(request) -> ScriptedReply`` decides per request instead. Every request is recorded
(path, lower-case headers, JSON body); ``max_in_flight`` is the most requests served at once.

Hostile servers: ``delay_s`` stalls a reply (``stall_reply``); ``huge_reply`` streams a valid
completion of any size, chunked or with its Content-Length, without holding it in memory;
``error_reply(429, headers={"retry-after": "1"})`` asks the client to slow down.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ScriptedReply:
    """What the server answers to one request: status, JSON (or raw text) body, a delay."""

    status: int = 200
    body: Any = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: Callable[[], Iterator[bytes]] | None = None
    """Instead of ``body``: the body's pieces, sent as they come (chunked transfer encoding
    unless ``headers`` gives a content-length)."""


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float = 0.0
    """``time.monotonic()`` when the request was read."""
    answered_at: float = 0.0
    """``time.monotonic()`` once its reply was sent (0.0: never)."""
    peer: tuple[str, int] = ("", 0)
    """The client's address and port: requests on one kept-alive connection share it."""


def chat_reply(
    content: str | None,
    *,
    logprobs: list[dict[str, Any]] | None = None,
    refusal: str | None = None,
    prompt_tokens: int = 1000,
    completion_tokens: int = 50,
    finish_reason: str = "stop",
    model: str = "test-model",
    delay_s: float = 0.0,
) -> ScriptedReply:
    """A 200 chat completion with ``content`` (and token log-probabilities when given)."""
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": finish_reason,
        "message": {"role": "assistant", "content": content, "refusal": refusal},
        "logprobs": {"content": logprobs, "refusal": None} if logprobs is not None else None,
    }
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return ScriptedReply(status=200, body=body, delay_s=delay_s)


def error_reply(
    status: int, message: str = "scripted error", *, headers: dict[str, str] | None = None
) -> ScriptedReply:
    """An OpenAI-style error body with ``status``."""
    body = {"error": {"message": message, "type": "scripted", "code": status}}
    return ScriptedReply(status=status, body=body, headers=dict(headers or {}))


def stall_reply(seconds: float = 3600.0) -> ScriptedReply:
    """A reply that does not come for ``seconds`` (the server gives up waiting when stopped)."""
    return chat_reply('{"label": "rust", "confidence": 0.5, "reason": "late"}', delay_s=seconds)


def huge_reply(
    content_bytes: int, *, chunked: bool = True, piece_bytes: int = 1 << 16
) -> ScriptedReply:
    """A 200 chat completion whose content is ``content_bytes`` of ``x``, streamed in pieces
    (chunked, or with a correct Content-Length when ``chunked`` is false)."""
    head = json.dumps(chat_reply("@@").body).encode()
    prefix, suffix = head.split(b"@@")
    headers = {} if chunked else {"content-length": str(len(prefix) + content_bytes + len(suffix))}

    def pieces() -> Iterator[bytes]:
        yield prefix
        left = content_bytes
        while left > 0:
            n = min(piece_bytes, left)
            yield b"x" * n
            left -= n
        yield suffix

    return ScriptedReply(status=200, headers=headers, chunks=pieces)


def split_tokens(text: str) -> list[str]:
    """A crude tokenisation (words, punctuation runs, spaces) that joins back to ``text``."""
    return re.findall(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]+|\s+", text)


def token_logprobs(
    content: str, alternatives: dict[str, dict[str, float]] | None = None
) -> list[dict[str, Any]]:
    """OpenAI ``logprobs.content`` entries for ``content``: every token has probability 1
    except where ``alternatives[token]`` gives ``{token: probability}`` at its first use; the
    chosen token is the key, and ``top_logprobs`` lists every alternative."""
    import math

    alternatives = dict(alternatives or {})
    out: list[dict[str, Any]] = []
    for token in split_tokens(content):
        alts = alternatives.pop(token, None)
        if alts is None:
            out.append({"token": token, "logprob": 0.0, "bytes": None, "top_logprobs": []})
            continue
        top = [
            {"token": t, "logprob": math.log(p), "bytes": None}
            for t, p in sorted(alts.items(), key=lambda kv: -kv[1])
        ]
        out.append(
            {"token": token, "logprob": math.log(alts[token]), "bytes": None, "top_logprobs": top}
        )
    return out


class OpenAIServer:
    """The server; use ``openai_server(...)`` or ``with OpenAIServer(...) as server``."""

    def __init__(
        self, replies: Sequence[ScriptedReply | str] | Callable[[RecordedRequest], ScriptedReply]
    ) -> None:
        self._script = replies if callable(replies) else [_as_reply(r) for r in replies]
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def _next_reply(self, request: RecordedRequest) -> ScriptedReply:
        if callable(self._script):
            return _as_reply(self._script(request))
        with self._lock:
            index = min(len(self.requests) - 1, len(self._script) - 1)
        return self._script[index]

    def start(self) -> OpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"null")
                except json.JSONDecodeError:
                    body = raw.decode("utf-8", "replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = RecordedRequest(
                    self.path, headers, body, time.monotonic(), peer=self.client_address[:2]
                )
                with server._lock:
                    server.requests.append(request)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if not self.path.rstrip("/").endswith("/chat/completions"):
                        reply = error_reply(404, f"no route {self.path}")
                    else:
                        reply = server._next_reply(request)
                    if reply.delay_s and server._stopping.wait(reply.delay_s):
                        return
                    self._send(reply)
                    request.answered_at = time.monotonic()
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, reply: ScriptedReply) -> None:
                if reply.chunks is not None:
                    self._send_pieces(reply)
                    return
                if isinstance(reply.body, str | bytes):
                    data = reply.body.encode() if isinstance(reply.body, str) else reply.body
                    ctype = "text/plain"
                else:
                    data, ctype = json.dumps(reply.body).encode(), "application/json"
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send_pieces(self, reply: ScriptedReply) -> None:
                assert reply.chunks is not None
                chunked = "content-length" not in {k.lower() for k in reply.headers}
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    if chunked:
                        self.send_header("transfer-encoding", "chunked")
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    for piece in reply.chunks():
                        if server._stopping.is_set():
                            return
                        if chunked:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        else:
                            self.wfile.write(piece)
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _as_reply(reply: ScriptedReply | str) -> ScriptedReply:
    return chat_reply(reply) if isinstance(reply, str) else reply


@contextmanager
def openai_server(
    replies: Sequence[ScriptedReply | str] | Callable[[RecordedRequest], ScriptedReply],
) -> Iterator[OpenAIServer]:
    """Start a scripted server on a free port of 127.0.0.1; stop it on exit."""
    server = OpenAIServer(replies).start()
    try:
        yield server
    finally:
        server.stop()
