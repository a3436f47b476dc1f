"""Bounded reads of the files a user names: images, manifests, tables, JSON, embeddings.

A file is opened without blocking (``O_NONBLOCK``, so a FIFO with no writer cannot hang the
open), checked with ``fstat`` on the open descriptor to be a regular file of at most
``max_bytes`` before a byte is read, and read in chunks of which at most ``max_bytes + 1`` bytes
are taken, so a file that grows while it is read is refused too. A FIFO, a device such as
``/dev/zero``, a folder, a missing file or one over the cap is an ``InputError`` naming it.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from core.errors import InputError, os_reason

CHUNK_BYTES = 1024 * 1024

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def over_cap(size: int, max_bytes: int, *, what: str, path: str) -> InputError:
    """The error of a file or body of ``size`` bytes over ``max_bytes``."""
    return InputError(f"the {what} is {size} bytes, over the cap of {max_bytes} bytes", path=path)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a plain file")


@contextmanager
def open_regular_file(path: str | Path, *, what: str, max_bytes: int) -> Iterator[BinaryIO]:
    """``path`` opened for binary reading once it is known to be a regular file of at most
    ``max_bytes`` (checked on the open descriptor, so nothing can swap it in between)."""
    name = str(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"no such {what}", path=name) from None
    except OSError as e:
        raise InputError(f"cannot read the {what} ({os_reason(e)})", path=name) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"the {what} is not a regular file ({_kind(info.st_mode)})", path=name)
        if info.st_size > max_bytes:
            raise over_cap(info.st_size, max_bytes, what=what, path=name)
        os.set_blocking(fd, True)
        handle = io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def _chunks(handle: BinaryIO, *, what: str, max_bytes: int, path: str) -> Iterator[bytes]:
    """The file's bytes in chunks; InputError once more than ``max_bytes`` came."""
    total = 0
    while True:
        try:
            chunk = handle.read(min(CHUNK_BYTES, max_bytes + 1 - total))
        except OSError as e:
            raise InputError(f"cannot read the {what} ({os_reason(e)})", path=path) from None
        if not chunk:
            return
        total += len(chunk)
        if total > max_bytes:
            raise InputError(f"the {what} grew over the cap of {max_bytes} bytes", path=path)
        yield chunk


def read_file_bytes(
    path: str | Path, *, what: str, max_bytes: int, digest: Any | None = None
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ``digest`` (a ``hashlib`` object)
    is updated with them as they are read."""
    parts: list[bytes] = []
    with open_regular_file(path, what=what, max_bytes=max_bytes) as handle:
        for chunk in _chunks(handle, what=what, max_bytes=max_bytes, path=str(path)):
            if digest is not None:
                digest.update(chunk)
            parts.append(chunk)
    return b"".join(parts)


def file_sha256(path: str | Path, *, what: str, max_bytes: int) -> str:
    """The sha256 of a regular file of at most ``max_bytes``, read in chunks and not kept."""
    digest = hashlib.sha256()
    with open_regular_file(path, what=what, max_bytes=max_bytes) as handle:
        for chunk in _chunks(handle, what=what, max_bytes=max_bytes, path=str(path)):
            digest.update(chunk)
    return digest.hexdigest()


def read_utf8_file(path: str | Path, *, what: str, max_bytes: int) -> str:
    """The UTF-8 text (BOM dropped) of a regular file of at most ``max_bytes``."""
    data = read_file_bytes(path, what=what, max_bytes=max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"not a UTF-8 text file (byte 0x{e.object[e.start]:02x} at offset {e.start})",
            path=str(Path(path)),
        ) from None
