"""Reading precomputed embeddings for ``trustorch index import``: an ``.npz`` archive with
``embeddings`` [n, d] (numbers), ``labels`` [n] (strings) and optional ``image`` [n] (names).

Every way a file can be wrong is one ``InputError`` naming the file and, where there is one,
the array: not a regular file or over the cap (``core.reading``), a plain ``.npy`` array or
any other non-archive, members that would inflate past the cap, a missing array, pickled
objects (read with ``allow_pickle=False``), wrong dtypes, shapes or lengths, NaN, infinite or
all-zero rows.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from core.reading import open_regular_file
from core.study import resolve_data_path
from core.task import Task

MAX_NPZ_BYTES = 4 * 1024 * 1024 * 1024
"""Cap on the archive's size and on the size of its arrays once inflated."""

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"


@dataclass(frozen=True)
class ImportedVectors:
    ids: list[str]
    vectors: np.ndarray
    labels: list[str]
    sources: list[str]
    id_scheme: str


def read_embeddings_npz(
    path: str | Path, task: Task, *, max_bytes: int = MAX_NPZ_BYTES
) -> ImportedVectors:
    """Read ``embeddings`` [n, d], ``labels`` [n] and optional ``image`` [n] names, unpickled.

    Ids: sha256 of the UTF-8 string ``"image:" + name`` (no image bytes exist), or without
    names, sha256 of the row's float32 vector bytes. ``study:train-embeddings`` names the
    study's index shipped with the package (``core.study``).
    """
    file = resolve_data_path(path)
    arrays = _load_arrays(file, max_bytes=max_bytes)
    vectors = _vectors(arrays["embeddings"], file)
    n = len(vectors)
    raw_labels = _strings(arrays["labels"], n, file, "labels")
    names = _strings(arrays["image"], n, file, "image") if "image" in arrays else None
    labels = [
        task.require_label(text, path=str(file), field=f"labels[{i}]")
        for i, text in enumerate(raw_labels)
    ]
    if names is not None:
        ids = [hashlib.sha256(f"image:{name}".encode()).hexdigest() for name in names]
        sources = names
        scheme = "sha256 of 'image:' + the npz 'image' name (no image bytes in the file)"
    else:
        ids = [hashlib.sha256(row.tobytes()).hexdigest() for row in vectors]
        sources = [f"{file.name}#{i}" for i in range(n)]
        scheme = "sha256 of the row's float32 embedding bytes (no names in the file)"
    return ImportedVectors(ids, vectors, labels, sources, scheme)


def _load_arrays(file: Path, *, max_bytes: int) -> dict[str, np.ndarray]:
    """The archive's ``embeddings``, ``labels`` and (when present) ``image`` arrays."""
    with open_regular_file(file, what="embeddings file", max_bytes=max_bytes) as handle:
        magic = handle.read(len(_NPY_MAGIC))
        handle.seek(0)
        if magic.startswith(_NPY_MAGIC):
            raise InputError(
                "is a plain .npy array; give an .npz archive with arrays 'embeddings' [n, d] "
                "and 'labels' [n] (numpy.savez)",
                path=str(file),
            )
        if not magic.startswith(_ZIP_MAGIC):
            raise InputError("not an .npz archive (numpy.savez)", path=str(file))
        try:
            with zipfile.ZipFile(handle) as archive:
                inflated = sum(info.file_size for info in archive.infolist())
            if inflated > max_bytes:
                raise InputError(
                    f"its arrays would inflate to {inflated} bytes, over the cap of {max_bytes}",
                    path=str(file),
                )
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as data:
                present = list(data.files)
                for key in ("embeddings", "labels"):
                    if key not in present:
                        raise InputError(
                            f"missing array (has: {', '.join(present) or 'none'})",
                            path=str(file),
                            field=key,
                        )
                return {
                    key: _member(data, key, file)
                    for key in ("embeddings", "labels", "image")
                    if key in present
                }
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise InputError(f"not a readable .npz archive ({e})", path=str(file)) from None


def _member(data: Any, key: str, file: Path) -> np.ndarray:
    try:
        return np.asarray(data[key])
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise InputError(
                "refused: holds pickled objects (an object array; store numbers and strings)",
                path=str(file),
                field=key,
            ) from None
        raise InputError(f"malformed array ({e})", path=str(file), field=key) from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InputError(f"unreadable array ({e})", path=str(file), field=key) from None


def _vectors(raw: np.ndarray, file: Path) -> np.ndarray:
    """The embeddings as float32 [n, d]; every row finite and not all zero."""
    numeric = np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)
    if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] == 0 or not numeric:
        raise InputError(
            f"must be a non-empty [n, d] array of real numbers, got {raw.dtype} {raw.shape}",
            path=str(file),
            field="embeddings",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        vectors = raw.astype(np.float32)
    bad = ~np.isfinite(vectors).all(axis=1) | ~vectors.any(axis=1)
    bad_rows = np.flatnonzero(bad)
    if len(bad_rows):
        raise InputError(
            f"row {int(bad_rows[0])} is zero or not finite (in float32)",
            path=str(file),
            field="embeddings",
        )
    return vectors


def _strings(raw: np.ndarray, n: int, file: Path, key: str) -> list[str]:
    """A [n] array of text (unicode, or UTF-8 bytes) as strings."""
    if raw.shape != (n,):
        raise InputError(
            f"must have shape ({n},) like the embeddings, got {raw.shape}",
            path=str(file),
            field=key,
        )
    if raw.dtype.kind == "U":
        return [str(text) for text in raw.tolist()]
    if raw.dtype.kind == "S":
        try:
            return [bytes(text).decode("utf-8") for text in raw.tolist()]
        except UnicodeDecodeError:
            raise InputError("holds bytes that are not UTF-8", path=str(file), field=key) from None
    raise InputError(f"must be an array of strings, got {raw.dtype}", path=str(file), field=key)
