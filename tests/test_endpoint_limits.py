"""One adaptive concurrency limit per OpenAI-compatible endpoint (``agents.openai_compat.limits``):
shared by every client on a server, halved by 429s and grown back by answers, paused by
``Retry-After``; ``trustorch run --endpoint-concurrency`` and what ``-j`` implies by default.

Every server here is the real loopback server of ``openai_server``; times are the server's own
records of when each request came and when its reply went, never how fast a test ran."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from openai_server import RecordedRequest, ScriptedReply, chat_reply, error_reply, openai_server
from PIL import Image

from agents.openai_compat import EndpointLimits, OpenAIChatClient, endpoint_key
from agents.openai_compat.limits import EndpointLimit
from agents.openai_compat.transport import parse_retry_after
from orchestrator.cli import main

ANSWER = '{"label": "rust", "confidence": 0.6, "reason": "spots"}'
HI = [{"role": "user", "content": "hi"}]


def _clients(server_url: str, limits: EndpointLimits, n: int, **kw: object) -> list:
    return [
        OpenAIChatClient(model=f"m{i}", base_url=server_url, limits=limits, backoff_s=0.01, **kw)
        for i in range(n)
    ]


async def _ask_all(clients: list, calls_each: int) -> list:
    try:
        return await asyncio.gather(*(c.complete(HI) for c in clients for _ in range(calls_each)))
    finally:
        for c in clients:
            await c.aclose()


def test_endpoint_keys_are_normalised_and_masked() -> None:
    assert endpoint_key("HTTP://LocalHost:80/v1/") == "http://localhost/v1"
    assert endpoint_key("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert endpoint_key("https://u:pw@api.example.com:443/v1") == "https://***@api.example.com/v1"
    assert endpoint_key(None) == "https://api.openai.com/v1"


def test_an_endpoints_maximum_is_what_its_clients_bring() -> None:
    limits = EndpointLimits(per_client=16)
    first = limits.register("http://h:1/v1")
    assert first.maximum == 16
    assert limits.register("http://h:1/v1/", own_cap=3) is first and first.maximum == 19
    assert limits.register("http://other:1/v1").maximum == 16
    fixed = EndpointLimits(concurrency=5, per_client=16)
    fixed.register("http://h:1/v1")
    assert fixed.register("http://h:1/v1").maximum == 5


def test_two_clients_on_one_endpoint_share_one_limit() -> None:
    limits = EndpointLimits(concurrency=3)
    with openai_server([chat_reply(ANSWER, delay_s=0.2)]) as server:
        results = asyncio.run(_ask_all(_clients(server.base_url, limits, 2), calls_each=5))
    assert len(results) == 10 and len(server.requests) == 10
    assert server.max_in_flight == 3  # not 3 per client
    (state,) = limits.states()
    assert state.peak_in_flight == 3 and state.in_flight == 0


def test_a_clients_own_max_concurrency_caps_it_under_the_endpoint() -> None:
    limits = EndpointLimits(concurrency=8)
    with openai_server([chat_reply(ANSWER, delay_s=0.2)]) as server:
        (client,) = _clients(server.base_url, limits, 1, max_concurrency=2)
        asyncio.run(_ask_all([client], calls_each=6))
    assert server.max_in_flight == 2


def test_429_halves_the_window_once_per_burst_and_answers_grow_it_back() -> None:
    # Requests 9 to 12 (all in flight together at a window of 8) are refused: one signal.
    def reply(request: RecordedRequest) -> ScriptedReply:
        number = len(server.requests)
        if 9 <= number <= 12:
            return error_reply(429, "slow down")
        return chat_reply(ANSWER, delay_s=0.05)

    limits = EndpointLimits(concurrency=8)
    with openai_server(reply) as server:
        clients = _clients(server.base_url, limits, 2, max_retries=3)
        limit = limits.get(server.base_url)
        assert isinstance(limit, EndpointLimit)

        async def run() -> list[int]:
            seen = []

            async def one(c: OpenAIChatClient) -> None:
                await c.complete(HI)
                seen.append(limit.limit)

            try:
                await asyncio.gather(*(one(c) for c in clients for _ in range(60)))
            finally:
                for c in clients:
                    await c.aclose()
            return seen

        seen = asyncio.run(run())
    state = limit.state()
    assert state.decreases == 1  # four 429s of one window: one halving
    assert min(seen) == 4  # halved from 8
    assert seen[-1] == 8 and state.limit == 8  # grown back by the answers after
    assert server.max_in_flight <= 8


def test_retry_after_pauses_the_whole_endpoint() -> None:
    # One call at a time, so no request can cross the 429 on the wire; the third request is
    # refused with Retry-After: 1, and neither client may send anything for that second.
    def reply(request: RecordedRequest) -> ScriptedReply:
        if len(server.requests) == 3:
            return error_reply(429, "slow down", headers={"retry-after": "1"})
        return chat_reply(ANSWER)

    limits = EndpointLimits(concurrency=1)
    with openai_server(reply) as server:
        results = asyncio.run(_ask_all(_clients(server.base_url, limits, 2), calls_each=3))
    assert len(results) == 6 and len(server.requests) == 7
    refused = server.requests[2]
    after = [r.received_at - refused.answered_at for r in server.requests[3:]]
    assert refused.answered_at > 0 and min(after) >= 1.0
    assert limits.states()[0].pauses == 1


def test_a_pause_past_the_deadline_fails_the_other_calls_at_once() -> None:
    limits = EndpointLimits(concurrency=1)
    replies = [error_reply(429, "slow down", headers={"retry-after": "30"})]
    with openai_server(replies) as server:
        first, second = _clients(server.base_url, limits, 2, deadline_s=5.0, max_backoff_s=60.0)

        async def run() -> list:
            try:
                return await asyncio.gather(
                    first.complete(HI), second.complete(HI), return_exceptions=True
                )
            finally:
                await first.aclose()
                await second.aclose()

        errors = asyncio.run(run())
    assert len(server.requests) == 1  # the second never went: the endpoint was paused
    messages = sorted(str(e) for e in errors)
    assert messages[0].startswith("HTTP 429")
    assert "asked for a pause (Retry-After) that ends past this call's 5 s deadline" in messages[1]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0  # 2023-11-14 22:13:20 GMT
    assert parse_retry_after("2.5", now=now) == 2.5
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == 30.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now=now) == 0.0  # past: no wait
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("nan", now=now) is None


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i, 255 - i, (3 * i) % 256)).save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_bad_endpoint_concurrency_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    data = _images(tmp_path / "data", 1)
    out = tmp_path / "o.jsonl"
    code = main(
        ["run", str(data), "-a", "openai:m", "--endpoint-concurrency", value, "-o", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: Invalid value for '--endpoint-concurrency'")
    assert not out.exists()


def _run_two_agents(tmp_path: Path, server_url: str, n: int, *options: str) -> int:
    data = _images(tmp_path / "data", n)
    return main(
        [
            "run",
            str(data),
            *("-a", "a=openai:m", "-a", "b=openai:m"),
            "--agent-option",
            f"base_url={server_url}",
            "--max-rounds",
            "1",
            "-o",
            str(tmp_path / "o.jsonl"),
            *options,
        ]
    )


def test_run_j64_has_more_calls_in_flight_than_the_old_per_agent_cap(tmp_path: Path) -> None:
    with openai_server([chat_reply(ANSWER, delay_s=0.5)]) as server:
        code = _run_two_agents(tmp_path, server.base_url, 64, "-j", "64")
    assert code == 0 and len(server.requests) == 128
    assert server.max_in_flight > 8  # two agents of 4 each was the most before


def test_run_endpoint_concurrency_bounds_both_agents_together(tmp_path: Path) -> None:
    with openai_server([chat_reply(ANSWER, delay_s=0.1)]) as server:
        code = _run_two_agents(
            tmp_path, server.base_url, 12, "-j", "12", "--endpoint-concurrency", "3"
        )
    assert code == 0 and len(server.requests) == 24
    assert server.max_in_flight == 3
