"""The runner and input collection: one line per image, resume, failures, unreadable inputs.

The agents here are ``ScriptedAgent``, a FAKE: a real ``Agent`` implementation that answers
from a script (the image's parent folder name) instead of looking at pixels, and logs every
call, so tests can count which images and rounds reached an agent.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from PIL import Image

from agents.types import EvidenceView, Prediction
from core.errors import InputError
from core.images import ImageRef
from core.task import Task
from orchestrator.checkpoint import sqlite_checkpointer
from orchestrator.decision import Assessment
from orchestrator.graph import build_graph
from orchestrator.inputs import collect_images
from orchestrator.policies import make_policy
from orchestrator.runner import read_output, run_batch
from rag.evidence import Evidence

COLOURS = {"black-rot": (60, 20, 20), "healthy": (20, 160, 20), "rust": (230, 120, 0)}


class ScriptedAgent:
    """FAKE agent: answers ``label`` (or the image's folder name), logs ``sha round`` per call."""

    def __init__(
        self,
        name: str,
        *,
        label: str | None = None,
        confidence: float = 0.9,
        log: Path | None = None,
        raises: bool = False,
        block_round: int | None = None,
    ) -> None:
        self.name = name
        self.can_reevaluate = True
        self.label = label
        self.confidence = confidence
        self.log = log
        self.raises = raises
        self.block_round = block_round
        self.calls: list[tuple[str, int]] = []
        self.blocked = asyncio.Event()

    async def predict(
        self,
        image: ImageRef,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> Prediction:
        self.calls.append((image.sha256, round))
        if self.log is not None:
            with self.log.open("a") as fh:
                fh.write(f"{self.name} {image.sha256} {round}\n")
        if self.raises:
            raise RuntimeError("model server unreachable")
        if self.block_round == round:
            self.blocked.set()
            await asyncio.Event().wait()
        label = self.label or task.normalise_label(Path(image.source).parent.name)
        return Prediction(agent=self.name, label=label, confidence=self.confidence, round=round)


class ReevaluateOncePolicy:
    """FAKE policy: never trusts round 0 (asks every agent again), decides by majority after."""

    name = "reevaluate-once"
    assess_after_retrieval = False

    async def assess(
        self,
        *,
        task: Task,
        predictions: list[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment:
        ok = [p for p in predictions if p.ok]
        label = max(task.labels, key=lambda y: sum(p.label == y for p in ok))
        return Assessment(
            policy=self.name,
            round=round,
            scores={y: float(y == label) for y in task.labels},
            label=label,
            confidence=1.0,
            trusted=round > 0,
            reevaluate=[p.agent for p in predictions] if round == 0 else [],
            prediction_set=[label],
            reason="fake: always look twice",
        )


def make_images(root: Path, per_label: int = 2) -> Path:
    """An ImageFolder layout of small, distinct PNGs: root/<label>/<label>_<i>.png."""
    for label, colour in COLOURS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            img = Image.new("RGB", (16, 16), colour)
            img.putpixel((i, i), (i * 40 % 255, 7, 9))
            img.save(root / label / f"{label}_{i}.png")
    return root


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _run(tmp: Path, images, agents, *, policy=None, resume=False, out=None, **kw):
    out = out or tmp / "out.jsonl"
    task = kw.pop("task")
    async with sqlite_checkpointer(tmp / "ckpt.sqlite") as saver:
        graph = build_graph(
            task=task,
            agents=agents,
            policy=policy or make_policy("majority"),
            max_rounds=kw.pop("max_rounds", 2),
            checkpointer=saver,
        )
        return await run_batch(graph, images, task=task, out=out, resume=resume, **kw)


def test_collect_images_folder_manifest_unreadable_and_duplicates(tmp_path, apple_task):
    data = make_images(tmp_path / "data")
    (data / "scab").mkdir()
    (data / "scab" / "broken.png").write_bytes(b"not a png at all")
    (data / "notes.txt").write_text("ignored: not an image suffix")
    loose = tmp_path / "loose.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(loose)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nloose.png,Black rot\ndata/rust/rust_0.png,rust\n")

    got = collect_images([data, manifest], task=apple_task)

    assert [(Path(i.image.source).name, i.truth) for i in got.images] == [
        ("black-rot_0.png", "black-rot"),
        ("black-rot_1.png", "black-rot"),
        ("healthy_0.png", "healthy"),
        ("healthy_1.png", "healthy"),
        ("rust_0.png", "rust"),
        ("rust_1.png", "rust"),
        ("loose.png", "black-rot"),
    ]
    assert [(Path(s.source).name, s.reason) for s in got.skipped] == [
        ("broken.png", "not an image file (unknown format)")
    ]
    assert len(got.duplicates) == 1 and "rust_0.png" in got.duplicates[0].reason
    assert got.labelled == 7


def test_manifest_label_outside_task_names_line_and_column(tmp_path, apple_task):
    make_images(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,truth\nrust/rust_0.png,rust\nrust/rust_1.png,mildew\n")
    with pytest.raises(InputError) as err:
        collect_images([manifest], task=apple_task)
    assert (err.value.line, err.value.field) == (3, "truth")
    assert "mildew" in str(err.value)
    with pytest.raises(InputError, match="no such file or folder"):
        collect_images([tmp_path / "absent"], task=apple_task)


def test_read_output_drops_only_a_truncated_last_line(tmp_path):
    out = tmp_path / "o.jsonl"
    good = [json.dumps({"sha256": s, "label": "rust"}) for s in ("a", "b")]
    out.write_text("\n".join(good) + "\n" + '{"sha256": "c", "lab')
    existing = read_output(out, repair=True)
    assert sorted(existing.decisions) == ["a", "b"]
    assert existing.dropped_bytes == len('{"sha256": "c", "lab')
    assert out.read_text() == "\n".join(good) + "\n"
    out.write_text(good[0] + "\n{broken}\n" + good[1] + "\n")
    with pytest.raises(InputError) as err:
        read_output(out, repair=True)
    assert err.value.line == 2


def test_batch_writes_each_image_once_with_metrics(tmp_path, apple_task):
    collected = collect_images([make_images(tmp_path / "data")], task=apple_task)
    right = ScriptedAgent("right", confidence=0.8)
    wrong = ScriptedAgent("wrong", label="scab", confidence=0.6)
    run = _run(
        tmp_path,
        collected.images,
        [right, wrong],
        policy=make_policy("max-confidence"),
        task=apple_task,
        concurrency=3,
    )
    summary = asyncio.run(run)
    lines = _lines(tmp_path / "out.jsonl")
    assert len(lines) == 6 == summary.decided == summary.images
    assert {d["sha256"] for d in lines} == {i.image.sha256 for i in collected.images}
    assert all(d["label"] == d["truth"] for d in lines)
    assert summary.metrics["accuracy"] == 1.0
    assert summary.metrics["labelled"] == 6
    assert summary.metrics["ece"] == pytest.approx(0.2)
    assert summary.metrics["mean_confidence"] == pytest.approx(0.8)
    assert len(right.calls) == len(wrong.calls) == 6


def test_failing_agent_is_traced_and_others_decide(tmp_path, apple_task):
    collected = collect_images([make_images(tmp_path / "data", per_label=1)], task=apple_task)
    broken = ScriptedAgent("broken", raises=True)
    run = _run(
        tmp_path,
        collected.images,
        [broken, ScriptedAgent("good")],
        task=apple_task,
        max_rounds=1,
    )
    summary = asyncio.run(run)
    lines = _lines(tmp_path / "out.jsonl")
    assert len(lines) == 3 and summary.failed == []
    for d in lines:
        assert d["label"] == d["truth"]
        failed = [p for p in d["predictions"] if p["agent"] == "broken"]
        assert failed[0]["label"] is None
        assert "RuntimeError: model server unreachable" in failed[0]["error"]
        assert any("agent broken failed" in note for note in d["notes"])
    assert summary.metrics["agent_failures"] == 3


def test_resume_skips_written_images_and_rewrites_a_torn_line(tmp_path, apple_task):
    collected = collect_images([make_images(tmp_path / "data")], task=apple_task)
    asyncio.run(_run(tmp_path, collected.images, [ScriptedAgent("a")], task=apple_task))
    out = tmp_path / "out.jsonl"
    original = _lines(out)
    text = out.read_text()
    cut = text.rstrip("\n").rfind("\n") + 1
    out.write_text(text[: cut + 25])  # a kill tore the last line
    with pytest.raises(InputError, match="--resume"):
        asyncio.run(_run(tmp_path, collected.images, [ScriptedAgent("a")], task=apple_task))

    again = ScriptedAgent("a")
    summary = asyncio.run(_run(tmp_path, collected.images, [again], task=apple_task, resume=True))

    lines = _lines(out)
    assert len(lines) == 6 and len({d["sha256"] for d in lines}) == 6
    assert summary.already_done == 5 and summary.decided == 1
    assert summary.dropped_partial_bytes == 25
    # the torn image's thread had finished: its decision comes from the checkpoint, no new call
    assert summary.resumed_from_checkpoint == 1 and again.calls == []
    assert lines[-1] == original[-1]


def test_resume_after_a_crash_mid_graph_repeats_no_finished_round(tmp_path, apple_task):
    asyncio.run(_crash_then_resume(tmp_path, apple_task))


async def _crash_then_resume(tmp_path: Path, apple_task: Task) -> None:
    collected = collect_images([make_images(tmp_path / "data", per_label=1)], task=apple_task)
    images = collected.images[:1]
    stuck = ScriptedAgent("a", block_round=1)
    other = ScriptedAgent("b")
    run = asyncio.create_task(
        _run(tmp_path, images, [stuck, other], policy=ReevaluateOncePolicy(), task=apple_task)
    )
    await asyncio.wait_for(stuck.blocked.wait(), 10)
    await asyncio.sleep(0.2)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert (tmp_path / "out.jsonl").read_text() == ""
    assert sorted(r for _, r in stuck.calls) == [0, 1]

    a, b = ScriptedAgent("a"), ScriptedAgent("b")
    summary = await _run(
        tmp_path, images, [a, b], policy=ReevaluateOncePolicy(), task=apple_task, resume=True
    )
    assert summary.resumed_from_checkpoint == 1
    assert [r for _, r in a.calls] == [1]
    assert [r for _, r in b.calls] in ([1], [])
    (line,) = _lines(tmp_path / "out.jsonl")
    assert line["rounds_used"] == 2
    assert sorted((p["agent"], p["round"]) for p in line["predictions"]) == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("b", 1),
    ]


def test_fresh_run_clears_old_checkpoints(tmp_path, apple_task):
    images = collect_images([make_images(tmp_path / "d", 1)], task=apple_task).images
    asyncio.run(_run(tmp_path, images, [ScriptedAgent("a")], task=apple_task))
    (tmp_path / "out.jsonl").unlink()
    agent = ScriptedAgent("a")
    asyncio.run(_run(tmp_path, images, [agent], task=apple_task))
    assert len(agent.calls) == 3
    for d in _lines(tmp_path / "out.jsonl"):
        assert len(d["predictions"]) == 1


def test_truncated_jpeg_is_skipped(tmp_path, apple_task):
    import random

    rng = random.Random(0)
    data = make_images(tmp_path / "data", per_label=1)
    noise = Image.new("RGB", (64, 64))
    noise.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(64 * 64)])
    whole = tmp_path / "whole.jpg"
    noise.save(whole, quality=95)
    cut = whole.read_bytes()
    (data / "rust" / "cut.jpg").write_bytes(cut[: len(cut) // 2])  # header intact, pixels cut
    got = collect_images([data], task=apple_task)
    assert len(got.images) == 3
    assert [Path(s.source).name for s in got.skipped] == ["cut.jpg"]
    assert got.skipped[0].reason.startswith("truncated or corrupt image")


def test_inputs_without_images_are_an_input_error(tmp_path, apple_task):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match=r"no readable images in .*empty \(0 unreadable, 0 dup"):
        collect_images([empty], task=apple_task)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nmissing.png,rust\n")
    with pytest.raises(InputError, match=r"1 unreadable.*missing\.png: no such file"):
        collect_images([manifest], task=apple_task)


def test_output_folder_and_unwritable_paths_are_input_errors(tmp_path, apple_task):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(InputError, match=r"out: the output is a folder"):
        read_output(folder, repair=True)
    images = collect_images([make_images(tmp_path / "data", per_label=1)], task=apple_task)
    with pytest.raises(InputError, match=r"^/proc/x: cannot make the folder for the output"):
        asyncio.run(
            _run(
                tmp_path,
                images.images,
                [ScriptedAgent("a")],
                task=apple_task,
                out=Path("/proc/x/out.jsonl"),
            )
        )


def test_a_checkpoint_of_an_older_version_starts_the_image_afresh(tmp_path, apple_task):
    """Checkpoints written before the typed state hold plain dicts: such a thread is started
    again (its agents asked anew), never mixed into a decision nor failed forever."""
    collected = collect_images([make_images(tmp_path / "data", per_label=1)], task=apple_task)
    images = collected.images[:2]

    async def scenario() -> None:
        async with sqlite_checkpointer(tmp_path / "ckpt.sqlite") as saver:
            graph = build_graph(
                task=apple_task,
                agents=[ScriptedAgent("a")],
                policy=make_policy("majority"),
                checkpointer=saver,
            )
            old = images[0].image
            config = {"configurable": {"thread_id": old.sha256}}
            await graph.compiled.aupdate_state(
                config,
                {
                    "image": {"source": old.source, "sha256": old.sha256},
                    "predictions": [{"agent": "a", "label": "scab", "confidence": 0.9}],
                },
                as_node="finalize",
            )
            assert (await graph.compiled.aget_state(config)).values["image"] == {
                "source": old.source,
                "sha256": old.sha256,
            }
        agent = ScriptedAgent("a")
        summary = await _run(tmp_path, images, [agent], resume=True, task=apple_task)
        assert summary.failed == [] and summary.decided == 2
        assert sorted(r for _, r in agent.calls) == [0, 0]

    asyncio.run(scenario())
    assert len(_lines(tmp_path / "out.jsonl")) == 2
