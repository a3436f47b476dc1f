"""Building an image index: from an ImageFolder or a CSV manifest, or from precomputed vectors
(read by ``rag.npz``).

A build scans its source with labels required (``core.image_inputs``: which files count, hidden
files, symlinks, order, labels), hashing every file, and skips the sha256 ids the index already
holds; then it embeds and inserts batch by batch, so an interrupted build resumes where it
stopped and never adds an image twice. Images that cannot be read are skipped and listed in the
report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cli import progress_bar
from core.errors import InputError
from core.image_inputs import ScannedImages, scan_images
from core.images import LabelledImage, SkippedImage
from core.task import Task
from rag.embedder import ImageEmbedder
from rag.npz import ImportedVectors
from rag.store import ImageIndex


@dataclass
class BuildReport:
    """What a build or an import did."""

    seen: int = 0
    added: int = 0
    already_indexed: int = 0
    duplicates: int = 0
    failures: list[SkippedImage] = field(default_factory=list)
    total: int = 0
    embed_s: float = 0.0
    insert_s: float = 0.0
    wall_s: float = 0.0
    id_scheme: str = "sha256 of the image file's bytes"

    def to_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "added": self.added,
            "already_indexed": self.already_indexed,
            "duplicates": self.duplicates,
            "failed": [failure.to_dict() for failure in self.failures],
            "total_in_index": self.total,
            "embed_s": self.embed_s,
            "insert_s": self.insert_s,
            "wall_s": self.wall_s,
            "id_scheme": self.id_scheme,
        }


def scan_source(source: str | Path, task: Task, *, show_progress: bool = True) -> ScannedImages:
    """The labelled images of an ImageFolder (``DIR/<label>/*``) or a CSV manifest
    (``path,label``), each read once to hash it (rules: ``core.image_inputs``); InputError when
    not one of them can be read."""
    bar = progress_bar(disable=not show_progress)
    hashing = bar.add_task("hashing", total=None)

    def hashed(done: int, found: int) -> None:
        # Drawn from the first image read on, so a bad source fails without a bar, and only
        # for several images (like `agents predict`): one image's refusal is one line alone.
        if done == 1 and found > 1:
            bar.start()
        bar.update(hashing, completed=done, total=found)

    try:
        scanned = scan_images([source], task, labels_required=True, progress=hashed)
    finally:
        bar.stop()
    if not scanned.images and scanned.skipped:
        first = scanned.skipped[0]
        raise InputError(
            f"no readable images ({len(scanned.skipped)} unreadable; first: "
            f"{first.source}: {first.reason})",
            path=str(source),
        )
    return scanned


def build_index(
    source: str | Path,
    task: Task,
    embedder: ImageEmbedder,
    index: ImageIndex,
    *,
    split: str = "train",
    limit: int | None = None,
    show_progress: bool = True,
) -> BuildReport:
    """Embed and insert the source's images not yet in ``index`` (at most ``limit`` new ones)."""
    return index_entries(
        scan_source(source, task, show_progress=show_progress),
        task,
        embedder,
        index,
        split=split,
        limit=limit,
        show_progress=show_progress,
    )


def index_entries(
    scanned: ScannedImages,
    task: Task,
    embedder: ImageEmbedder,
    index: ImageIndex,
    *,
    split: str = "train",
    limit: int | None = None,
    show_progress: bool = True,
) -> BuildReport:
    """``build_index`` on a source already scanned (``scan_source``): the images it could not
    read are the first failures, and the scan's time counts in ``wall_s``."""
    if index.task != task.name:
        raise InputError(f"index '{index.name}' is for task '{index.task}', not '{task.name}'")
    started = time.perf_counter()
    report = BuildReport(seen=len(scanned.images) + len(scanned.skipped))
    report.failures += scanned.skipped
    todo: list[LabelledImage] = []
    seen_ids: set[str] = set()
    with progress_bar(disable=not show_progress) as bar:
        present = index.existing_ids([item.image.sha256 for item in scanned.images])
        for item in scanned.images:
            if item.image.sha256 in present:
                report.already_indexed += 1
            elif item.image.sha256 in seen_ids:
                report.duplicates += 1
            else:
                seen_ids.add(item.image.sha256)
                todo.append(item)
        if limit is not None:
            todo = todo[: max(limit, 0)]
        embedding = bar.add_task("embedding", total=len(todo))
        for batch, embed_s in _timed(embedder.stream(todo)):
            report.embed_s += embed_s
            report.failures.extend(batch.failures)
            t0 = time.perf_counter()
            report.added += index.add(
                [item.image.sha256 for item in batch.items],
                batch.vectors,
                model=embedder.model,
                labels=[str(item.truth) for item in batch.items],
                sources=[item.image.source for item in batch.items],
                split=split,
            )
            report.insert_s += time.perf_counter() - t0
            bar.advance(embedding, len(batch.items) + len(batch.failures))
    report.total = index.count()
    report.wall_s = scanned.scan_s + time.perf_counter() - started
    return report


def _timed(it: Iterator[Any]) -> Iterator[tuple[Any, float]]:
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield item, time.perf_counter() - t0


def import_embeddings(
    data: ImportedVectors, index: ImageIndex, *, model: str, split: str = "train"
) -> BuildReport:
    """Insert precomputed vectors of ``model``; ids already present are skipped."""
    started = time.perf_counter()
    unique = len(set(data.ids))
    added = index.add(
        data.ids, data.vectors, model=model, labels=data.labels, sources=data.sources, split=split
    )
    return BuildReport(
        seen=len(data.ids),
        added=added,
        already_indexed=unique - added,
        duplicates=len(data.ids) - unique,
        total=index.count(),
        insert_s=time.perf_counter() - started,
        wall_s=time.perf_counter() - started,
        id_scheme=data.id_scheme,
    )
