"""What the cheap checkpoints rely on: SQLite in WAL mode with ``synchronous=NORMAL``, a
serializer that writes LangGraph's own bytes, output lines fsynced in batches yet never lost to a
kill, a lost line recovered from its checkpoint, and a bounded checkpoint per image.

The agents are ``ScriptedAgent`` FAKES (test_runner): real ``Agent`` implementations that answer
the image's folder name and log each call, so a test can count which images reached an agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from test_runner import ReevaluateOncePolicy, ScriptedAgent, make_images

from core.task import load_task
from orchestrator.checkpoint import SQLITE_PRAGMAS, open_checkpointer
from orchestrator.graph import build_graph
from orchestrator.inputs import collect_images
from orchestrator.policies import make_policy
from orchestrator.runner import run_batch
from orchestrator.state import CHECKPOINTED_TYPES, checkpoint_serializer

HERE = Path(__file__).resolve()


def _lines(path: Path) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]


async def _run(tmp: Path, images, agents, *, resume=False, sync_every_s=1.0, task):
    async with open_checkpointer(tmp / "ckpt.sqlite") as saver:
        graph = build_graph(
            task=task, agents=agents, policy=make_policy("majority"), checkpointer=saver
        )
        return await run_batch(
            graph,
            images,
            task=task,
            out=tmp / "out.jsonl",
            resume=resume,
            sync_every_s=sync_every_s,
        )


def test_sqlite_checkpoints_run_in_wal_mode_with_synchronous_normal(tmp_path):
    async def settings() -> tuple[str, int]:
        async with open_checkpointer(tmp_path / "c.sqlite") as saver:
            mode = saver.conn.execute("PRAGMA journal_mode").fetchone()[0]
            sync = saver.conn.execute("PRAGMA synchronous").fetchone()[0]
            return mode, sync

    assert asyncio.run(settings()) == ("wal", 1) == tuple(SQLITE_PRAGMAS.values())
    with closing(sqlite3.connect(tmp_path / "c.sqlite")) as other:  # WAL is a property of the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_fast_serializer_writes_langgraphs_own_bytes(tmp_path, apple_task):
    """Every blob of a real run's checkpoint, re-encoded by the fast path and by LangGraph's
    own serializer: the same bytes, and they load back to equal objects."""
    images = collect_images([make_images(tmp_path / "data", per_label=1)], task=apple_task)
    agents = [ScriptedAgent("a"), ScriptedAgent("b", label="scab")]
    asyncio.run(_run(tmp_path, images.images, agents, task=apple_task))
    fast = checkpoint_serializer()
    plain = JsonPlusSerializer(
        allowed_msgpack_modules=[(t.__module__, t.__name__) for t in CHECKPOINTED_TYPES]
    )
    with closing(sqlite3.connect(tmp_path / "ckpt.sqlite")) as db:
        rows = db.execute("SELECT type, checkpoint FROM checkpoints").fetchall()
        rows += db.execute("SELECT type, value FROM writes").fetchall()
    assert len(rows) > 20
    typed = 0
    for type_, blob in rows:
        value = plain.loads_typed((type_, blob))
        assert fast.dumps_typed(value) == plain.dumps_typed(value)
        assert fast.loads_typed(fast.dumps_typed(value)) == value
        typed += b"orchestrator.decision" in blob or b"agents.types" in blob
    assert typed > 5  # the project's own types were among them


class HeldAgent(ScriptedAgent):
    """FAKE agent that never answers on the images named in ``held`` (a run stays open)."""

    def __init__(self, name: str, held: set[str], **kw) -> None:
        super().__init__(name, **kw)
        self.held = held

    async def predict(self, image, task, **kw):  # type: ignore[no-untyped-def]
        if Path(image.source).name in self.held:
            await asyncio.Event().wait()
        return await super().predict(image, task, **kw)


def child_run(folder: str) -> None:
    """The run killed by the test below: two images never finish, no fsync is due for an hour."""
    tmp = Path(folder)
    task = load_task("apple-leaf")
    images = collect_images([tmp / "data"], task=task).images
    held = {"rust_0.png", "healthy_0.png"}
    agents = [ScriptedAgent("a", log=tmp / "calls.log"), HeldAgent("b", held)]
    asyncio.run(_run(tmp, images, agents, sync_every_s=3600.0, task=task))


def test_lines_written_but_not_yet_fsynced_survive_a_kill(tmp_path, apple_task):
    make_images(tmp_path / "data", per_label=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), *sys.path])}
    code = f"from test_checkpoint_cost import child_run; child_run({str(tmp_path)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    out = tmp_path / "out.jsonl"
    deadline = time.monotonic() + 120
    try:
        while len(_lines(out)) < 4:
            if child.poll() is not None:
                pytest.fail(f"the run ended: {child.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("no 4 lines within 120 s")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    done = {d["sha256"] for d in _lines(out)}
    assert len(done) == 4 and out.read_text().endswith("\n")
    images = collect_images([tmp_path / "data"], task=apple_task).images

    again = [ScriptedAgent("a"), ScriptedAgent("b")]
    summary = asyncio.run(_run(tmp_path, images, again, resume=True, task=apple_task))

    assert summary.already_done == 4 and summary.decided == 2
    called = {sha for agent in again for sha, _ in agent.calls}
    assert len(called) == 2 and not called & done  # only the two held images were asked
    lines = _lines(out)
    assert len(lines) == 6 == len({d["sha256"] for d in lines})


def test_a_line_lost_before_its_fsync_comes_back_from_the_checkpoint(tmp_path, apple_task):
    """What a power cut may do to the output (its unsynced tail is gone) costs no agent call:
    the images' finished threads give their decisions again, the same ones."""
    images = collect_images([make_images(tmp_path / "data", per_label=2)], task=apple_task).images
    asyncio.run(_run(tmp_path, images, [ScriptedAgent("a")], task=apple_task))
    out = tmp_path / "out.jsonl"
    before = _lines(out)
    kept = out.read_text().splitlines(keepends=True)[:2]
    out.write_text("".join(kept))

    again = ScriptedAgent("a")
    summary = asyncio.run(_run(tmp_path, images, [again], resume=True, task=apple_task))

    assert again.calls == []
    assert summary.already_done == 2 and summary.resumed_from_checkpoint == 4
    after = _lines(out)
    key = lambda d: d["sha256"]  # noqa: E731
    assert sorted(after, key=key) == sorted(before, key=key)


def test_the_checkpoint_holds_a_bounded_size_per_image(tmp_path, apple_task):
    from PIL import Image

    folder = tmp_path / "data" / "rust"
    folder.mkdir(parents=True)
    for i in range(40):
        Image.new("RGB", (8, 8), (i, 2 * i, 3)).save(folder / f"{i}.png")
    images = collect_images([tmp_path / "data"], task=apple_task).images
    agents = [ScriptedAgent("a"), ScriptedAgent("b", label="scab")]

    async def scenario() -> None:
        async with open_checkpointer(tmp_path / "ckpt.sqlite") as saver:
            graph = build_graph(
                task=apple_task,
                agents=agents,
                policy=ReevaluateOncePolicy(),  # every image takes two rounds
                checkpointer=saver,
            )
            await run_batch(graph, images, task=apple_task, out=tmp_path / "out.jsonl")

    asyncio.run(scenario())
    lines = _lines(tmp_path / "out.jsonl")
    assert len(lines) == 40 and all(d["rounds_used"] == 2 for d in lines)
    line_bytes = (tmp_path / "out.jsonl").stat().st_size / 40
    assert not (tmp_path / "ckpt.sqlite-wal").exists()  # folded into the file on close
    with closing(sqlite3.connect(tmp_path / "ckpt.sqlite")) as db:
        stored = db.execute(
            "SELECT (SELECT SUM(LENGTH(checkpoint) + LENGTH(metadata)) FROM checkpoints)"
            " + (SELECT SUM(LENGTH(value)) FROM writes)"
        ).fetchone()[0]
        threads = db.execute("SELECT COUNT(DISTINCT thread_id) FROM checkpoints").fetchone()[0]
    assert threads == 40
    # seven checkpoints a thread (input, start, two looks, two assessments, finalize), each
    # with the state so far: about ten output lines' worth, and the file twice that
    assert 2 * line_bytes < stored / 40 < 16 * line_bytes
    assert (tmp_path / "ckpt.sqlite").stat().st_size / 40 < 32 * line_bytes


def test_the_writes_of_one_loop_turn_are_one_commit_and_closing_commits_the_rest(tmp_path):
    path = tmp_path / "c.sqlite"
    step = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c"}}
    loop_errors: list[dict] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
        async with open_checkpointer(path) as saver:
            for n in range(3):
                await saver.aput_writes(step, [("channel", n)], f"task{n}")
            assert saver.conn.in_transaction  # three writes, no commit yet
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert not saver.conn.in_transaction  # one commit, at the next turn
            await saver.aput_writes(step, [("channel", 9)], "last")
        await asyncio.sleep(0)  # the commit it had scheduled finds the connection closed

    asyncio.run(scenario())
    assert loop_errors == []
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM writes").fetchone()[0] == 4
