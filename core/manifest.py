"""CSV manifests of images: a path column and a label column, read by ``trustorch run`` (labels
optional) and ``trustorch index build`` (labels required).

Columns: ``path`` (or ``image`` / ``file``) and ``label`` (or ``truth`` / ``category``);
relative paths are read from the manifest's folder. Every problem is an InputError naming the
manifest, its line (the header is line 1) and the column.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, os_reason
from core.tables import check_unique_columns
from core.task import Task

PATH_COLUMNS = ("path", "image", "file")
LABEL_COLUMNS = ("label", "truth", "category")


@dataclass(frozen=True)
class ManifestEntry:
    """One image of a manifest: its path, its true label (None when not given), its line."""

    path: Path
    label: str | None
    line: int


def read_manifest(path: str | Path, task: Task, *, labels_required: bool) -> list[ManifestEntry]:
    """The manifest's images in file order, labels normalised to the task's (see the module
    docstring); InputError for a bad manifest, a label outside the task, or no rows."""
    manifest = Path(path)
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError("no such manifest", path=str(manifest)) from None
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
    if missing:
        raise InputError(
            f"manifest needs a {' and a '.join(missing)} column "
            f"(columns: {', '.join(header) or 'none'})",
            path=str(manifest),
            line=1,
        )
    assert path_col is not None
    entries: list[ManifestEntry] = []
    for row in reader:
        line = reader.line_num
        row = {(k or "").strip(): v for k, v in row.items()}
        raw_path = str(row.get(path_col) or "").strip()
        if not raw_path:
            raise InputError("empty image path", path=str(manifest), line=line, field=path_col)
        raw_label = str(row.get(label_col) or "").strip() if label_col else ""
        label = task.normalise_label(raw_label) if raw_label else None
        if labels_required and not raw_label:
            raise InputError("empty label", path=str(manifest), line=line, field=label_col)
        if raw_label and label is None:
            raise InputError(
                f"label {raw_label!r} is not one of task {task.name}'s labels "
                f"({', '.join(task.labels)})",
                path=str(manifest),
                line=line,
                field=label_col,
            )
        image = Path(raw_path)
        entries.append(
            ManifestEntry(image if image.is_absolute() else manifest.parent / image, label, line)
        )
    if not entries:
        raise InputError("manifest has no rows", path=str(manifest))
    return entries
