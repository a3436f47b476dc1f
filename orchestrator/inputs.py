"""Collect the images of a run from files, folders and CSV manifests.

The sources are scanned by ``core.image_inputs``'s rules with labels optional: a folder in the
ImageFolder layout ``DIR/<label>/*`` gives true labels where its first sub-folders are labels of
the task, a manifest's ``label`` column may be left out. Every image is decoded in full once, so
unreadable ones (missing, truncated, over a cap) are reported and skipped before any agent runs;
an image with the same bytes as an earlier one is kept once. A source that does not exist, a
manifest label outside the task, or inputs that leave no image to classify are bad input and
raise ``InputError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.errors import InputError
from core.image_inputs import ScannedImages, scan_images
from core.images import IMAGE_SUFFIXES
from core.task import Task


def collect_images(paths: Sequence[str | Path], *, task: Task) -> ScannedImages:
    """Every image named by ``paths`` (files, folders, CSV manifests), de-duplicated by sha256.

    InputError when none is left to classify (says how many were skipped)."""
    if not paths:
        raise InputError("no input paths given")
    out = scan_images(paths, task, labels_required=False, decodes=True, unique=True)
    if not out.images:
        where = ", ".join(str(p) for p in paths)
        why = f"{len(out.skipped)} unreadable, {len(out.duplicates)} duplicate"
        first = f"; first: {out.skipped[0].source}: {out.skipped[0].reason}" if out.skipped else ""
        raise InputError(
            f"no readable images in {where} ({why} skipped; looked for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}){first}"
        )
    return out
