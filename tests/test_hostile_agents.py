"""A hostile or broken OpenAI-compatible server cannot swell the output, exhaust memory, hold a
call past its deadline, or get a credential printed or stored.

A real scripted server on 127.0.0.1 (tests/openai_server.py), the real ``openai`` client, and
``trustorch run`` / ``trustorch demo leaf`` as real subprocesses."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai_server import (
    ScriptedReply,
    chat_reply,
    error_reply,
    huge_reply,
    openai_server,
    stall_reply,
)
from peak_rss import run_with_peak_rss
from PIL import Image
from test_agents_openai import make_agent, run

from agents.openai_agent import OpenAIAgent
from agents.openai_compat import ChatError, OpenAIChatClient
from agents.openai_compat.errors import ReplyTooLargeError
from agents.registry import default_registry
from agents.types import MAX_ERROR_CHARS, MAX_REASON_CHARS, Prediction, capped_text
from core.images import ImageRef
from core.redact import redact_text, redact_url, url_secrets
from core.task import Task

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VALID = '{"label": "rust", "reason": "orange spots with red borders", "confidence": 0.9}'
CANARIES = ("canary1-userinfo", "canary2-api-key", "canary3-chroma-pw", "canary4-chroma-token")


def answer_with_reason(reason: str) -> str:
    return json.dumps({"label": "rust", "confidence": 0.9, "reason": reason})


@pytest.fixture
def leaf(tmp_path: Path) -> ImageRef:
    path = tmp_path / "leaf.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(path)
    return ImageRef.from_path(path)


def make_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (32, 24), (30 + 60 * i, 120, 90)).save(folder / f"leaf{i}.png")
    return folder


def complete(client: OpenAIChatClient) -> object:
    async def go() -> object:
        try:
            return await client.complete([{"role": "user", "content": "hi"}])
        finally:
            await client.aclose()

    return asyncio.run(go())


# ---------------------------------------------------------------- bounded replies, in process


def test_a_capped_text_says_how_much_was_cut_and_capping_again_changes_nothing() -> None:
    text = "y" * 2_000_000
    capped = capped_text(text, 2000)
    assert len(capped) == 2000
    assert capped.endswith("... [truncated 1,998,031 chars]")
    assert capped.startswith("y" * 1969)
    assert capped_text(capped, 2000) == capped
    assert capped_text("short", 2000) == "short"
    for size in (1999, 2000, 2001, 2050, 10**6):
        once = capped_text("z" * size, 2000)
        assert len(once) <= 2000 and capped_text(once, 2000) == once


def test_every_prediction_bounds_its_reason_and_error_also_when_reloaded() -> None:
    pred = Prediction(agent="a", label="rust", confidence=0.5, reason="r" * 10**6)
    failed = Prediction.failure("a", "e" * 10**5)
    assert len(pred.reason) == MAX_REASON_CHARS and "[truncated 998,0" in pred.reason
    assert len(failed.error or "") == MAX_ERROR_CHARS
    assert Prediction.from_dict(pred.to_dict()) == pred


def test_a_2mb_reason_comes_back_cut_with_a_visible_marker(leaf: ImageRef, apple_task: Task):
    with openai_server([answer_with_reason("y" * 2_000_000)]) as server:
        pred = run(make_agent(server), leaf, apple_task)
    assert pred.label == "rust" and pred.error is None
    assert len(pred.reason) == MAX_REASON_CHARS
    assert pred.reason.endswith("[truncated 1,998,031 chars]")


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_reply_over_the_byte_cap_is_refused_and_not_retried(chunked: bool) -> None:
    with openai_server([huge_reply(20_000_000, chunked=chunked)]) as server:
        client = OpenAIChatClient(
            model="m", base_url=server.base_url, api_key="sk-x", max_reply_bytes=1_000_000
        )
        with pytest.raises(ReplyTooLargeError) as info:
            complete(client)
    message = str(info.value)
    assert "over the 1.0 MB cap (max_reply_bytes)" in message
    assert ("20.0 MB" in message) is not chunked  # a declared length is refused unread
    assert info.value.attempts == 1 and len(server.requests) == 1
    assert server.requests[0].headers["accept-encoding"] == "identity"


def test_a_reply_under_the_byte_cap_is_read_whole() -> None:
    with openai_server([huge_reply(600_000)]) as server:
        client = OpenAIChatClient(
            model="m", base_url=server.base_url, api_key="sk-x", max_reply_bytes=1_000_000
        )
        result = complete(client)
    assert result.content == "x" * 600_000


def test_a_compressed_reply_is_refused_as_unbounded() -> None:
    body = gzip.compress(json.dumps(chat_reply(VALID).body).encode())
    reply = ScriptedReply(
        status=200, body=body, headers={"content-encoding": "gzip", "content-type": "x"}
    )
    with openai_server([reply]) as server:
        client = OpenAIChatClient(model="m", base_url=server.base_url, api_key="sk-x")
        with pytest.raises(ReplyTooLargeError, match="Content-Encoding: gzip"):
            complete(client)
    assert len(server.requests) == 1


# ---------------------------------------------------------------- one deadline per call


def test_a_stalled_server_costs_one_deadline_not_attempts_times_timeout() -> None:
    with openai_server([stall_reply()]) as server:
        client = OpenAIChatClient(
            model="m",
            base_url=server.base_url,
            api_key="sk-x",
            timeout_s=30.0,
            max_retries=3,
            backoff_s=0.01,
            deadline_s=1.0,
        )
        with pytest.raises(ChatError) as info:
            complete(client)
    assert "timed out" in str(info.value) and "deadline" in str(info.value)
    assert len(server.requests) == 1  # its timeout was the time left, not 30 s


def test_retries_and_their_backoff_count_inside_the_deadline() -> None:
    with openai_server([error_reply(500, "down")]) as server:
        client = OpenAIChatClient(
            model="m",
            base_url=server.base_url,
            api_key="sk-x",
            max_retries=10_000,
            backoff_s=0.05,
            max_backoff_s=0.05,
            deadline_s=1.0,
        )
        with pytest.raises(ChatError) as info:
            complete(client)
    assert "deadline" in str(info.value)
    assert 2 <= len(server.requests) < 10_000
    assert info.value.attempts == len(server.requests)


def test_a_retry_after_past_the_deadline_is_not_waited_for() -> None:
    with openai_server([error_reply(429, "slow down", headers={"retry-after": "30"})]) as server:
        client = OpenAIChatClient(
            model="m",
            base_url=server.base_url,
            api_key="sk-x",
            max_backoff_s=60.0,
            deadline_s=2.0,
        )
        with pytest.raises(ChatError) as info:
            complete(client)
    assert str(info.value).startswith("HTTP 429: ") and "slow down" in str(info.value)
    assert "no time left to retry within the 2 s deadline" in str(info.value)
    assert len(server.requests) == 1


def test_a_deadline_must_be_positive() -> None:
    from core.errors import InputError

    with pytest.raises(InputError, match="deadline_s"):
        OpenAIChatClient(model="m", base_url="http://127.0.0.1:1/v1", deadline_s=0)


# ---------------------------------------------------------------- no secret shown or stored


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:pw@h:1/v1?token=t&x=1", "http://***@h:1/v1?token=***&x=1"),
        ("https://api.example.com/v1", "https://api.example.com/v1"),
        (
            "http://h/?api_key=a&X-Amz-Signature=b&page=2",
            "http://h/?api_key=***&X-Amz-Signature=***&page=2",
        ),
        ("http://h/cb#access_token=zz", "http://h/cb#access_token=***"),
        ("u:pw@chroma:8000", "***@chroma:8000"),
        ("chroma:8000", "chroma:8000"),
        ("/tmp/index", "/tmp/index"),
        ("http://user@h/", "http://***@h/"),
    ],
)
def test_redact_url_masks_userinfo_and_secret_parameters(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_masks_every_url_and_the_bare_secrets() -> None:
    url = "http://u:canary3-pw@127.0.0.1:1/?token=canary4-tok"
    text = f"cannot reach {url}, said the proxy (canary3-pw, canary4-tok)."
    out = redact_text(text, url_secrets(url))
    assert "canary" not in out
    assert out == "cannot reach http://***@127.0.0.1:1/?token=***, said the proxy (***, ***)."
    long = "y" * 2_000_000 + " http://a:secret-pw@h/"
    assert redact_text(long).endswith("http://***@h/")  # linear: a 2 MB text is not a problem


def test_a_server_echoing_credentials_gets_none_into_the_prediction(
    leaf: ImageRef, apple_task: Task
) -> None:
    echo = f"denied {CANARIES[0]} for http://user:{CANARIES[0]}@x/v1 with key {CANARIES[1]}"
    with openai_server([error_reply(403, echo)]) as server:
        base_url = server.base_url.replace("http://", f"http://user:{CANARIES[0]}@")
        client = OpenAIChatClient(model="m", base_url=base_url, api_key=CANARIES[1])
        agent = OpenAIAgent(client)
        pred = run(agent, leaf, apple_task)
    assert pred.error is not None and pred.error.startswith("HTTP 403: ")
    assert "denied *** for http://***@x/v1 with key ***" in pred.error
    for thing in (pred.error, repr(client), repr(agent)):
        assert CANARIES[0] not in thing and CANARIES[1] not in thing


def test_the_http_stack_logs_no_credential(caplog: pytest.LogCaptureFixture) -> None:
    with openai_server([VALID]) as server:
        base_url = server.base_url.replace("http://", f"http://user:{CANARIES[0]}@")
        client = OpenAIChatClient(model="m", base_url=base_url, api_key=CANARIES[1])
        with caplog.at_level(logging.DEBUG):
            complete(client)
    assert "POST http://***@127.0.0.1" in caplog.text  # httpx logs each request's URL
    assert_no_canary(caplog.text)


def test_recorded_agent_options_mask_url_credentials() -> None:
    registry = default_registry()
    spec = registry.parse("openai:m")
    recorded = registry.recorded_options(
        spec, {"base_url": f"http://u:{CANARIES[0]}@h/v1", "api_key": CANARIES[1], "timeout_s": 5}
    )
    assert recorded == {"base_url": "http://***@h/v1", "timeout_s": 5}


def test_the_recorded_index_of_a_run_masks_the_chroma_url() -> None:
    from orchestrator.agent_kinds import RetrievalSettings
    from orchestrator.run_cli import run_configuration

    url = f"http://u:{CANARIES[2]}@127.0.0.1:1/?token={CANARIES[3]}"
    config = run_configuration(
        task="apple-leaf",
        specs=["clip"],
        agent_options={},
        policy="trust",
        trust=None,
        policy_file=None,
        max_rounds=2,
        retrieval=RetrievalSettings(chroma_url=url),
        llm_model=None,
    )
    assert config["index"] == "http://***@127.0.0.1:1/?token=***"


def test_an_unreachable_chroma_server_error_masks_its_credentials() -> None:
    from rag.errors import StoreError
    from rag.store import ChromaStore

    url = f"http://u:{CANARIES[2]}@127.0.0.1:1/?token={CANARIES[3]}"
    with pytest.raises(StoreError) as info:
        ChromaStore.open(chroma_url=url)
    assert "http://***@127.0.0.1:1/?token=***" in str(info.value)
    assert CANARIES[2] not in str(info.value) and CANARIES[3] not in str(info.value)


# ---------------------------------------------------------------- the CLI, real subprocesses


def trustorch_command() -> list[str]:
    script = Path(sys.executable).with_name("trustorch")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from orchestrator.cli import entry; entry()"]


def cli_env(base_url: str, api_key: str = "sk-test", **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": api_key,
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def run_cli(
    args: list[str], env: dict[str, str], work: Path, *, hang_guard_s: float = 180
) -> tuple[int, str, str, int]:
    """Exit code, stdout, stderr and peak RSS (KiB) of the command alone."""
    code, peak, stdout, stderr = run_with_peak_rss(
        [*trustorch_command(), *args], timeout_s=hang_guard_s, cwd=work, env=env
    )
    return code, stdout, stderr, peak // 1024


def decisions(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return [d for d in lines if "sha256" in d]


def run_args(images: Path, out: Path, *more: str) -> list[str]:
    return [
        "run",
        str(images),
        "--agent",
        "vlm=openai:test-model",
        "--agent-option",
        "backoff_s=0.01",
        "--out",
        str(out),
        "--json",
        *more,
    ]


def test_run_with_2mb_reasons_keeps_lines_and_checkpoints_small(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images", 2)
    out = tmp_path / "out.jsonl"
    with openai_server([answer_with_reason("y" * 2_000_000)]) as server:
        args = run_args(images, out, "--keep-checkpoint")  # measured below
        code, _, stderr, _ = run_cli(args, cli_env(server.base_url), tmp_path)
    assert code == 0, stderr
    lines = out.read_bytes().splitlines()
    found = decisions(out)
    assert len(found) == 2
    for line in lines:
        assert len(line) < 10_000  # 4 MB a line before the cap
    for decision in found:
        for pred in decision["predictions"]:
            assert pred["reason"].endswith("... [truncated 1,998,031 chars]")
    checkpoint = out.with_name(out.name + ".checkpoints.sqlite")
    assert checkpoint.stat().st_size < 1_000_000  # 32 MB an image before the cap


def test_run_against_a_gigabyte_reply_fails_the_agent_in_one_line_with_bounded_memory(
    tmp_path: Path,
) -> None:
    images = make_images(tmp_path / "images", 1)
    out = tmp_path / "out.jsonl"
    with openai_server([huge_reply(1_000_000_000)]) as server:
        code, _, stderr, peak_kib = run_cli(
            run_args(images, out), cli_env(server.base_url), tmp_path
        )
    assert code == 1, stderr  # the only agent failed on every image
    assert stderr.splitlines()[-1].startswith("error: every agent failed on every image")
    assert "Traceback" not in stderr
    (decision,) = decisions(out)
    errors = {p["error"] for p in decision["predictions"]}
    assert errors == {"the reply is over the 8.0 MB cap (max_reply_bytes); not read further"}
    assert decision["label"] is None
    assert peak_kib < 1_000_000  # far below the 1 GB body (8.5 GB for 64 MB before the cap)


def test_run_against_a_stalling_server_gives_up_at_the_agent_timeout(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images", 2)
    out = tmp_path / "out.jsonl"
    with openai_server([stall_reply()]) as server:
        code, _, stderr, _ = run_cli(
            run_args(images, out, "--agent-timeout", "1"),
            cli_env(server.base_url),
            tmp_path,
            hang_guard_s=120,
        )
    assert code == 1, stderr  # the only agent failed on every image
    assert stderr.splitlines()[-1].startswith("error: every agent failed on every image")
    found = decisions(out)
    assert len(found) == 2
    for decision in found:
        assert decision["label"] is None
        assert decision["predictions"]
        assert all("timed out" in p["error"] for p in decision["predictions"])


def test_run_with_a_stalling_server_gives_up_at_the_adapters_deadline(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images", 1)
    out = tmp_path / "out.jsonl"
    with openai_server([stall_reply()]) as server:
        args = run_args(images, out, "--agent-option", "deadline_s=1", "--max-rounds", "1")
        code, _, stderr, _ = run_cli(args, cli_env(server.base_url), tmp_path, hang_guard_s=120)
    assert code == 1, stderr  # the only agent failed on every image
    assert stderr.splitlines()[-1].startswith("error: every agent failed on every image")
    (decision,) = decisions(out)
    (pred,) = decision["predictions"]
    assert "timed out" in pred["error"] and "1 s deadline" in pred["error"]


def every_byte_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def assert_no_canary(*texts: str | bytes) -> None:
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        for canary in CANARIES:
            assert canary.encode() not in data, canary


@pytest.mark.heavy
def test_no_credential_reaches_any_output_of_run_or_demo(
    tmp_path: Path, tiny_clip_dir: Path
) -> None:
    images = make_images(tmp_path / "images", 2)
    work = tmp_path / "work"
    work.mkdir()
    userinfo, key, chroma_pw, chroma_token = CANARIES
    echo = f"denied user:{userinfo} at http://user:{userinfo}@proxy/v1 (key {key})"
    chroma = f"http://u:{chroma_pw}@127.0.0.1:1/?token={chroma_token}"
    rag_args = run_args(
        images, work / "rag.jsonl", "--chroma-url", chroma, "--clip-model", str(tiny_clip_dir)
    )
    with openai_server([error_reply(403, echo), VALID]) as server, ThreadPoolExecutor(1) as beside:
        base_url = server.base_url.replace("http://", f"http://user:{userinfo}@")
        env = cli_env(base_url, api_key=key, TRUSTORCH_INDEX_DIR=str(tmp_path / "no-index"))
        # the run with the unreachable Chroma server stops before its first request: it runs
        # beside the two below, whose requests meet the scripted replies in order
        rag_run = beside.submit(run_cli, rag_args, env, tmp_path)

        out = work / "out.jsonl"
        code, stdout, stderr, _ = run_cli(run_args(images, out), env, tmp_path)
        assert code == 0, stderr
        assert any(p.get("error") for d in decisions(out) for p in d["predictions"])
        assert_no_canary(stdout, stderr)

        reports = work / "reports"
        code, stdout, stderr, _ = run_cli(
            ["demo", "leaf", str(images), "--out-dir", str(reports), "--json"], env, tmp_path
        )
        assert code == 0, stderr
        shown = json.loads(stdout)
        assert "http://***@127.0.0.1" in shown["agents"][-1]["detail"]
        assert_no_canary(stdout, stderr)

        code, stdout, stderr, _ = rag_run.result()
        assert code == 1, stderr
        assert (
            stderr.strip()
            .splitlines()[-1]
            .startswith(
                "error: cannot reach the Chroma server at http://***@127.0.0.1:1/?token=*** "
            )
        )
        assert_no_canary(stdout, stderr)
    assert_no_canary(every_byte_under(work))  # read once all three commands have ended
    assert len(server.requests) >= 5


def test_a_signed_image_url_is_stored_without_its_signature(apple_task):
    from test_runner import ScriptedAgent

    from orchestrator.graph import build_graph, classify
    from orchestrator.policies import make_policy

    url = "https://bucket.example/leaf.jpg?X-Amz-Credential=AKIA1&X-Amz-Signature=canary5"
    graph = build_graph(
        task=apple_task, agents=[ScriptedAgent("a", label="rust")], policy=make_policy("majority")
    )
    decision = asyncio.run(classify(graph, ImageRef(source=url, sha256="0" * 64)))
    assert decision.image == (
        "https://bucket.example/leaf.jpg?X-Amz-Credential=***&X-Amz-Signature=***"
    )
    assert "canary5" not in json.dumps(decision.to_dict())
