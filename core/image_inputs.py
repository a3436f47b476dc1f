"""Image inputs: image files, folders and CSV manifests, scanned by one set of rules into
``LabelledImage`` records and the ``SkippedImage`` records of what could not be read.

``trustorch run`` scans with labels optional (``orchestrator.inputs``), ``trustorch index build``
with labels required (``rag.index``).

Sources, in the order given:

- a ``.csv`` file (suffix in any case) is a manifest: a ``path`` (or ``image`` / ``file``) column
  and a ``label`` (or ``truth`` / ``category``) column, which may be left out unless labels are
  required. Relative paths are read from the manifest's folder; rows keep file order. Every
  problem of the manifest itself is an InputError naming it, its line (the header is line 1) and
  the column.
- any other file is one image without a label (an InputError when labels are required);
- a folder is walked to any depth, in the ImageFolder layout ``root/<label>/.../<image>``.

Folder rules:

- an image is a file whose suffix, in any case, is in ``core.images.IMAGE_SUFFIXES``; other
  files are ignored;
- a file or folder below the root whose name starts with ``.`` is ignored, with all it holds;
- symlinks are followed, to files and to folders; a link back to a folder it is inside (a loop)
  is not, and a link to nothing is ignored;
- images come sorted by their path below the root, compared folder by folder;
- the first folder below the root names the label, normalised by the task
  (``Task.normalise_label``: 'Black rot' gives 'black-rot'). With labels optional, a folder name
  that is no label of the task, or an image right in the root, gives an image without a label.
  With labels required, either is an InputError naming the folder or the image, and so is a
  folder without any image;
- a folder that cannot be listed is skipped, with its reason.

Each image is read once, to hash its bytes (``core.images.image_ref``); with ``decodes`` it is
decoded in full too (byte and pixel caps, truncated data). An image that cannot be read (or
decoded) is skipped with its reason, and with ``unique`` an image with the same bytes as an
earlier one is skipped as a duplicate. A source that does not exist is an InputError.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError, os_reason
from core.images import IMAGE_SUFFIXES, ImageRef, LabelledImage, SkippedImage, image_ref
from core.tables import check_unique_columns
from core.task import Task

PATH_COLUMNS = ("path", "image", "file")
LABEL_COLUMNS = ("label", "truth", "category")
MANIFEST_SUFFIX = ".csv"

# A file a source names before it is read: its path, its label, its manifest line.
_Named = tuple[Path, str | None, int | None]


@dataclass
class ScannedImages:
    """The images of the sources in order, what could not be read, the duplicates, and the
    seconds the scan took."""

    images: list[LabelledImage] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)
    duplicates: list[SkippedImage] = field(default_factory=list)
    scan_s: float = 0.0

    @property
    def labelled(self) -> int:
        return sum(1 for item in self.images if item.truth is not None)


def scan_images(
    sources: Sequence[str | Path],
    task: Task,
    *,
    labels_required: bool,
    decodes: bool = False,
    unique: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ScannedImages:
    """Every image the sources name, read once (see the module docstring for the rules).

    ``progress`` is called with (images read, images found) after each image."""
    started = time.perf_counter()
    out = ScannedImages()
    named: list[_Named] = []
    for source in sources:
        named += _named_images(Path(source), task, labels_required=labels_required, out=out)
    first_with: dict[str, str] = {}
    for done, (path, truth, line) in enumerate(named, start=1):
        try:
            ref = _read(path, decodes=decodes)
        except InputError as e:
            out.skipped.append(SkippedImage(str(path), e.message))
        else:
            if unique and ref.sha256 in first_with:
                reason = f"same bytes as {first_with[ref.sha256]}"
                out.duplicates.append(SkippedImage(ref.source, reason))
            else:
                first_with[ref.sha256] = ref.source
                out.images.append(LabelledImage(ref, truth, line=line))
        if progress is not None:
            progress(done, len(named))
    out.scan_s = time.perf_counter() - started
    return out


def _read(path: Path, *, decodes: bool) -> ImageRef:
    """``path``'s identity, from one read; InputError with the reason it cannot be read."""
    if not path.exists():
        raise InputError("no such file", path=str(path))
    try:
        return image_ref(str(path), decodes=decodes)
    except OSError as e:
        raise InputError(f"cannot read the file ({os_reason(e)})", path=str(path)) from None


def _named_images(
    source: Path, task: Task, *, labels_required: bool, out: ScannedImages
) -> list[_Named]:
    if source.is_dir():
        return _folder_images(source, task, labels_required=labels_required, out=out)
    if source.is_file() and source.suffix.lower() == MANIFEST_SUFFIX:
        return _manifest_images(source, task, labels_required=labels_required)
    if source.is_file():
        if labels_required:
            raise InputError(
                "an image file has no label: give a folder DIR/<label>/<image> or a CSV "
                "manifest (path,label)",
                path=str(source),
            )
        return [(source, None, None)]
    what = "folder or manifest" if labels_required else "file or folder"
    raise InputError(f"no such {what}", path=str(source))


def _folder_images(
    root: Path, task: Task, *, labels_required: bool, out: ScannedImages
) -> list[_Named]:
    named: list[_Named] = []
    inside = frozenset({os.path.realpath(root)})
    for path, is_folder in _entries(root, out):
        if not is_folder:
            if labels_required:
                raise InputError(
                    "image is not in a label folder (DIR/<label>/<image>)", path=str(path)
                )
            named.append((path, None, None))
            continue
        if labels_required:
            truth: str | None = task.require_label(path.name, path=str(path))
        else:
            truth = task.normalise_label(path.name)
        named += [(image, truth, None) for image in _walk(path, inside, out)]
    if labels_required and not named:
        raise InputError(
            f"no images found: expected DIR/<label>/<image> with labels {', '.join(task.labels)}",
            path=str(root),
        )
    return named


def _walk(folder: Path, inside: frozenset[str], out: ScannedImages) -> list[Path]:
    """The images below ``folder``, which is inside the folders ``inside`` (real paths)."""
    real = os.path.realpath(folder)
    if real in inside:
        return []
    images: list[Path] = []
    for path, is_folder in _entries(folder, out):
        images += _walk(path, inside | {real}, out) if is_folder else [path]
    return images


def _entries(folder: Path, out: ScannedImages) -> list[tuple[Path, bool]]:
    """The visible sub-folders and images of ``folder`` sorted by name, each with whether it is
    a folder; a folder that cannot be listed is skipped."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as e:
        out.skipped.append(SkippedImage(str(folder), f"cannot read the folder ({os_reason(e)})"))
        return []
    kept: list[tuple[Path, bool]] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            kept.append((Path(entry.path), True))
        elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            kept.append((Path(entry.path), False))
    return kept


def _manifest_images(manifest: Path, task: Task, *, labels_required: bool) -> list[_Named]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 CSV manifest", path=str(manifest)) from None
    except OSError as e:
        raise InputError(f"cannot read the manifest ({os_reason(e)})", path=str(manifest)) from None
    reader = csv.DictReader(text.splitlines())
    header = [(h or "").strip() for h in reader.fieldnames or []]
    check_unique_columns(header, path=str(manifest))
    path_col = next((c for c in PATH_COLUMNS if c in header), None)
    label_col = next((c for c in LABEL_COLUMNS if c in header), None)
    missing = [
        f"'{names[0]}'"
        for names, found in ((PATH_COLUMNS, path_col), (LABEL_COLUMNS, label_col))
        if found is None and (names is PATH_COLUMNS or labels_required)
    ]
    if path_col is None or missing:
        raise InputError(
            f"manifest needs a {' and a '.join(missing)} column "
            f"(columns: {', '.join(header) or 'none'})",
            path=str(manifest),
            line=1,
        )
    named: list[_Named] = []
    for row in reader:
        line = reader.line_num
        row = {(k or "").strip(): v for k, v in row.items()}
        raw_path = str(row.get(path_col) or "").strip()
        if not raw_path:
            raise InputError("empty image path", path=str(manifest), line=line, field=path_col)
        raw_label = str(row.get(label_col) or "").strip() if label_col else ""
        if labels_required and not raw_label:
            raise InputError("empty label", path=str(manifest), line=line, field=label_col)
        label = (
            task.require_label(raw_label, path=str(manifest), line=line, field=label_col)
            if raw_label
            else None
        )
        image = Path(raw_path)
        named.append((image if image.is_absolute() else manifest.parent / image, label, line))
    if not named:
        raise InputError("manifest has no rows", path=str(manifest))
    return named
