"""The two HTTP paths of the OpenAI-compatible client (``http_client="direct"``, the default,
and ``"openai"``, the package's own) against real servers on 127.0.0.1: the same answers and
the same failures, and what only the direct path does (kept-alive connections shared per
endpoint, a connection the server dropped replaced, no ``openai`` import until a call fails)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import chat_reply, error_reply, huge_reply, openai_server

from agents.openai_compat import ChatError, EndpointLimits, OpenAIChatClient
from agents.openai_compat.direct import DirectTransport, SdkTransport, make_transport
from agents.openai_compat.errors import ReplyTooLargeError
from agents.openai_compat.http1 import ConnectionPools
from core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
VALID = '{"label": "rust", "reason": "orange spots", "confidence": 0.9}'
PATHS = ["direct", "openai"]


def complete_all(client: OpenAIChatClient, n: int = 1, *, at_once: bool = False) -> list:
    messages = [{"role": "user", "content": "hi"}]

    async def go() -> list:
        try:
            if at_once:
                return list(await asyncio.gather(*(client.complete(messages) for _ in range(n))))
            return [await client.complete(messages) for _ in range(n)]
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("http_client", PATHS)
def test_both_paths_send_the_same_request_and_read_the_same_answer(http_client: str) -> None:
    with openai_server([chat_reply(VALID, prompt_tokens=7, completion_tokens=3)]) as server:
        client = OpenAIChatClient(
            model="m", base_url=server.base_url, api_key="sk-x", http_client=http_client
        )
        (result,) = complete_all(client)
    assert result.content == VALID and result.finish_reason == "stop"
    assert (result.prompt_tokens, result.completion_tokens) == (7, 3)
    request = server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-x"
    assert request.headers["accept-encoding"] == "identity"
    assert request.body["model"] == "m" and request.body["messages"][0]["content"] == "hi"
    assert request.body["max_tokens"] == 400 and request.body["logprobs"] is True


@pytest.mark.parametrize("http_client", PATHS)
def test_both_paths_fail_alike(http_client: str) -> None:
    import openai

    replies = [error_reply(503, "busy", headers={"retry-after": "0"}), error_reply(401, "bad key")]
    with openai_server(replies) as server:
        client = OpenAIChatClient(
            model="m",
            base_url=server.base_url,
            api_key="sk-x",
            http_client=http_client,
            backoff_s=0.01,
        )
        with pytest.raises(ChatError) as info:
            complete_all(client)
    assert str(info.value) == "HTTP 401: Error code: 401 - bad key after 2 attempts"
    assert isinstance(info.value.__cause__, openai.AuthenticationError)
    assert info.value.attempts == 2 and len(server.requests) == 2
    assert client.limits.get(server.base_url).state().decreases == 1  # the 503 halved it


@pytest.mark.parametrize("http_client", PATHS)
def test_both_paths_cap_the_reply(http_client: str) -> None:
    with openai_server([huge_reply(3_000_000)]) as server:
        client = OpenAIChatClient(
            model="m",
            base_url=server.base_url,
            api_key="sk-x",
            http_client=http_client,
            max_reply_bytes=1_000_000,
        )
        with pytest.raises(ReplyTooLargeError, match=r"over the 1.0 MB cap"):
            complete_all(client)


def test_an_unreachable_server_is_a_retried_connection_error() -> None:
    client = OpenAIChatClient(
        model="m", base_url="http://127.0.0.1:9/v1", api_key="sk-x", max_retries=1, backoff_s=0.01
    )
    with pytest.raises(ChatError, match=r"^connection error \(ConnectionRefusedError\) after 2"):
        complete_all(client)


def test_calls_in_turn_share_one_kept_alive_connection_per_endpoint() -> None:
    """Clients given one table of endpoints (a run's) share their connections; a client with a
    table of its own keeps its own."""
    with openai_server([VALID]) as server:
        shared = EndpointLimits()
        clients = [
            OpenAIChatClient(model=name, base_url=server.base_url, api_key="sk-x", limits=shared)
            for name in ("a", "b")
        ]
        apart = OpenAIChatClient(model="c", base_url=server.base_url, api_key="sk-x")

        async def go() -> None:
            for _ in range(3):
                for client in clients:
                    await client.complete([{"role": "user", "content": "hi"}])
            await apart.complete([{"role": "user", "content": "hi"}])

        asyncio.run(go())
    assert len(server.requests) == 7
    assert len({r.peer for r in server.requests[:6]}) == 1
    assert server.requests[6].peer != server.requests[0].peer


def test_calls_at_once_each_get_a_connection() -> None:
    with openai_server([chat_reply(VALID, delay_s=0.2)]) as server:
        client = OpenAIChatClient(model="m", base_url=server.base_url, api_key="sk-x")
        results = complete_all(client, 4, at_once=True)  # its endpoint allows 4
    assert [r.content for r in results] == [VALID] * 4
    assert server.max_in_flight == 4 and len({r.peer for r in server.requests}) == 4


def test_a_connection_the_server_dropped_while_idle_is_replaced() -> None:
    body = json.dumps(chat_reply(VALID).body).encode()
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    seen: list[int] = []

    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        # Answers one request, says nothing of closing, then drops the connection.
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        seen.append(writer.get_extra_info("peername")[1])
        writer.write(reply % (len(body), body))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    async def go() -> list:
        server = await asyncio.start_server(once_then_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = OpenAIChatClient(
            model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0
        )
        try:
            first = await client.complete([{"role": "user", "content": "hi"}])
            await asyncio.sleep(0.2)  # the server has closed it by now
            second = await client.complete([{"role": "user", "content": "hi"}])
            return [first, second]
        finally:
            server.close()

    results = asyncio.run(go())
    assert [r.content for r in results] == [VALID, VALID] and len(set(seen)) == 2


def test_a_direct_call_imports_no_openai_package() -> None:
    code = """
import asyncio, sys
sys.path.insert(0, "tests")
from openai_server import openai_server
from agents.openai_compat import OpenAIChatClient
with openai_server(['{"label": "rust"}']) as server:
    client = OpenAIChatClient(model="m", base_url=server.base_url, api_key="sk-x")
    asyncio.run(client.complete([{"role": "user", "content": "hi"}]))
print("openai" in sys.modules, "httpx2" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]


def test_a_proxy_for_the_url_takes_the_openai_packages_path(monkeypatch) -> None:
    options = {"pools": ConnectionPools(), "max_reply_bytes": 1000, "timeout_s": 1.0}
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    direct = make_transport("direct", "http://10.1.2.3:8000/v1", "k", **options)
    assert isinstance(direct, DirectTransport)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    proxied = make_transport("direct", "http://10.1.2.3:8000/v1", "k", **options)
    assert isinstance(proxied, SdkTransport)
    monkeypatch.setenv("NO_PROXY", "10.1.2.3")
    assert isinstance(
        make_transport("direct", "http://10.1.2.3:8000/v1", "k", **options), DirectTransport
    )
    assert isinstance(make_transport("openai", None, "k", **options), SdkTransport)


def test_an_unknown_http_client_is_an_input_error() -> None:
    with pytest.raises(InputError, match="http_client must be one of direct, openai"):
        OpenAIChatClient(model="m", base_url="http://127.0.0.1:1/v1", http_client="curl")


def test_a_url_the_direct_path_cannot_take_goes_to_the_openai_package() -> None:
    options = {"pools": ConnectionPools(), "max_reply_bytes": 1000, "timeout_s": 1.0}
    assert isinstance(make_transport("direct", "ftp://host/v1", "k", **options), SdkTransport)
    assert isinstance(make_transport("direct", None, "k", **options), DirectTransport)
