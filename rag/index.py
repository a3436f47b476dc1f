"""Building an image index: from an ImageFolder or a CSV manifest, or from precomputed vectors.

A build scans its source with labels required (``core.image_inputs``: which files count, hidden
files, symlinks, order, labels), hashing every file, and skips the sha256 ids the index already
holds; then it embeds and inserts batch by batch, so an interrupted build resumes where it
stopped and never adds an image twice. Images that cannot be read are skipped and listed in the
report.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.cli import progress_bar
from core.errors import InputError
from core.image_inputs import ScannedImages, scan_images
from core.images import LabelledImage, SkippedImage
from core.task import Task
from rag.embedder import ImageEmbedder
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
    (``path,label``), each read once to hash it (rules: ``core.image_inputs``)."""
    bar = progress_bar(disable=not show_progress)
    hashing = bar.add_task("hashing", total=None)

    def hashed(done: int, found: int) -> None:
        if done == 1:  # drawn from the first image read on, so a bad source fails without a bar
            bar.start()
        bar.update(hashing, completed=done, total=found)

    try:
        return scan_images([source], task, labels_required=True, progress=hashed)
    finally:
        bar.stop()


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


@dataclass(frozen=True)
class ImportedVectors:
    ids: list[str]
    vectors: np.ndarray
    labels: list[str]
    sources: list[str]
    id_scheme: str


def read_embeddings_npz(path: str | Path, task: Task) -> ImportedVectors:
    """Read ``embeddings`` [n, d], ``labels`` [n] and optional ``image`` [n] names, unpickled.

    Ids: sha256 of the UTF-8 string ``"image:" + name`` (no image bytes exist), or without
    names, sha256 of the row's float32 vector bytes.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError("no such embeddings file", path=str(file))
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except ValueError as e:
        raise InputError(
            f"refused: holds pickled objects or is malformed ({e})", path=str(file)
        ) from None
    except (OSError, EOFError) as e:
        raise InputError(f"not a readable .npz file ({e})", path=str(file)) from None
    for key in ("embeddings", "labels"):
        if key not in arrays:
            raise InputError(f"missing array (has: {', '.join(arrays)})", path=str(file), field=key)
    vectors = np.asarray(arrays["embeddings"])
    if vectors.ndim != 2 or vectors.shape[0] == 0 or not np.issubdtype(vectors.dtype, np.number):
        raise InputError(
            f"must be a non-empty numeric [n, d] array, got {vectors.dtype} {vectors.shape}",
            path=str(file),
            field="embeddings",
        )
    vectors = vectors.astype(np.float32)
    bad = ~np.isfinite(vectors).all(axis=1) | (np.abs(vectors).sum(axis=1) == 0)
    bad_rows = np.flatnonzero(bad)
    if len(bad_rows):
        raise InputError(
            f"row {int(bad_rows[0])} is zero or not finite", path=str(file), field="embeddings"
        )
    raw_labels = arrays["labels"]
    names = arrays.get("image")
    n = len(vectors)
    for key, arr in (("labels", raw_labels), ("image", names)):
        if arr is not None and arr.shape != (n,):
            raise InputError(f"must have shape ({n},), got {arr.shape}", path=str(file), field=key)
    labels = [
        task.require_label(str(text), path=str(file), field=f"labels[{i}]")
        for i, text in enumerate(raw_labels.tolist())
    ]
    if names is not None:
        sources = [str(name) for name in names.tolist()]
        ids = [hashlib.sha256(f"image:{name}".encode()).hexdigest() for name in sources]
        scheme = "sha256 of 'image:' + the npz 'image' name (no image bytes in the file)"
    else:
        ids = [hashlib.sha256(row.tobytes()).hexdigest() for row in vectors]
        sources = [f"{file.name}#{i}" for i in range(n)]
        scheme = "sha256 of the row's float32 embedding bytes (no names in the file)"
    return ImportedVectors(ids, vectors, labels, sources, scheme)


def import_embeddings(
    data: ImportedVectors, index: ImageIndex, *, model: str, split: str = "train"
) -> BuildReport:
    """Insert precomputed vectors of ``model``; ids already present are skipped."""
    started = time.perf_counter()
    unique = len(set(data.ids))
    present = index.existing_ids(data.ids)
    added = index.add(
        data.ids, data.vectors, model=model, labels=data.labels, sources=data.sources, split=split
    )
    return BuildReport(
        seen=len(data.ids),
        added=added,
        already_indexed=len(present),
        duplicates=len(data.ids) - unique,
        total=index.count(),
        insert_s=time.perf_counter() - started,
        wall_s=time.perf_counter() - started,
        id_scheme=data.id_scheme,
    )
