"""A loopback OpenAI-compatible chat server that answers every completion after a fixed delay
and counts the most requests it had in flight at once: the stand-in for a remote model in the
latency benchmarks.

It runs in a process of its own (an asyncio HTTP/1.1 server with keep-alive, a few microseconds
of CPU a request), so that serving takes as little as possible from the process measured.
``GET /stats`` gives ``{"requests", "in_flight", "max_in_flight", "statuses"}``; ``POST /reset``
zeroes them.

Usage:
  python bench/latency_server.py --delay-s 0.2 --port-file /tmp/port   # prints its port too
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

ANSWER = '{"label": "rust", "confidence": 0.62, "reason": "orange pustules on the leaf"}'


def completion_body(content: str = ANSWER) -> bytes:
    """A chat completion holding ``content``, as the bytes of its JSON body."""
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 800, "completion_tokens": 30, "total_tokens": 830},
    }
    return json.dumps(body).encode()


class LatencyServer:
    """Answers ``POST .../chat/completions`` after ``delay_s``; counts what it sees."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.reply = completion_body()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.statuses: Counter[int] = Counter()

    def stats(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "statuses": dict(self.statuses),
        }

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                if length:
                    await reader.readexactly(length)
                status, body = await self.answer(method, path)
                reason = b"OK" if status == 200 else b"Not Found"
                writer.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (status, reason, len(body), body)
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def answer(self, method: str, path: str) -> tuple[int, bytes]:
        if method == "GET" and path == "/stats":
            return 200, json.dumps(self.stats()).encode()
        if method == "POST" and path == "/reset":
            self.reset()
            return 200, b"{}"
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return 404, b'{"error": {"message": "no such route"}}'
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        self.statuses[200] += 1
        return 200, self.reply


async def serve(delay_s: float, port_file: Path | None) -> None:
    server = LatencyServer(delay_s)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=1024)
    port = listener.sockets[0].getsockname()[1]
    if port_file is not None:
        port_file.write_text(str(port))
    print(port, flush=True)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-s", type=float, default=0.2)
    parser.add_argument("--port-file", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(serve(args.delay_s, args.port_file))


if __name__ == "__main__":
    main()
