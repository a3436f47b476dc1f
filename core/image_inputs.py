"""Image inputs: image files, folders and CSV manifests, scanned by one set of rules into
``LabelledImage`` records and the ``SkippedImage`` records of what could not be read.

``trustorch run`` scans with labels optional (``orchestrator.inputs``), ``trustorch index build``
with labels required (``rag.index``).

Sources, in the order given:

- a ``.csv`` file (suffix in any case) is a manifest: a ``path`` (or ``image`` / ``file``) column
  and a ``label`` (or ``truth`` / ``category``) column, which may be left out unless labels are
  required. Relative paths are read from the manifest's folder, http(s) URLs are fetched (any
  other scheme is refused); rows keep file order. It is parsed by the ``csv`` module, so a quoted
  field may hold commas and line breaks, and a row's line is the line it starts on. Every
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

A source that is an http(s) URL is one image without a label (when labels are optional).

Each image is read once under the byte cap, hashing its bytes as they come
(``core.images.image_ref``; a FIFO or a device is refused before a byte is read); with
``decodes`` it is decoded in full too (byte and pixel caps, truncated data). An image that
cannot be read (or decoded) is skipped with its reason, and with ``unique`` an image with the
same bytes as an earlier one is skipped as a duplicate. A source that does not exist is an
InputError.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError, os_reason
from core.images import (
    IMAGE_SUFFIXES,
    ImageRef,
    LabelledImage,
    SkippedImage,
    image_ref,
    url_scheme,
)
from core.reading import read_file_bytes
from core.tables import check_unique_columns, csv_records
from core.task import Task

PATH_COLUMNS = ("path", "image", "file")
LABEL_COLUMNS = ("label", "truth", "category")
MANIFEST_SUFFIX = ".csv"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

# An image a source names before it is read: its path or URL, its label, its manifest line.
_Named = tuple[str, str | None, int | None]


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
        if url_scheme(str(source)) is not None and not labels_required:
            named.append((str(source), None, None))
            continue
        named += _named_images(Path(source), task, labels_required=labels_required, out=out)
    first_with: dict[str, str] = {}
    for done, (path, truth, line) in enumerate(named, start=1):
        try:
            ref = _read(path, decodes=decodes)
        except InputError as e:
            out.skipped.append(SkippedImage(path, e.message))
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


def _read(source: str, *, decodes: bool) -> ImageRef:
    """The identity of ``source`` (a path or an http(s) URL), from one bounded read; InputError
    with the reason it cannot be read."""
    if url_scheme(source) is None and not os.path.lexists(source):
        raise InputError("no such file", path=source)
    return image_ref(source, decodes=decodes)


def _named_images(
    source: Path, task: Task, *, labels_required: bool, out: ScannedImages
) -> list[_Named]:
    if source.is_dir():
        return _folder_images(source, task, labels_required=labels_required, out=out)
    # Anything else that exists (a FIFO, a device too) is read by the bounded readers, which
    # refuse what is not a regular file before reading a byte.
    if source.exists() and source.suffix.lower() == MANIFEST_SUFFIX:
        return _manifest_images(source, task, labels_required=labels_required)
    if source.exists():
        if labels_required:
            raise InputError(
                "an image file has no label: give a folder DIR/<label>/<image> or a CSV "
                "manifest (path,label)",
                path=str(source),
            )
        return [(str(source), None, None)]
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
            named.append((str(path), None, None))
            continue
        if labels_required:
            truth: str | None = task.require_label(path.name, path=str(path))
        else:
            truth = task.normalise_label(path.name)
        named += [(str(image), truth, None) for image in _walk(path, inside, out)]
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
    data = read_file_bytes(manifest, what="manifest", max_bytes=MAX_MANIFEST_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 CSV manifest", path=str(manifest)) from None
    if "\x00" in text:
        raise InputError("not a UTF-8 CSV manifest (it holds NUL bytes)", path=str(manifest))
    records = csv_records(text, path=str(manifest))
    first = next(records, None)
    header = [field.strip() for field in first[1]] if first is not None else []
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
    path_at = header.index(path_col)
    label_at = header.index(label_col) if label_col else None
    named: list[_Named] = []
    for line, fields in records:
        if any(extra.strip() for extra in fields[len(header) :]):
            raise InputError(
                "row has more fields than the header (quote a path that holds a comma)",
                path=str(manifest),
                line=line,
            )
        raw_path = fields[path_at].strip() if path_at < len(fields) else ""
        if not raw_path:
            raise InputError("empty image path", path=str(manifest), line=line, field=path_col)
        raw_label = ""
        if label_at is not None and label_at < len(fields):
            raw_label = fields[label_at].strip()
        if labels_required and not raw_label:
            raise InputError("empty label", path=str(manifest), line=line, field=label_col)
        label = (
            task.require_label(raw_label, path=str(manifest), line=line, field=label_col)
            if raw_label
            else None
        )
        named.append((_manifest_source(raw_path, manifest), label, line))
    if not named:
        raise InputError("manifest has no rows", path=str(manifest))
    return named


def _manifest_source(raw_path: str, manifest: Path) -> str:
    """A manifest's path cell as a source: a URL stays a URL (an http(s) one is fetched, any
    other scheme is refused when read), a relative path is read from the manifest's folder."""
    if url_scheme(raw_path) is not None:
        return raw_path
    image = Path(raw_path)
    return str(image if image.is_absolute() else manifest.parent / image)
