"""``trustorch run --checkpoint postgresql://...`` against a real PostgreSQL server on 127.0.0.1
(``postgres_server``: initdb/pg_ctl of Debian's ``postgresql`` into a temp folder, as the
``postgres`` user when the tests run as root). Skipped, with the reason, where the server
binaries are not installed.

The agents are ``ScriptedAgent`` FAKES loaded through ``py:`` specs (test_run_cli): real
``Agent`` implementations that answer the image's folder name and log every call, so a test can
count which images reached an agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from postgres_server import PASSWORD, missing_reason, postgres_server
from test_run_cli import agent_spec, make_images, trustorch_command

from core.errors import InputError
from core.redact import redact_url
from orchestrator.checkpoint_postgres import configuration_lock
from orchestrator.cli import main

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def pg():
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_url(pg, request) -> str:
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    return pg.create_database(name)


def _lines(path: Path) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]


def _calls(log: Path) -> list[list[str]]:
    return [x.split() for x in log.read_text().splitlines()] if log.exists() else []


def test_a_run_on_postgres_resumes_from_its_threads_without_calling_an_agent(
    tmp_path, capsys, pg, pg_url
):
    data = make_images(tmp_path / "data", per_label=2)
    out, log = tmp_path / "out.jsonl", tmp_path / "calls.log"
    args = ["run", str(data), "-a", agent_spec("a", log), "--policy", "majority", "--json"]
    args += ["--checkpoint", pg_url, "--out", str(out)]
    assert main([*args, "--keep-checkpoint"]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["decided"] == 6 and len(_calls(log)) == 6
    assert PASSWORD not in json.dumps(summary)
    assert summary["checkpoint"] == redact_url(pg_url)
    threads = pg.sql("SELECT DISTINCT thread_id FROM checkpoints", pg_url.rsplit("/", 1)[1])
    fingerprints = {t.split(":")[0] for t in threads.splitlines()}
    shas = {t.split(":")[1] for t in threads.splitlines()}
    assert len(fingerprints) == 1 and shas == {d["sha256"] for d in _lines(out)}

    whole = out.read_text().splitlines(keepends=True)
    out.write_text("".join(whole[:2]))  # four lines lost: their threads are finished
    assert main([*args, "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)

    assert resumed["already_done"] == 2 and resumed["resumed_from_checkpoint"] == 4
    assert len(_calls(log)) == 6  # no agent asked again
    assert sorted(out.read_text().splitlines()) == sorted(x.rstrip("\n") for x in whole)
    assert resumed["checkpoint"] is None  # every thread deleted once all is in --out
    assert pg.sql("SELECT COUNT(*) FROM checkpoints", pg_url.rsplit("/", 1)[1]) == "0"


def test_an_unreachable_server_and_a_wrong_password_are_one_line_errors(
    tmp_path, capsys, pg, pg_url
):
    data = make_images(tmp_path / "data", per_label=1)
    base = ["run", str(data), "-a", agent_spec("a"), "--policy", "majority"]
    closed = f"postgresql://trustorch:{PASSWORD}@127.0.0.1:1/db"
    wrong = pg_url.replace(PASSWORD, "not-the-password")
    for url, why in ((closed, "Connection refused"), (wrong, "password authentication failed")):
        out = tmp_path / "o.jsonl"
        code = main([*base, "--checkpoint", url, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        (line,) = [x for x in err.splitlines() if x.startswith("error:")]
        assert code == 1
        assert line.startswith(f"error: {redact_url(url)}: cannot open the PostgreSQL checkpoint (")
        assert why in line
        assert PASSWORD not in err and "not-the-password" not in err
        assert _lines(out) == []


def test_one_configuration_has_one_writer_per_database(pg_url):
    async def scenario() -> str:
        async with configuration_lock(pg_url, '{"agents": ["a"]}'):
            async with configuration_lock(pg_url, '{"agents": ["b"]}'):
                pass  # another configuration: its own lock
            with pytest.raises(InputError) as refused:
                async with configuration_lock(pg_url, '{"agents": ["a"]}'):
                    pass
        async with configuration_lock(pg_url, '{"agents": ["a"]}'):
            pass  # released with its session
        return str(refused.value)

    message = asyncio.run(scenario())
    assert message == (
        f"{redact_url(pg_url)}: the checkpoint threads of this configuration are "
        f"being written by another trustorch run (trustorch run pid {os.getpid()} on "
        f"{os.uname().nodename}); wait for it to end"
    )


def test_shards_of_one_run_write_side_by_side_but_each_shard_and_the_whole_alone(pg_url):
    config = '{"agents": ["a"]}'

    async def scenario() -> list[str]:
        refusals = []
        async with (
            configuration_lock(pg_url, config, part="0"),
            configuration_lock(pg_url, config, part="1"),
        ):
            for refused in (
                configuration_lock(pg_url, config, part="1"),  # the same shard again
                configuration_lock(pg_url, config),  # a local run of the configuration
            ):
                with pytest.raises(InputError) as why:
                    async with refused:
                        pass
                refusals.append(str(why.value))
        async with configuration_lock(pg_url, config):
            with pytest.raises(InputError) as why:
                async with configuration_lock(pg_url, config, part="0", wait_s=0.3):
                    pass
            refusals.append(str(why.value))
        return refusals

    started = time.monotonic()
    same_shard, whole, shard_of_local = asyncio.run(scenario())
    assert "threads of shard 1 of it are being written by another trustorch run" in same_shard
    assert "threads of this configuration are being written" in whole
    assert "threads of this configuration are being written" in shard_of_local
    assert time.monotonic() - started > 0.3  # it waited before refusing


@contextmanager
def _running(cmd: list[str]) -> Iterator[subprocess.Popen]:
    """``cmd`` started, and killed on the way out if it still runs."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_lines(out: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while len(_lines(out)) < n:
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"fewer than {n} lines in 120 s")
        time.sleep(0.05)


def _cli(data: Path, out: Path, log: Path, url: str) -> list[str]:
    agents = ["-a", agent_spec("a", log, delay=0.1), "-a", agent_spec("b", log, delay=0.1)]
    return [*trustorch_command(), "run", str(data), *agents, "--out", str(out), "-j", "2"]


@pytest.mark.heavy
def test_a_killed_run_resumes_on_postgres_without_asking_again(tmp_path, pg_url):
    data = make_images(tmp_path / "data", per_label=4)
    out, log = tmp_path / "out.jsonl", tmp_path / "calls.log"
    cmd = [*_cli(data, out, log, pg_url), "--checkpoint", pg_url, "--json"]
    with _running(cmd) as killed:
        _wait_for_lines(out, 3, killed)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    done = {d["sha256"] for d in _lines(out)}
    before = len(_calls(log))
    assert 3 <= len(done) < 12

    resumed = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, timeout=180)

    assert resumed.returncode == 0, resumed.stderr.decode()
    lines = _lines(out)
    assert len(lines) == 12 == len({d["sha256"] for d in lines})
    later = _calls(log)[before:]
    assert later and not {sha for _, sha, _ in later} & done


@pytest.mark.heavy
def test_postgres_restarted_mid_run_leaves_each_image_once(tmp_path, pg, pg_url):
    data = make_images(tmp_path / "data", per_label=4)
    out, log = tmp_path / "out.jsonl", tmp_path / "calls.log"
    cmd = [*_cli(data, out, log, pg_url), "--checkpoint", pg_url, "--json"]
    with _running(cmd) as run:
        _wait_for_lines(out, 2, run)
        pg.restart()
        _, stderr = run.communicate(timeout=180)
    if run.returncode != 0:  # it may fail some images in one line each; --resume finishes
        failed = [x for x in stderr.decode().splitlines() if x.startswith("failed ")]
        assert failed, stderr.decode()
        again = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, timeout=180)
        assert again.returncode == 0, again.stderr.decode()
    lines = _lines(out)
    assert len(lines) == 12 == len({d["sha256"] for d in lines})
    for d in lines:
        assert sorted(p["agent"] for p in d["predictions"] if p["round"] == 0) == ["a", "b"]
