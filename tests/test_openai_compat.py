"""The one OpenAI-compatible adapter shared by the VLM agent and the ``llm`` policy: structured
output modes learnt once per server and model, retries honouring Retry-After, prices from one
table. A real scripted HTTP server on 127.0.0.1 (tests/openai_server.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from openai_server import RecordedRequest, ScriptedReply, chat_reply, error_reply, openai_server
from PIL import Image
from test_agents_openai import VALID, run

from agents.openai_agent import OpenAIAgent
from agents.openai_compat import OpenAIChatClient, ReplySchema, ServerFeatureTable
from agents.types import Prediction
from core.images import ImageRef
from core.task import Task
from orchestrator.components import LlmSettings, build_policy
from orchestrator.policies.llm import orchestrator_client

REPLY = '{"category": "scab", "confidence": 0.8, "reason": "olive spots"}'
SCHEMA = ReplySchema(name="r", schema={"type": "object"}, bounded={"type": "object", "x": 1})


@pytest.fixture
def leaf(tmp_path: Path) -> ImageRef:
    path = tmp_path / "leaf.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(path)
    return ImageRef.from_path(path)


def llama_cpp_like(request: RecordedRequest) -> ScriptedReply:
    """Like llama.cpp's server: HTTP 500 naming response_format for json_schema."""
    kind = (request.body.get("response_format") or {}).get("type")
    if kind == "json_schema":
        return error_reply(500, "response_format type json_schema is not supported")
    return chat_reply(VALID if "logprobs" in request.body else REPLY)


def formats(requests: list[RecordedRequest]) -> list[str | None]:
    return [(r.body.get("response_format") or {}).get("type") for r in requests]


def test_the_mode_learnt_by_the_agent_is_used_by_the_policy(
    leaf: ImageRef, apple_task: Task
) -> None:
    servers = ServerFeatureTable()
    with openai_server(llama_cpp_like) as server:
        agent = OpenAIAgent(
            OpenAIChatClient(
                model="local", base_url=server.base_url, backoff_s=0.01, servers=servers
            )
        )
        pred = run(agent, leaf, apple_task)
        policy = build_policy(
            "llm",
            task=apple_task,
            profiles={},
            llm=LlmSettings(model="local", base_url=server.base_url),
            servers=servers,
        )
        got = asyncio.run(
            policy.assess(
                task=apple_task,
                predictions=[pred],
                evidence=None,
                round=1,
                max_rounds=2,
            )
        )
    assert pred.label == "rust" and got.label == "scab"
    assert formats(server.requests) == ["json_schema", "json_object", "json_object"]
    assert server.requests[2].body["response_format"]["schema"]["properties"]["reason"] == {
        "type": "string",
        "maxLength": 400,
    }
    assert "(json_object_schema)" in got.reason
    assert policy.client.features is agent.client.features
    assert agent.client.features.downgrades == ["json_schema"]


def test_concurrent_first_calls_detect_the_mode_once() -> None:
    async def many(client: OpenAIChatClient) -> list[str | None]:
        try:
            calls = (
                client.complete([{"role": "user", "content": "hi"}], schema=SCHEMA)
                for _ in range(5)
            )
            return [r.mode for r in await asyncio.gather(*calls)]
        finally:
            await client.aclose()

    with openai_server(llama_cpp_like) as server:
        client = OpenAIChatClient(model="m", base_url=server.base_url, logprobs=False)
        modes = asyncio.run(many(client))
    assert modes == ["json_object_schema"] * 5
    assert formats(server.requests) == ["json_schema"] + ["json_object"] * 5
    assert server.requests[1].body["response_format"]["schema"] == SCHEMA.bounded


def test_a_caller_without_structured_output_leaves_the_server_features_alone() -> None:
    async def once(client: OpenAIChatClient) -> str | None:
        try:
            return (await client.complete([{"role": "user", "content": "hi"}], schema=SCHEMA)).mode
        finally:
            await client.aclose()

    with openai_server([REPLY]) as server:
        client = OpenAIChatClient(model="m", base_url=server.base_url, structured_output=False)
        assert asyncio.run(once(client)) == "prompt_only"
    assert "response_format" not in server.requests[0].body
    assert client.features.mode == "json_schema" and not client.features.mode_confirmed


def test_retry_after_is_honoured() -> None:
    async def once(client: OpenAIChatClient) -> int:
        try:
            return (await client.complete([{"role": "user", "content": "hi"}])).attempts
        finally:
            await client.aclose()

    replies = [error_reply(429, "slow down", headers={"retry-after": "0.5"}), chat_reply(REPLY)]
    with openai_server(replies) as server:
        client = OpenAIChatClient(model="m", base_url=server.base_url, backoff_s=0.01)
        start = time.perf_counter()
        attempts = asyncio.run(once(client))
        elapsed = time.perf_counter() - start
    assert attempts == 2 and len(server.requests) == 2
    assert elapsed >= 0.5


def test_the_policy_is_priced_from_the_price_table(tmp_path: Path, apple_task: Task) -> None:
    preds = [Prediction(agent="gpt", label="scab", confidence=0.7)]
    prices = tmp_path / "prices.json"
    prices.write_text('{"orchestrator": {"input": 2.0, "output": 8.0}}')
    with openai_server([chat_reply(REPLY, prompt_tokens=500, completion_tokens=20)]) as server:
        settings = LlmSettings(
            model="orchestrator", base_url=server.base_url, price_file=str(prices)
        )
        policy = build_policy("llm", task=apple_task, profiles={}, llm=settings)
        got = asyncio.run(
            policy.assess(task=apple_task, predictions=preds, evidence=None, round=0, max_rounds=1)
        )
        default = orchestrator_client(model="gpt-4o-mini", base_url=server.base_url)
    assert got.label == "scab"
    assert got.cost_usd == pytest.approx((500 * 2.0 + 20 * 8.0) / 1e6)
    assert server.requests[0].body["seed"] == 0 and "logprobs" not in server.requests[0].body
    assert default.prices["gpt-4o-mini"].input == pytest.approx(0.15)


def test_clients_share_what_they_learn_only_through_a_table_they_are_given() -> None:
    servers = ServerFeatureTable()
    one = OpenAIChatClient(model="m", base_url="http://127.0.0.1:9/v1", servers=servers)
    two = OpenAIChatClient(model="m", base_url="http://127.0.0.1:9/v1/", servers=servers)
    other_model = OpenAIChatClient(model="n", base_url="http://127.0.0.1:9/v1", servers=servers)
    alone = OpenAIChatClient(model="m", base_url="http://127.0.0.1:9/v1")
    one.features.drop_mode()
    assert two.features is one.features and two.features.mode != "json_schema"
    assert other_model.features.mode == "json_schema"
    assert alone.features is not one.features and alone.features.mode == "json_schema"
