"""Collect the images of a run from files, folders and CSV manifests.

- a file: one image (no true label);
- a folder: every image below it, sorted; in the ImageFolder layout ``DIR/<label>/*`` the
  first sub-folder names the true label (when it is one of the task's labels);
- a ``.csv`` file: a manifest (``core.manifest``) with a ``path`` column and an optional
  ``label`` column; relative paths are read from the CSV's folder.

Unreadable images (missing, not decodable in full, over the pixel cap) are reported and skipped;
a duplicate image (same bytes) is kept once. A path that does not exist, a manifest label outside
the task, or inputs that leave no image to classify are bad input and raise ``InputError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError, os_reason
from core.images import IMAGE_SUFFIXES, ImageRef, LabelledImage, decode_image
from core.manifest import read_manifest
from core.task import Task


@dataclass(frozen=True)
class SkippedInput:
    """An input that was not classified, and why."""

    source: str
    reason: str


@dataclass
class CollectedImages:
    """The images to classify, in input order, and what was skipped."""

    images: list[LabelledImage] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)
    duplicates: list[SkippedInput] = field(default_factory=list)

    @property
    def labelled(self) -> int:
        return sum(1 for item in self.images if item.truth is not None)


def _readable_image(path: Path) -> str | None:
    """None when the file decodes in full (``core.images.decode_image``: pixel cap, truncated
    data), else the reason it does not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot read the file ({os_reason(e)})"
    try:
        decode_image(data, source=str(path))
    except InputError as e:
        return e.message
    return None


class _Collector:
    def __init__(self, task: Task) -> None:
        self.task = task
        self.out = CollectedImages()
        self._seen: dict[str, str] = {}

    def add(self, path: Path, truth: str | None) -> None:
        problem = _readable_image(path)
        if problem is not None:
            self.out.skipped.append(SkippedInput(source=str(path), reason=problem))
            return
        ref = ImageRef.from_path(path)
        first = self._seen.get(ref.sha256)
        if first is not None:
            reason = f"same bytes as {first}"
            self.out.duplicates.append(SkippedInput(source=str(path), reason=reason))
            return
        self._seen[ref.sha256] = ref.source
        self.out.images.append(LabelledImage(image=ref, truth=truth))

    def add_folder(self, folder: Path) -> None:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            parts = path.relative_to(folder).parts
            truth = self.task.normalise_label(parts[0]) if len(parts) > 1 else None
            self.add(path, truth)

    def add_manifest(self, manifest: Path) -> None:
        for entry in read_manifest(manifest, self.task, labels_required=False):
            self.add(entry.path, entry.label)


def collect_images(paths: Sequence[str | Path], *, task: Task) -> CollectedImages:
    """Every image named by ``paths`` (files, folders, CSV manifests), de-duplicated by sha256.

    InputError when none is left to classify (says how many were skipped)."""
    if not paths:
        raise InputError("no input paths given")
    collector = _Collector(task)
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            collector.add_folder(path)
        elif path.is_file() and path.suffix.lower() == ".csv":
            collector.add_manifest(path)
        elif path.is_file():
            collector.add(path, None)
        else:
            raise InputError("no such file or folder", path=str(path))
    out = collector.out
    if not out.images:
        where = ", ".join(str(p) for p in paths)
        why = f"{len(out.skipped)} unreadable, {len(out.duplicates)} duplicate"
        first = f"; first: {out.skipped[0].source}: {out.skipped[0].reason}" if out.skipped else ""
        raise InputError(
            f"no readable images in {where} ({why} skipped; looked for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}){first}"
        )
    return out
