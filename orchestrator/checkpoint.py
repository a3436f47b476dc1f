"""Where a run keeps its LangGraph checkpoints: a local SQLite file (the default) or a
PostgreSQL database shared by several processes or machines (``postgresql://...``).

``open_checkpointer(where)`` opens either behind LangGraph's own savers; ``checkpoint_is_empty``
and ``remove_checkpoint`` are what a run does once every image is in its output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.files import output_folder

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(where: str | Path) -> bool:
    """Whether ``where`` names a PostgreSQL database (a ``postgresql://`` URL)."""
    return isinstance(where, str) and where.lower().startswith(POSTGRES_SCHEMES)


@asynccontextmanager
async def open_checkpointer(where: str | Path) -> AsyncIterator[Any]:
    """LangGraph's async checkpointer on ``where``: a ``postgresql://`` URL, or a SQLite file
    path (created when missing). InputError naming ``where`` when it cannot be opened."""
    if is_postgres(where):
        from orchestrator.checkpoint_postgres import postgres_checkpointer

        async with postgres_checkpointer(str(where)) as saver:
            yield saver
    else:
        async with sqlite_checkpointer(Path(where)) as saver:
            yield saver


@asynccontextmanager
async def sqlite_checkpointer(path: Path) -> AsyncIterator[Any]:
    """LangGraph's async SQLite checkpointer on ``path`` (created when missing); InputError
    naming ``path`` when it cannot be created or is not a SQLite file."""
    import sqlite3

    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    output_folder(path.parent, what="the checkpoint")
    if path.is_dir():
        raise InputError("the checkpoint is a folder; give a .sqlite file", path=str(path))
    opened = False
    try:
        async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
            await saver.setup()
            opened = True
            yield saver
    except (sqlite3.Error, OSError) as e:
        if opened:
            raise
        raise InputError(f"not a usable SQLite checkpoint file ({e})", path=str(path)) from None


async def checkpoint_is_empty(saver: Any) -> bool:
    """Whether ``saver`` holds no checkpoint of any thread."""
    async for _ in saver.alist(None, limit=1):
        return False
    return True


def remove_checkpoint(where: str | Path) -> None:
    """Delete a (closed) SQLite checkpoint file and its journal files. A PostgreSQL database is
    left as it is: a run deletes its own threads, and the tables belong to whoever shares it."""
    if is_postgres(where):
        return
    path = Path(where)
    for name in (path.name, path.name + "-wal", path.name + "-shm", path.name + "-journal"):
        path.with_name(name).unlink(missing_ok=True)
