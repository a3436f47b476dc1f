"""Writing output files whole: a temporary file in the target's folder, renamed into place, so a
crash never leaves half a file; a folder that cannot be made or written is an InputError naming
the path, not a traceback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from core.errors import InputError, os_reason


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


def write_text_atomically(path: str | Path, text: str, *, what: str) -> Path:
    """``write_atomically`` for UTF-8 text."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what=what)
