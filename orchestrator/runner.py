"""Run the graph over many images: bounded concurrency, one checkpoint thread per image sha256,
one JSONL line per image written whole or not at all, resumable after a kill.

Output file rules:
- each decision is one line ``json + "\\n"`` written by a single ``os.write`` on an append-only
  descriptor, after its image's finished checkpoint is committed;
- ``resume=True`` reads the existing output, drops a truncated last line (the only damage a
  kill can do) by cutting the file back to its last newline, and skips the images already there;
  an image is never written twice;
- without ``resume`` an existing, non-empty output is refused (nothing written is lost);
- with ``run_config`` (what decides the answers: task, agents, policy, trust file, ...) every
  line carries it under ``"run"``, and resuming a file written with another configuration is
  refused, so one file never mixes two setups.

Durability: a line, once written, survives the process being killed (it is in the kernel's
cache); the output and the SQLite checkpoint's WAL are fsynced together once per
``sync_every_s`` (1 s) and at the end. A kill therefore loses no finished image and no finished
agent call. A power cut or kernel crash can take the last second: an image whose line is lost
but whose checkpoint is on disk is written again from its checkpoint on ``--resume`` without
calling an agent; one whose commits are lost too is asked again. Never a duplicate line.

Checkpoints (``orchestrator.checkpoint``, ``durability="sync"``, through
``orchestrator.graph.run_image``, the one resume path): with ``resume`` an image whose thread
finished returns its stored decision and one interrupted mid-graph resumes from its last
checkpoint, so no agent is called again for finished images or finished steps; without
``resume`` the image's thread is cleared first (a fresh run). Threads are keyed by the graph's
configuration fingerprint and the image's sha256 (``ImageGraph.thread_id``): another setup's
checkpoint is never read.

One writer per output: ``run_batch`` holds ``OUT.lock`` (``core.files.writer_lock``) for the
whole run, resumed or not; a second run on the same ``out`` is refused before it writes.

An image on which every agent failed is still decided and written (its trace holds the errors);
``RunSummary.no_answer`` lists them, so a caller can tell a run in which no agent ever answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cli import progress_bar, stderr_console
from core.errors import InputError, os_reason
from core.files import WriterLock, lock_for_writing, output_folder
from core.images import LabelledImage, SkippedImage
from core.jsonio import dumps_json, parse_json
from core.task import Task
from orchestrator.graph import ImageGraph, run_image


@dataclass(frozen=True)
class ExistingOutput:
    """What an output file already holds: decisions by sha256, and a dropped partial line."""

    decisions: dict[str, dict[str, Any]]
    dropped_bytes: int = 0


def read_output(path: Path, *, repair: bool) -> ExistingOutput:
    """Decisions already written to ``path``; with ``repair`` a truncated last line is cut off.

    A complete line that is not a decision means the file is not ours: ``InputError``.
    """
    if not path.exists():
        return ExistingOutput(decisions={})
    if path.is_dir():
        raise InputError("the output is a folder; give a .jsonl file", path=str(path))
    try:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        dropped = len(data) - end
        if dropped and repair:
            with path.open("r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as e:
        raise InputError(f"cannot read the output ({os_reason(e)})", path=str(path)) from None
    decisions: dict[str, dict[str, Any]] = {}
    for n, raw in enumerate(data[:end].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("not a UTF-8 line", path=str(path), line=n) from None
        record = parse_json(text, source=str(path), line=n, what="JSON line")
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            raise InputError("not a decision line (no sha256)", path=str(path), line=n)
        decisions.setdefault(record["sha256"], record)
    return ExistingOutput(decisions=decisions, dropped_bytes=dropped)


def check_output_can_start(out: Path, *, resume: bool) -> None:
    """InputError when ``out`` is a folder, or holds lines and ``resume`` is not set."""
    if out.is_dir():
        raise InputError("the output is a folder; give a .jsonl file", path=str(out))
    if not resume and out.exists() and out.stat().st_size > 0:
        raise InputError(
            "output file exists; pass --resume to continue it, or choose another --out",
            path=str(out),
        )


def check_same_run(existing: ExistingOutput, run_config: Mapping[str, Any], out: Path) -> None:
    """InputError when a line of ``out`` was written with another run configuration (lines
    without one, from older files, are not checked)."""
    config = json.loads(json.dumps(dict(run_config)))
    for before in (d.get("run") for d in existing.decisions.values()):
        if not isinstance(before, dict) or before == config:
            continue
        changed = [
            f"{key} {before.get(key)!r} -> {config.get(key)!r}"
            for key in sorted(set(before) | set(config))
            if before.get(key) != config.get(key)
        ]
        raise InputError(
            "--resume with another configuration than the one that wrote this file ("
            + "; ".join(changed)
            + "); choose another --out",
            path=str(out),
        )


class JsonlWriter:
    """Appends whole lines: one ``os.write`` per line; ``sync`` makes them durable (fsync)."""

    def __init__(self, path: Path) -> None:
        output_folder(path.parent, what="the output")
        self.path = path
        self._unsynced = False
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"cannot write the output ({os_reason(e)})", path=str(path)) from None

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: Sequence[dict[str, Any]]) -> None:
        """Every record as a line, in one ``os.write`` (a kill inside it leaves at most a
        truncated last line, which ``read_output(repair=True)`` cuts off); ``sync`` makes them
        durable."""
        if not records:
            return
        data = "".join(dumps_json(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")
        self._unsynced = True

    def sync(self) -> None:
        """fsync what was written (safe from another thread while lines are written)."""
        if self._unsynced:
            self._unsynced = False
            os.fsync(self._fd)

    def close(self) -> None:
        try:
            self.sync()
        finally:
            os.close(self._fd)


def commit_checkpoint(checkpointer: Any) -> None:
    """Commit the checkpoint's pending writes, when it holds some back (``commit_pending``)."""
    commit = getattr(checkpointer, "commit_pending", None)
    if commit is not None:
        commit()


def sync_to_disk(writer: JsonlWriter, checkpointer: Any) -> None:
    """fsync the checkpoint's journal (when it has one to sync: ``sync_to_disk``), then the
    output: every line written and every commit made so far survive a power cut."""
    sync_checkpoint = getattr(checkpointer, "sync_to_disk", None)
    if sync_checkpoint is not None:
        sync_checkpoint()
    writer.sync()


async def sync_periodically(writer: JsonlWriter, checkpointer: Any, every_s: float) -> None:
    """``sync_to_disk`` every ``every_s`` seconds, in a worker thread, until cancelled."""
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(sync_to_disk, writer, checkpointer)


def default_checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".checkpoints.sqlite")


@dataclass
class RunSummary:
    """What a run did, and the metrics of every decision of this batch in the output."""

    images: int
    decided: int
    already_done: int
    resumed_from_checkpoint: int
    failed: list[SkippedImage] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)
    dropped_partial_bytes: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    no_answer: list[str] = field(default_factory=list)
    """The agents' errors (``gpt: ...; qwen: ...``) of each image decided now on which every
    agent failed (its decision is an abstention, or the retriever's alone)."""

    @property
    def every_agent_failed_everywhere(self) -> bool:
        """Every agent failed on every image decided in this run (and at least one was)."""
        return self.decided > 0 and len(self.no_answer) == self.decided

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "decided": self.decided,
            "already_done": self.already_done,
            "resumed_from_checkpoint": self.resumed_from_checkpoint,
            "failed": [{"source": f.source, "reason": f.reason} for f in self.failed],
            "skipped": [{"source": f.source, "reason": f.reason} for f in self.skipped],
            "dropped_partial_bytes": self.dropped_partial_bytes,
            "no_agent_answered": len(self.no_answer),
            "wall_s": self.wall_s,
            **self.metrics,
        }


def policy_fallback(decision: Mapping[str, Any]) -> str | None:
    """Why the policy fell back to its fallback rule on this decision (the first round it did),
    or None when it decided its own way every round."""
    for a in decision.get("assessments", []) or []:
        why = a.get("fallback") or ""
        if why:
            return str(why)
    return None


def summarise(decisions: Sequence[dict[str, Any]], task: Task) -> dict[str, Any]:
    """Counts, cost and latency of the decisions; coverage (answered / all); where labels are
    known, accuracy and calibration on the answered images (``accuracy_all`` counts an
    abstention as wrong); how often the policy fell back, and the commonest reasons for
    abstaining."""
    from eval.metric_table import Report, calibration_metrics
    from eval.metrics import classification_metrics

    n = len(decisions)
    answered = [d for d in decisions if d.get("label") is not None]
    abstention_reasons = Counter(
        _last_reason(d) for d in decisions if d.get("label") is None
    ).most_common(3)
    fallbacks = [why for d in decisions if (why := policy_fallback(d)) is not None]
    out: dict[str, Any] = {
        "n": n,
        "answered": len(answered),
        "abstained": n - len(answered),
        "coverage": len(answered) / n if n else None,
        "abstention_reasons": [{"reason": r, "n": k} for r, k in abstention_reasons],
        "policy_fallbacks": len(fallbacks),
        "policy_fallback_reasons": [
            {"reason": r, "n": k} for r, k in Counter(w[:160] for w in fallbacks).most_common(3)
        ],
        "reeval_rate": (
            sum(1 for d in decisions if int(d.get("rounds_used", 1)) > 1) / n if n else None
        ),
        "agent_failures": sum(
            1 for d in decisions for p in d.get("predictions", []) if p.get("label") is None
        ),
        "cost_usd": sum(float(d.get("cost_usd", 0.0)) for d in decisions),
        "mean_latency_s": (
            sum(float(d.get("latency_s", 0.0)) for d in decisions) / n if n else None
        ),
    }
    labelled = [d for d in decisions if d.get("truth") in task.labels]
    out["labelled"] = len(labelled)
    if not labelled:
        return out
    answered_labelled = [d for d in labelled if d.get("label") in task.labels]
    out["accuracy_all"] = sum(d["label"] == d["truth"] for d in answered_labelled) / len(labelled)
    out["labelled_answered"] = len(answered_labelled)
    if not answered_labelled:
        return out
    truth = [task.index(d["truth"]) for d in answered_labelled]
    pred = [task.index(d["label"]) for d in answered_labelled]
    conf = [float(d.get("confidence", 0.0)) for d in answered_labelled]
    correct = [int(t == p) for t, p in zip(truth, pred, strict=True)]
    cls = classification_metrics(truth, pred, len(task.labels))
    cal = calibration_metrics(conf, correct, report=Report.RUN_SUMMARY)
    out.update(accuracy=cls.accuracy, macro_f1=cls.macro_f1, **cal.values_with_settings())
    return out


def _last_reason(decision: Mapping[str, Any]) -> str:
    assessments = decision.get("assessments") or []
    reason = str(assessments[-1].get("reason", "")) if assessments else ""
    return reason[:160] or "no reason recorded"


def _describe_update(node: str, update: Any) -> str:
    if not isinstance(update, dict):
        return node
    bits: list[str] = []
    for p in update.get("predictions", []) or []:
        answer = p.error if p.label is None else f"{p.label} {p.confidence:.2f}"
        bits.append(f"{p.agent}: {answer}")
    for a in update.get("assessments", []) or []:
        bits.append(f"{a.policy} -> {a.label} {a.confidence:.2f}")
    for r in update.get("routes", []) or []:
        bits.append(f"next: {r.to} ({r.reason[:60]})")
    return f"{node}: " + "; ".join(bits) if bits else node


class _Run:
    def __init__(
        self,
        graph: ImageGraph,
        task: Task,
        writer: JsonlWriter,
        resume: bool,
        verbose: bool,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.no_answer: list[str] = []
        self.run_config = dict(run_config) if run_config is not None else None
        self.graph = graph
        self.task = task
        self.writer = writer
        self.resume = resume
        self.verbose = verbose
        self.written: set[str] = set()
        self.decisions: list[dict[str, Any]] = []
        self.failed: list[SkippedImage] = []
        self.from_checkpoint = 0
        self.progress: Any = None

    def log(self, text: str) -> None:
        if self.verbose and self.progress is not None:
            self.progress.console.print(text, highlight=False, markup=False)

    async def decide(self, item: LabelledImage) -> dict[str, Any]:
        def log_update(node: str, update: dict[str, Any]) -> None:
            self.log(f"{item.image.name}: {_describe_update(node, update)}")

        done = await run_image(
            self.graph,
            item.image,
            truth=item.truth,
            resume=self.resume,
            on_update=log_update if self.verbose else None,
        )
        if done.from_checkpoint:
            self.from_checkpoint += 1
        if done.resumed_at:
            self.log(f"{item.image.name}: resumed at {', '.join(done.resumed_at)}")
        return done.decision.to_dict()

    def fail(self, item: LabelledImage, reason: str) -> None:
        self.failed.append(SkippedImage(source=item.image.source, reason=reason))
        if self.progress is not None:
            self.progress.console.print(
                f"failed {item.image.source}: {reason}", highlight=False, markup=False
            )

    async def one(self, item: LabelledImage, gate: asyncio.Semaphore, bar: Any) -> None:
        async with gate:
            try:
                decision = await self.decide(item)
            except Exception as e:
                self.fail(item, f"{type(e).__name__}: {e}")
                return
            finally:
                if self.progress is not None:
                    self.progress.advance(bar)
        if item.image.sha256 in self.written:
            return
        line = decision if self.run_config is None else {**decision, "run": self.run_config}
        commit_checkpoint(self.graph.checkpointer)  # the finished thread before its line
        self.writer.write(line)
        self.written.add(item.image.sha256)
        self.decisions.append(decision)
        no_answer = every_agent_failed(decision)
        if no_answer is not None:
            self.no_answer.append(no_answer)


def every_agent_failed(decision: dict[str, Any]) -> str | None:
    """Each agent's first error (``gpt: ...; qwen: ...``) when no agent answered for
    ``decision``; None when one did."""
    predictions = decision.get("predictions") or []
    if any(p.get("label") is not None for p in predictions):
        return None
    errors: dict[str, str] = {}
    for p in predictions:
        errors.setdefault(str(p.get("agent")), str(p.get("error") or "no answer"))
    return "; ".join(f"{agent}: {error}" for agent, error in errors.items()) or "no prediction"


async def run_batch(
    graph: ImageGraph,
    images: Sequence[LabelledImage],
    *,
    task: Task,
    out: Path,
    resume: bool = False,
    concurrency: int = 4,
    show_progress: bool = False,
    verbose: bool = False,
    run_config: Mapping[str, Any] | None = None,
    lock: WriterLock | None = None,
    sync_every_s: float = 1.0,
) -> RunSummary:
    """Classify ``images`` with ``graph``, appending one decision line per image to ``out``
    (each with ``run_config`` under ``"run"`` when given; see the module docstring).

    ``lock`` is the writer's lock of ``out`` when the caller took it already (to refuse a
    second writer before loading models); otherwise ``run_batch`` takes it for the run.
    ``sync_every_s`` is how often the output and the checkpoint are fsynced (and at the end)."""
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, got {concurrency}")
    out = Path(out)
    check_output_can_start(out, resume=resume)
    if lock is not None and lock.target != out:
        raise ValueError(f"the lock given is for {lock.target}, not {out}")
    held = lock if lock is not None else lock_for_writing(out, what="the output")
    try:
        return await _run_locked(
            graph,
            images,
            task,
            out,
            resume,
            concurrency,
            show_progress,
            verbose,
            run_config,
            sync_every_s,
        )
    finally:
        if lock is None:
            held.release()


async def _run_locked(
    graph: ImageGraph,
    images: Sequence[LabelledImage],
    task: Task,
    out: Path,
    resume: bool,
    concurrency: int,
    show_progress: bool,
    verbose: bool,
    run_config: Mapping[str, Any] | None,
    sync_every_s: float,
) -> RunSummary:
    started = time.perf_counter()
    check_output_can_start(out, resume=resume)  # again: another writer may just have ended
    existing = read_output(out, repair=True)
    if run_config is not None:
        check_same_run(existing, run_config, out)
    todo = [item for item in images if item.image.sha256 not in existing.decisions]
    writer = JsonlWriter(out)
    run = _Run(graph, task, writer, resume, verbose, run_config)
    run.written.update(existing.decisions)
    gate = asyncio.Semaphore(concurrency)
    progress = progress_bar(disable=not show_progress)
    syncer = asyncio.create_task(sync_periodically(writer, graph.checkpointer, sync_every_s))
    try:
        with progress:
            run.progress = progress if show_progress else None
            bar = progress.add_task("classifying", total=len(images))
            progress.advance(bar, len(images) - len(todo))
            if existing.dropped_bytes and show_progress:
                stderr_console().print(
                    f"dropped a truncated last line ({existing.dropped_bytes} bytes) of {out}"
                )
            await asyncio.gather(*(run.one(item, gate, bar) for item in todo))
    finally:
        syncer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await syncer
        sync_to_disk(writer, graph.checkpointer)
        writer.close()
    batch = {item.image.sha256 for item in images}
    all_decisions = [d for sha, d in existing.decisions.items() if sha in batch] + run.decisions
    return RunSummary(
        images=len(images),
        decided=len(run.decisions),
        already_done=len(images) - len(todo),
        resumed_from_checkpoint=run.from_checkpoint,
        failed=run.failed,
        no_answer=run.no_answer,
        dropped_partial_bytes=existing.dropped_bytes,
        metrics=summarise(all_decisions, task),
        wall_s=time.perf_counter() - started,
    )
