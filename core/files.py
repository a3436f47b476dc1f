"""Output files: written whole (a temporary file in the target's folder, renamed into place, so a
crash never leaves half a file), checked before any work (``check_output_file``), and written by
one process at a time (``writer_lock``, which refuses a second writer at once; ``FolderLock``,
which makes writers of a shared folder take turns). A folder that cannot be made or written is
an InputError naming the path, not a traceback."""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, os_reason

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def output_folder(path: str | Path, *, what: str) -> Path:
    """``path`` as a folder that exists (made when missing); InputError when it cannot be."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(
            f"a file is in the way of the folder for {what}", path=str(folder)
        ) from None
    except OSError as e:
        raise InputError(
            f"cannot make the folder for {what} ({os_reason(e)})", path=str(folder)
        ) from None
    return folder


def write_atomically(path: str | Path, write: Callable[[Path], None], *, what: str) -> Path:
    """Call ``write(tmp)`` on a new file beside ``path`` (created by ``write``, so with the
    usual permissions), then rename it to ``path``; the temporary file never stays behind."""
    target = Path(path)
    folder = output_folder(target.parent, what=what)
    tmp = folder / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
    try:
        write(tmp)
        os.replace(tmp, target)
    except IsADirectoryError:
        raise InputError(f"a folder is in the way of {what}", path=str(target)) from None
    except OSError as e:
        raise InputError(f"cannot write {what} ({os_reason(e)})", path=str(target)) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def fsync_path(path: str | Path, *, missing_ok: bool = False) -> None:
    """fsync the file or folder ``path`` (a folder: so that a rename in it is durable); with
    ``missing_ok`` a path that does not exist is nothing to sync."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path: str | Path, text: str, *, what: str) -> Path:
    """``write_atomically`` for UTF-8 text."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what=what)


def check_output_folder(path: str | Path, *, what: str) -> Path:
    """``path`` when ``output_folder`` could make or use it, checked without making anything:
    it is a writable folder, or its nearest existing ancestor is. InputError (the same messages
    as ``output_folder``) otherwise."""
    folder = Path(path)
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"a file is in the way of the folder for {what}", path=str(folder))
    if not os.access(probe, os.W_OK | os.X_OK):
        if probe == folder:
            raise InputError(
                f"cannot write {what} in this folder (Permission denied)", path=str(folder)
            )
        raise InputError(f"cannot make the folder for {what} (Permission denied)", path=str(folder))
    return folder


def check_output_file(path: str | Path, *, what: str) -> Path:
    """``path`` when a file could be written there (see ``check_output_folder``); InputError
    when it is a folder, an existing file that cannot be written, or its folder cannot be made."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"a folder is in the way of {what}", path=str(target))
    if target.exists() and not os.access(target, os.W_OK):
        raise InputError(f"cannot write {what} (Permission denied)", path=str(target))
    check_output_folder(target.parent, what=what)
    return target


@dataclass
class WriterLock:
    """An exclusive advisory lock (``flock``) on ``target``, through the file ``path`` beside it,
    which holds the holder's pid. ``release`` removes the lock file; a process that dies keeps no
    lock (the kernel drops it), and its stale file is simply locked again by the next writer."""

    target: Path
    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is None:
            return
        # Unlink while still holding the lock: a writer that opened the old file then finds it
        # is not the one at ``path`` any more and tries again (see ``lock_for_writing``).
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


def lock_path_of(target: str | Path) -> Path:
    """The lock file of ``target``: ``TARGET.lock`` beside it."""
    target = Path(target)
    return target.with_name(target.name + ".lock")


def lock_for_writing(target: str | Path, *, what: str) -> WriterLock:
    """Take the writer's lock of ``target`` without waiting: InputError naming ``target`` and
    the holder's pid when another process holds it (nothing is written then).

    Uses ``fcntl.flock`` (Linux, macOS; not over every network file system). Where ``fcntl``
    is missing (Windows) nothing is locked and a ``RuntimeWarning`` says so.
    """
    target = Path(target)
    path = lock_path_of(target)
    if fcntl is None:
        warnings.warn(
            f"no file locking on this platform: nothing stops two runs writing {target}",
            RuntimeWarning,
            stacklevel=2,
        )
        return WriterLock(target=target, path=path, fd=None)
    output_folder(path.parent, what=what)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"cannot lock {what} ({os_reason(e)})", path=str(path)) from None
        try:
            _flock(fd, wait=False)
        except BlockingIOError:
            holder = _holder_pid(fd)
            os.close(fd)
            pid = f" (pid {holder})" if holder else ""
            raise InputError(
                f"{what} is being written by another trustorch run{pid}; wait for it to end",
                path=str(target),
            ) from None
        except OSError as e:
            os.close(fd)
            raise InputError(f"cannot lock {what} ({os_reason(e)})", path=str(path)) from None
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # its last holder removed this file after we opened it: open the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return WriterLock(target=target, path=path, fd=fd)


@contextmanager
def writer_lock(target: str | Path, *, what: str) -> Iterator[WriterLock]:
    """``lock_for_writing`` held for the ``with`` block."""
    lock = lock_for_writing(target, what=what)
    try:
        yield lock
    finally:
        lock.release()


def _holder_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _flock(fd: int, *, wait: bool) -> None:
    """An exclusive flock on ``fd``: waited for, or ``BlockingIOError`` when held elsewhere."""
    fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)


class FolderLock:
    """Writers of one folder take turns: an exclusive ``flock`` on the lock file ``path``, waited
    for. Re-entrant for the threads of one holder object (a nested hold passes, another thread
    waits); hold one object per folder and pass it on. Where the folder cannot hold a lock file
    (read-only) or the platform has no ``fcntl``, nobody can write there either: nothing is
    locked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._threads:
            if self._depth == 0:
                self._fd = self._take()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing the descriptor releases the flock
                    self._fd = None

    def _take(self) -> int | None:
        if fcntl is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return None
        try:
            _flock(fd, wait=True)
        except OSError:
            os.close(fd)
            return None
        return fd
