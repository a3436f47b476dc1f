"""Shards of a distributed run: how the images are split, where each shard's lines and
checkpoint live, how a shard is committed, and how committed shards reach the one ``--out``.

Layout, beside ``--out`` (``OUT.shards/``; on a cluster every node must see it at the same path):

- ``plan.json``: the shards, each a list of image sha256s, written once (atomically) by the
  first run and kept by every ``--resume``, so an image stays in its shard and finds its
  checkpoint again; images a resumed run adds go to new shards.
- ``shard-NNNNN.jsonl``: the shard's working file. The worker appends one line per decided image
  (``orchestrator.runner.run_batch``: one ``os.write`` per line, fsynced once a second and at
  the end, resumable, under its own writer lock).
- ``shard-NNNNN.checkpoints.sqlite``: the shard's LangGraph checkpoint (one thread per image),
  unless the run checkpoints into PostgreSQL (``--checkpoint postgresql://...``): then every
  shard writes its threads there, holding its own advisory lock (the run's configuration and
  the shard's index, ``checkpoint_postgres.configuration_lock``), and once a shard is committed
  its worker deletes the threads of the images it decided (unless ``--keep-checkpoint``).
- ``shard-NNNNN.done.jsonl``: the committed shard: when every image of the shard was tried, the
  worker renames the working file to it (``os.replace`` after ``fsync``, then the folder is
  synced), so a committed shard is whole.

Exactly once: only the driver writes ``--out``, holding ``OUT.lock``. It appends the lines of a
committed shard whose sha256 is not in ``--out`` yet (one write, then ``fsync``), then deletes the
committed file. A crash between the two leaves lines that the next merge skips; a crash inside
the write leaves a truncated last line that ``--resume`` cuts off before merging again.

Resume rules:
- a worker killed: Ray restarts the actor (which builds its agents again) and retries the shard;
  the retry skips the images already in the working file and resumes the others from the
  shard's checkpoint, so no finished image or finished step reaches an agent again;
- the driver killed (or the whole cluster restarted): ``--resume`` merges every committed shard,
  then runs the shards of the plan that still have images outside ``--out``, each continuing its
  working file and checkpoint;
- without ``--resume`` a run refuses an ``OUT.shards/`` that holds anything, as it refuses a
  non-empty ``--out``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.files import fsync_path, write_text_atomically
from core.images import LabelledImage, SkippedImage
from core.jsonio import dumps_json, parse_json

SHARDS_PER_WORKER = 4
_SHARD_FILE = re.compile(r"shard-(\d+)\.")


def shard_folder(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def plan_shards(shas: Sequence[str], *, workers: int, shard_size: int | None) -> list[list[str]]:
    """``shas`` in their order, cut into consecutive shards of ``shard_size`` (by default about
    ``SHARDS_PER_WORKER`` shards per worker)."""
    if not shas:
        return []
    size = shard_size or max(1, math.ceil(len(shas) / (workers * SHARDS_PER_WORKER)))
    return [list(shas[i : i + size]) for i in range(0, len(shas), size)]


@dataclass(frozen=True)
class ShardJob:
    """One shard for a worker: its images and files, and where it checkpoints."""

    index: int
    images: tuple[LabelledImage, ...]
    folder: Path
    checkpoint: str | None = None
    """A PostgreSQL URL shared by every shard; None: the shard's own SQLite file."""
    resume: bool = False
    """The run is a ``--resume``: the images' threads in a shared checkpoint are continued."""
    keep_threads: bool = False
    """Keep a committed shard's threads in the shared checkpoint (``--keep-checkpoint``)."""

    @property
    def work_path(self) -> Path:
        return self.folder / f"shard-{self.index:05d}.jsonl"

    @property
    def done_path(self) -> Path:
        return self.folder / f"shard-{self.index:05d}.done.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / f"shard-{self.index:05d}.checkpoints.sqlite"

    @property
    def checkpoint_target(self) -> str | Path:
        return self.checkpoint or self.checkpoint_path

    @property
    def resumes_threads(self) -> bool:
        """Whether the images' existing threads are continued: always in the shard's own file
        (new with the run), in a shared checkpoint only on ``--resume`` or on a retry of the
        shard (its working file exists), never on another run's threads of the same setup."""
        return self.checkpoint is None or self.resume or self.work_path.exists()


@dataclass
class ShardResult:
    """What a worker reports for a shard (the lines themselves are in the committed file)."""

    index: int
    decided: int = 0
    resumed_from_checkpoint: int = 0
    failed: list[SkippedImage] = field(default_factory=list)
    already_committed: bool = False
    worker: str = ""
    cpu_s: float = 0.0
    """CPU seconds the worker's process spent on the shard (every thread of it)."""


class ShardFolder:
    """``OUT.shards/``: the plan, the shards' files, committed shards."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = shard_folder(out)

    @property
    def plan_path(self) -> Path:
        return self.path / "plan.json"

    def check_can_start(self, *, resume: bool) -> None:
        if not resume and self.path.is_dir() and any(self.path.iterdir()):
            raise InputError(
                "a distributed run left its shards here; pass --resume to continue it, or "
                "choose another --out",
                path=str(self.path),
            )

    def plan(self, shas: Sequence[str], *, workers: int, shard_size: int | None) -> list[list[str]]:
        """The stored plan extended with shards for the images it does not hold (written
        atomically whenever it changes)."""
        stored = self._read_plan()
        planned = {sha for shard in stored for sha in shard}
        new = [sha for sha in shas if sha not in planned]
        if stored and not new:
            return stored
        shards = stored + plan_shards(new, workers=workers, shard_size=shard_size)
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomically(
            self.plan_path, dumps_json({"shards": shards}) + "\n", what="the shard plan"
        )
        return shards

    def _read_plan(self) -> list[list[str]]:
        if not self.plan_path.exists():
            return []
        data = parse_json(
            self.plan_path.read_text(encoding="utf-8"),
            source=str(self.plan_path),
            what="shard plan",
        )
        shards = data.get("shards") if isinstance(data, dict) else None
        if not isinstance(shards, list) or not all(
            isinstance(s, list) and all(isinstance(x, str) for x in s) for s in shards
        ):
            raise InputError("not a shard plan (no list of sha256 lists)", path=str(self.plan_path))
        return shards

    def jobs(
        self,
        shards: Sequence[Sequence[str]],
        images: Iterable[LabelledImage],
        done: set[str],
        **settings: Any,
    ) -> list[ShardJob]:
        """A job for every shard with images of this run that are not in ``done``
        (``settings``: the other fields of ``ShardJob``, the same for every shard)."""
        by_sha = {item.image.sha256: item for item in images}
        jobs = []
        for index, shard in enumerate(shards):
            todo = tuple(by_sha[s] for s in shard if s in by_sha and s not in done)
            if todo:
                jobs.append(ShardJob(index=index, images=todo, folder=self.path, **settings))
        return jobs

    def committed(self) -> list[Path]:
        """Committed shard files, in shard order."""
        if not self.path.is_dir():
            return []
        return sorted(self.path.glob("shard-*.done.jsonl"))

    def remove_shard_files(self, index: int) -> None:
        for path in self.path.glob(f"shard-{index:05d}.*"):
            path.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the folder once every image is in ``--out``."""
        if not self.path.is_dir():
            return
        for path in self.path.iterdir():
            if path.is_file():
                path.unlink()
        self.path.rmdir()


def shard_index(path: Path) -> int:
    match = _SHARD_FILE.match(path.name)
    if match is None:
        raise ValueError(f"not a shard file: {path}")
    return int(match.group(1))


def commit_shard(job: ShardJob) -> None:
    """Rename the shard's working file to its committed name, durably."""
    if not job.work_path.exists():
        job.work_path.touch()
    fsync_path(job.work_path)
    os.replace(job.work_path, job.done_path)
    fsync_path(job.folder)


def merge_committed(
    folder: ShardFolder, writer: Any, written: set[str], *, keep: set[int] = frozenset()
) -> list[dict[str, Any]]:
    """Append every committed shard's new lines to ``--out`` through ``writer`` (the driver's,
    under ``OUT.lock``), then delete the shard's files (all but the committed file's
    checkpoint for shards in ``keep``, whose failed images may resume from it). Returns the
    decisions appended, without their ``"run"``."""
    from orchestrator.runner import read_output

    appended: list[dict[str, Any]] = []
    for path in folder.committed():
        lines = [
            record
            for sha, record in read_output(path, repair=False).decisions.items()
            if sha not in written
        ]
        writer.write_many(lines)
        writer.sync()  # durable in --out before the shard's own copy goes
        written.update(r["sha256"] for r in lines)
        appended += [{k: v for k, v in r.items() if k != "run"} for r in lines]
        index = shard_index(path)
        if index in keep:
            path.unlink()
        else:
            folder.remove_shard_files(index)
    return appended


SHARD_LOCK_WAIT_S = 15.0
"""How long a shard waits for its lock in a shared checkpoint: the database may not have seen
yet that the worker that ran the shard before was killed."""


def preload() -> None:
    """Import what ``run_shard`` needs (the runner, the checkpointers: most of a second of CPU)
    ahead of the first shard: a worker calls it while it starts, so that the time and CPU of
    its first shard are those of its images."""
    import orchestrator.checkpoint
    import orchestrator.runner  # noqa: F401


async def run_shard(parts: Any, job: ShardJob, *, worker: str) -> ShardResult:
    """Decide the images of ``job`` with the built ``parts`` (in a worker, ``-j`` images at
    once: the recipe's ``concurrency``), then commit the shard. A shard committed already (a
    retry after the commit) is not run again."""
    from orchestrator.checkpoint import open_checkpointer
    from orchestrator.runner import run_batch

    if job.done_path.exists() and job.checkpoint is None:
        return ShardResult(index=job.index, already_committed=True, worker=worker)
    opened = open_checkpointer(
        job.checkpoint_target,
        owner=parts.recipe.run_config if job.checkpoint else None,
        part=str(job.index),
        lock_wait_s=SHARD_LOCK_WAIT_S,
    )
    async with opened as saver:
        graph = parts.graph(saver)
        if job.done_path.exists():
            await _forget_committed(graph, job)
            return ShardResult(index=job.index, already_committed=True, worker=worker)
        summary = await run_batch(
            graph,
            job.images,
            task=parts.task,
            out=job.work_path,
            resume=job.resumes_threads,
            concurrency=parts.recipe.concurrency,
            run_config=parts.recipe.run_config,
        )
        commit_shard(job)
        await _forget_committed(graph, job)
    return ShardResult(
        index=job.index,
        decided=summary.decided,
        resumed_from_checkpoint=summary.resumed_from_checkpoint,
        failed=summary.failed,
        worker=worker,
    )


async def _forget_committed(graph: Any, job: ShardJob) -> None:
    """Delete the shared checkpoint's threads of the images in the committed shard: their lines
    are durable in it, and a failed image keeps its thread for ``--resume``."""
    from orchestrator.runner import read_output

    if job.checkpoint is None or job.keep_threads:
        return
    decided = read_output(job.done_path, repair=False).decisions
    for item in job.images:
        if item.image.sha256 in decided:
            await graph.forget(item.image)
