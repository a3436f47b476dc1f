"""The OpenAI-compatible agent through the real ``openai`` client against a real scripted HTTP
server on 127.0.0.1 (tests/openai_server.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from pathlib import Path

import pytest
from openai_server import (
    RecordedRequest,
    chat_reply,
    error_reply,
    openai_server,
    token_logprobs,
)
from PIL import Image

from agents.errors import AgentError
from agents.openai_agent import OpenAIAgent
from agents.openai_compat import (
    ModelPrice,
    OpenAIChatClient,
    TokenChoice,
    call_cost_usd,
    extract_json_object,
    load_price_table,
    price_for,
)
from agents.reply_parsing import label_distribution, parse_answer
from agents.types import Neighbour, Prediction
from core.errors import InputError
from core.images import ImageRef
from core.task import Task
from rag.evidence import Evidence

KEY = "sk-test-secret-0123456789"
VALID = '{"label": "rust", "reason": "orange spots with red borders", "confidence": 0.95}'


@pytest.fixture
def leaf(tmp_path: Path) -> ImageRef:
    path = tmp_path / "leaf.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(path)
    return ImageRef.from_path(path)


def make_agent(server, *, model: str = "gpt-4o", **client_options) -> OpenAIAgent:
    options = {"timeout_s": 5.0, "max_retries": 2, "backoff_s": 0.01, **client_options}
    client = OpenAIChatClient(model=model, base_url=server.base_url, api_key=KEY, **options)
    return OpenAIAgent(client)


def run(agent: OpenAIAgent, image: ImageRef, task: Task, **kwargs) -> Prediction:
    async def go() -> Prediction:
        try:
            return await agent.predict(image, task, **kwargs)
        finally:
            await agent.client.aclose()

    return asyncio.run(go())


def assert_no_key(*things: object) -> None:
    for thing in things:
        assert KEY not in repr(thing)
        assert KEY not in str(thing)


def test_valid_structured_output(leaf: ImageRef, apple_task: Task) -> None:
    with openai_server([VALID]) as server:
        agent = make_agent(server)
        pred = run(agent, leaf, apple_task)
    assert pred.ok and pred.label == "rust" and pred.error is None
    assert pred.confidence == pytest.approx(0.95)
    assert pred.reported_confidence == pytest.approx(0.95)
    assert pred.scores is None
    assert pred.reason == "orange spots with red borders"
    assert pred.cost_usd == pytest.approx((1000 * 2.50 + 50 * 10.00) / 1e6)
    assert pred.latency_s > 0
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = request.body
    assert body["model"] == "gpt-4o"
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == list(apple_task.labels)
    assert list(schema["properties"]) == ["label", "reason", "confidence"]
    assert body["logprobs"] is True and body["top_logprobs"] == 10
    text, image = body["messages"][0]["content"]
    assert "black-rot, healthy, rust, scab" in text["text"]
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == Path(leaf.source).read_bytes()


def test_fenced_json_in_prose_and_label_spelling(leaf: ImageRef, apple_task: Task) -> None:
    answer = (
        "Looking at the leaf, I see concentric rings.\n```json\n"
        '{"label": "Black Rot", "reason": "frog-eye lesions", "confidence": "80%"}\n```\nDone.'
    )
    with openai_server([answer]) as server:
        pred = run(make_agent(server), leaf, apple_task)
    assert pred.label == "black-rot"
    assert pred.confidence == pytest.approx(0.8)
    assert pred.reason == "frog-eye lesions"


def test_server_without_structured_output_gets_the_prose_fallback(
    leaf: ImageRef, apple_task: Task
) -> None:
    replies = [
        error_reply(400, "response_format json_schema is not supported"),
        error_reply(400, "response_format json_object is not supported"),
        'My answer: {"category": "SCAB", "reason": "velvety olive spots", "confidence": 0.7}',
    ]
    with openai_server(replies) as server:
        agent = make_agent(server)
        pred = run(agent, leaf, apple_task)
    assert pred.label == "scab" and pred.confidence == pytest.approx(0.7)
    formats = [r.body.get("response_format", {}).get("type") for r in server.requests]
    assert formats == ["json_schema", "json_object", None]
    assert "logprobs" in server.requests[2].body
    assert agent.client.features.mode == "prompt_only"
    assert agent.client.features.downgrades == ["json_schema", "json_object_schema"]


def test_server_rejecting_logprobs_is_asked_without_them(leaf: ImageRef, apple_task: Task) -> None:
    replies = [error_reply(400, "logprobs are not supported by this model"), VALID]
    with openai_server(replies) as server:
        agent = make_agent(server)
        pred = run(agent, leaf, apple_task)
    assert pred.label == "rust"
    assert "logprobs" not in server.requests[1].body
    assert "response_format" in server.requests[1].body


def test_label_outside_the_set_is_a_failed_prediction(leaf: ImageRef, apple_task: Task) -> None:
    answer = '{"label": "powdery mildew", "reason": "white dust", "confidence": 0.9}'
    with openai_server([answer]) as server:
        pred = run(make_agent(server), leaf, apple_task)
    assert pred.label is None and not pred.ok
    assert "powdery mildew" in pred.error and "not one of the task's labels" in pred.error
    assert pred.cost_usd > 0


def test_invalid_json_is_a_failed_prediction(leaf: ImageRef, apple_task: Task) -> None:
    with openai_server(['{"label": "rust", "reason": "spots", confidence: high']) as server:
        pred = run(make_agent(server), leaf, apple_task)
    assert pred.label is None
    assert pred.error.startswith("invalid JSON in the answer")


def test_refusal_is_a_failed_prediction(leaf: ImageRef, apple_task: Task) -> None:
    with openai_server([chat_reply(None, refusal="I can't help with that.")]) as server:
        pred = run(make_agent(server), leaf, apple_task)
    assert pred.label is None and "refused" in pred.error


def test_429_then_success_is_retried(leaf: ImageRef, apple_task: Task) -> None:
    replies = [error_reply(429, "rate limited", headers={"retry-after": "0"}), VALID]
    with openai_server(replies) as server:
        pred = run(make_agent(server), leaf, apple_task)
    assert pred.label == "rust"
    assert len(server.requests) == 2


def test_500_every_time_fails_after_the_retries(leaf: ImageRef, apple_task: Task) -> None:
    with openai_server([error_reply(500, "upstream exploded")]) as server:
        pred = run(make_agent(server, max_retries=2), leaf, apple_task)
    assert pred.label is None
    assert "HTTP 500" in pred.error and "upstream exploded" in pred.error
    assert "after 3 attempts" in pred.error
    assert len(server.requests) == 3


def test_adapter_raises_agent_error_chained_to_the_openai_error(apple_task: Task) -> None:
    import openai

    from agents.reply_parsing import answer_schema

    async def go(client: OpenAIChatClient) -> None:
        try:
            await client.complete(
                [{"role": "user", "content": "hi"}], schema=answer_schema(apple_task)
            )
        finally:
            await client.aclose()

    with openai_server([error_reply(503, "busy")]) as server:
        client = OpenAIChatClient(
            model="m", base_url=server.base_url, api_key=KEY, max_retries=1, backoff_s=0.01
        )
        with pytest.raises(AgentError) as info:
            asyncio.run(go(client))
    assert isinstance(info.value.__cause__, openai.InternalServerError)
    assert len(server.requests) == 2


def test_a_reply_slower_than_the_timeout(leaf: ImageRef, apple_task: Task) -> None:
    with openai_server([chat_reply(VALID, delay_s=3.0)]) as server:
        agent = make_agent(server, timeout_s=0.3, max_retries=1)
        start = time.perf_counter()
        pred = run(agent, leaf, apple_task)
        elapsed = time.perf_counter() - start
    assert pred.label is None
    assert "timed out after 0.3 s" in pred.error
    assert len(server.requests) == 2
    assert elapsed < 2.5


def test_logprobs_give_the_label_distribution(leaf: ImageRef, apple_task: Task) -> None:
    alternatives = {"rust": {"rust": 0.6, "scab": 0.25, "healthy": 0.1, "black": 0.04, "{": 0.01}}
    reply = chat_reply(VALID, logprobs=token_logprobs(VALID, alternatives))
    with openai_server([reply]) as server:
        agent = make_agent(server)
        pred = run(agent, leaf, apple_task)
    assert pred.label == "rust"
    assert pred.scores is not None
    assert sum(pred.scores.values()) == pytest.approx(1.0)
    # every label was observed: the answer keeps its 0.6, the 0.01 on '{' goes to the others
    expected = {"rust": 0.6, "scab": 0.25 + 0.01 / 3, "healthy": 0.1 + 0.01 / 3}
    for label, p in {**expected, "black-rot": 0.04 + 0.01 / 3}.items():
        assert pred.scores[label] == pytest.approx(p)
    assert pred.confidence == pytest.approx(0.6)
    assert pred.reported_confidence == pytest.approx(0.95)
    assert agent.client.features.logprobs is True


def test_without_logprobs_the_reported_confidence_is_used(leaf: ImageRef, apple_task: Task) -> None:
    with openai_server([chat_reply(VALID, logprobs=None)]) as server:
        agent = make_agent(server)
        pred = run(agent, leaf, apple_task)
    assert pred.scores is None and pred.confidence == pytest.approx(0.95)
    assert agent.client.features.logprobs is None


def test_api_key_never_appears(leaf: ImageRef, apple_task: Task) -> None:
    def echo_key(request: RecordedRequest):
        auth = request.headers.get("authorization", "")
        return error_reply(401, f"Incorrect API key provided: {auth.removeprefix('Bearer ')}")

    with openai_server(echo_key) as server:
        agent = make_agent(server)
        pred = run(agent, leaf, apple_task)
    assert pred.label is None and "HTTP 401" in pred.error and "***" in pred.error
    assert_no_key(pred, pred.error, pred.to_dict(), agent, agent.client, agent.client._key)

    leaky = json.dumps({"label": "rust", "reason": f"my key is {KEY}", "confidence": 0.5})
    with openai_server([leaky]) as server:
        pred = run(make_agent(server), leaf, apple_task)
    assert pred.label == "rust"
    assert_no_key(pred)


def test_missing_key_without_base_url_is_an_input_error(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        OpenAIChatClient(model="gpt-4o")


def test_base_url_and_key_from_the_environment(monkeypatch, leaf: ImageRef, apple_task: Task):
    with openai_server([VALID]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        agent = OpenAIAgent(OpenAIChatClient(model="local-vlm"))
        pred = run(agent, leaf, apple_task)
    assert pred.label == "rust" and pred.cost_usd == 0.0
    assert agent.name == "local-vlm"


def test_concurrency_limit(leaf: ImageRef, apple_task: Task) -> None:
    async def many(agent: OpenAIAgent) -> list[Prediction]:
        try:
            return await asyncio.gather(*(agent.predict(leaf, apple_task) for _ in range(6)))
        finally:
            await agent.client.aclose()

    with openai_server([chat_reply(VALID, delay_s=0.2)]) as server:
        agent = make_agent(server, max_concurrency=2)
        preds = asyncio.run(many(agent))
    assert [p.label for p in preds] == ["rust"] * 6
    assert server.max_in_flight == 2
    assert len(server.requests) == 6


def test_reevaluation_sends_previous_answer_and_evidence(
    tmp_path: Path, leaf: ImageRef, apple_task: Task
) -> None:
    neighbour_path = tmp_path / "n1.png"
    Image.new("RGB", (20, 20), (10, 200, 10)).save(neighbour_path)
    evidence = Evidence(
        neighbours=(
            Neighbour(id="a", label="scab", similarity=0.912, source=str(neighbour_path)),
            Neighbour(id="b", label="rust", similarity=0.874, source=None),
        ),
        vote={"scab": 0.51, "rust": 0.49},
    )
    previous = Prediction(agent="gpt-4o", label="rust", confidence=0.9, reason="orange dots")
    answer = '{"label": "scab", "reason": "the neighbours and the spots agree", "confidence": 0.7}'
    with openai_server([answer]) as server:
        client = OpenAIChatClient(model="gpt-4o", base_url=server.base_url, api_key=KEY)
        agent = OpenAIAgent(client, neighbour_images=2)
        pred = run(agent, leaf, apple_task, round=1, previous=previous, evidence=evidence)
    assert pred.label == "scab" and pred.round == 1
    content = server.requests[0].body["messages"][0]["content"]
    text = content[0]["text"]
    assert 'previous answer was "rust" with confidence 0.90' in text
    assert "orange dots" in text
    assert "1. scab (similarity 0.912)" in text and "2. rust (similarity 0.874)" in text
    assert "scab 0.51, rust 0.49" in text
    kinds = [part["type"] for part in content]
    assert kinds == ["text", "image_url", "text", "image_url"]
    assert "labelled scab" in content[2]["text"]


def test_url_images_pass_through_and_other_schemes_fail(apple_task: Task) -> None:
    url_ref = ImageRef(source="https://example.org/leaf.jpg", sha256="0" * 64)
    ftp_ref = ImageRef(source="ftp://example.org/leaf.jpg", sha256="1" * 64)
    with openai_server([VALID]) as server:
        agent = make_agent(server)
        pred = run(agent, url_ref, apple_task)
        bad = run(agent, ftp_ref, apple_task)
    image_part = server.requests[0].body["messages"][0]["content"][1]
    assert image_part["image_url"]["url"] == "https://example.org/leaf.jpg"
    assert pred.label == "rust"
    assert bad.label is None and "unsupported URL scheme 'ftp'" in bad.error
    assert len(server.requests) == 1


def test_parse_answer_and_json_extraction(apple_task: Task) -> None:
    prose = 'noise {"a": 1} then {"label": "rust"}'
    assert extract_json_object(prose, prefer_keys=("label",)) == {"label": "rust"}
    assert extract_json_object(prose) == {"a": 1}
    answer = parse_answer(
        '{"Label": "cedar apple rust", "Reason": "x", "Confidence": 85}', apple_task
    )
    assert answer.label == "rust" and answer.confidence == pytest.approx(0.85)
    assert parse_answer('{"label": "healthy"}', apple_task).confidence is None
    with pytest.raises(AgentError, match="no label field"):
        parse_answer('{"reason": "x"}', apple_task)
    with pytest.raises(AgentError, match="empty answer"):
        parse_answer("  ", apple_task)


def test_label_distribution_with_a_merged_prefix_token(apple_task: Task) -> None:
    top = (
        (' "black', math.log(0.7)),
        (' "rust', math.log(0.2)),
        (' "sc', math.log(0.05)),
        ("\n", math.log(0.05)),
    )
    tokens = [
        TokenChoice('{"label":', 0.0),
        TokenChoice(' "black', math.log(0.7), top),
        TokenChoice('-rot"}', 0.0),
    ]
    scores = label_distribution(tokens, apple_task, "black-rot")
    # observed mass kept; the 0.05 seen on no label goes to the one label seen nowhere
    assert scores == pytest.approx({"black-rot": 0.7, "healthy": 0.05, "rust": 0.2, "scab": 0.05})
    assert label_distribution([TokenChoice("rust", 0.0)], apple_task, "healthy") is None


def test_price_table_and_override_file(tmp_path: Path) -> None:
    prices = load_price_table()
    assert price_for("gpt-4o-2024-08-06", prices) == ModelPrice(2.50, 10.00)
    assert price_for("gpt-4o-mini-2024-07-18", prices) == ModelPrice(0.15, 0.60)
    assert call_cost_usd("llava:13b", 10_000, 500, prices) == 0.0
    path = tmp_path / "prices.json"
    path.write_text('{"llava:13b": {"input": 1.0, "output": 2.0}}')
    custom = load_price_table(path)
    assert call_cost_usd("llava:13b", 10_000, 500, custom) == pytest.approx(0.011)
    path.write_text('{"x": {"input": "cheap"}}')
    with pytest.raises(InputError, match=r"prices.json: column 'x'"):
        load_price_table(path)
    path.write_text('{"x": ')
    with pytest.raises(InputError, match=r"prices.json:1: invalid JSON"):
        load_price_table(path)
    with pytest.raises(InputError, match="no such price file"):
        load_price_table(tmp_path / "absent.json")


def test_reasoning_model_parameters_are_adapted(leaf: ImageRef, apple_task: Task) -> None:
    replies = [
        error_reply(400, "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens'."),
        error_reply(400, "Unsupported value: 'temperature' does not support 0.0"),
        VALID,
    ]
    with openai_server(replies) as server:
        agent = make_agent(server, model="o4-mini")
        pred = run(agent, leaf, apple_task)
    assert pred.label == "rust"
    last = server.requests[-1].body
    assert last["max_completion_tokens"] == 400 and "max_tokens" not in last
    assert "temperature" not in last and "response_format" in last
    assert agent.client.features.downgrades == ["max_tokens", "temperature"]


def test_a_200_reply_that_is_not_a_completion(leaf: ImageRef, apple_task: Task) -> None:
    from openai_server import ScriptedReply

    with openai_server([ScriptedReply(status=200, body="<html>proxy page</html>")]) as server:
        pred = run(make_agent(server), leaf, apple_task)
    assert pred.label is None and pred.error == "the server returned no choices"


def test_prompt_templates(tmp_path: Path, apple_task: Task) -> None:
    from agents.prompting import load_template, render, render_text, template_names

    assert {"agent", "reevaluate", "clip"} <= set(template_names())
    with pytest.raises(InputError, match=r"unknown prompt template 'nope' \(templates: agent"):
        load_template("nope")
    missing = r"template 'agent': no value for placeholder\(s\) \['task_title', 'labels'"
    with pytest.raises(InputError, match=missing):
        render("agent", subject="a leaf")
    own = tmp_path / "mine.txt"
    own.write_text('Classify $subject. Costs $$0. JSON: {"label": "x"}\n')
    assert render(str(own), subject="a leaf") == 'Classify a leaf. Costs $0. JSON: {"label": "x"}'
    with pytest.raises(InputError, match="literal dollar"):
        render_text("price: $ 5", {})
