"""Where a run keeps its LangGraph checkpoints: a local SQLite file (the default) or a
PostgreSQL database shared by several processes or machines (``postgresql://...``).

``open_checkpointer(where)`` opens either behind LangGraph's own savers; ``checkpoint_is_empty``
and ``remove_checkpoint`` are what a run does once every image is in its output.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

from core.errors import InputError
from core.files import fsync_path, output_folder

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(where: str | Path) -> bool:
    """Whether ``where`` names a PostgreSQL database (a ``postgresql://`` URL)."""
    return isinstance(where, str) and where.lower().startswith(POSTGRES_SCHEMES)


@asynccontextmanager
async def open_checkpointer(
    where: str | Path,
    *,
    owner: Mapping[str, Any] | None = None,
    part: str | None = None,
    lock_wait_s: float = 0.0,
) -> AsyncIterator[Any]:
    """LangGraph's async checkpointer on ``where``: a ``postgresql://`` URL, or a SQLite file
    path (created when missing). InputError naming ``where`` (credentials masked) when it
    cannot be opened.

    ``owner`` (a run's configuration, JSON values) makes the run the one writer of that
    configuration's threads in a Postgres database while the checkpointer is open: a second
    run with the same configuration is refused (``checkpoint_postgres.configuration_lock``).
    With ``part`` (a shard's id) the run is one of several writers of the configuration, the
    one writer of that part; a lock held elsewhere is waited for ``lock_wait_s`` seconds.
    A SQLite file is guarded by its caller's lock file instead (``core.files.writer_lock``).
    """
    if is_postgres(where):
        from orchestrator.checkpoint_postgres import configuration_lock, postgres_checkpointer

        async with AsyncExitStack() as held:
            if owner is not None:
                key = json.dumps(dict(owner), sort_keys=True, default=str)
                locked = configuration_lock(str(where), key, part=part, wait_s=lock_wait_s)
                await held.enter_async_context(locked)
            saver = await held.enter_async_context(postgres_checkpointer(str(where)))
            yield saver
    else:
        async with sqlite_checkpointer(Path(where)) as saver:
            yield saver


SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": 1}
"""What every SQLite checkpoint connection runs with (``synchronous`` 1 is NORMAL): a commit
is a write to the WAL file, which a killed process cannot undo; only a power cut or a kernel
crash can roll back the commits since the last fsync (``LoopSqliteSaver.sync_to_disk``)."""
WAL_AUTOCHECKPOINT = 0
"""SQLite folds the WAL into the database file itself every 1000 pages, inside a commit, with
an fsync of each file: on the event loop, a wait for the disk. Off: ``sync_to_disk`` folds it
(once a second, in the runner's worker thread), and closing the last connection folds the
rest (a caller writing without the runner's sync keeps a growing WAL until then)."""


@dataclass
class _CommitState:
    due: bool = False
    """A commit is scheduled on the event loop."""
    closed: bool = False


class LoopSqliteSaver(SqliteSaver):
    """LangGraph's ``SqliteSaver`` with async methods that run its sync ones right away,
    in the event loop's thread.

    With WAL and ``synchronous=NORMAL`` a statement takes tens of microseconds and never
    waits for the disk, less than handing it to a worker thread and back (what
    ``AsyncSqliteSaver`` does, several times per checkpoint). ``sync_to_disk`` is the
    fsync that bounds what a power cut may take: the caller runs it off the loop.

    Group commit: the writes made in one turn of the event loop (every image's steps that
    finished in it) are committed together at the start of the next turn, before any task
    the finished steps started has run, instead of one commit per write (a commit writes
    every page the transaction touched to the WAL: most of a checkpoint's cost). A kill
    between a write and its commit loses what it would have lost a moment earlier, before the
    write. ``commit_pending`` commits at once: before an output line is written, before the
    fsync, and on close. Outside an event loop every write commits at once.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        super().__init__(conn)
        self.path = path
        self._commits = _CommitState()  # shared with shallow copies (``with_state_types``)

    @contextmanager
    def cursor(self, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        with self.lock:
            self.setup()
            cur = self.conn.cursor()
            try:
                yield cur
            finally:
                cur.close()
        if transaction:
            self._commit_soon()

    def _commit_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.commit_pending()
            return
        if not self._commits.due:
            self._commits.due = True
            loop.call_soon(self.commit_pending)

    def commit_pending(self) -> None:
        """Commit the writes not committed yet (safe from any thread; nothing once closed)."""
        with self.lock:
            self._commits.due = False
            if not self._commits.closed and self.conn.in_transaction:
                self.conn.commit()

    def close(self) -> None:
        """Commit what is pending and close the connection (a commit still scheduled then
        does nothing)."""
        try:
            self.commit_pending()
        finally:
            with self.lock:
                self._commits.closed = True
                self.conn.close()

    async def aget_tuple(self, config: Any) -> Any:
        return self.get_tuple(config)

    async def alist(
        self,
        config: Any,
        *,
        filter: dict[str, Any] | None = None,
        before: Any = None,
        limit: int | None = None,
    ) -> AsyncIterator[Any]:
        # Read whole before yielding: the sync generator holds the saver's lock between its rows,
        # and an async caller that stops early would leave it held.
        for item in list(self.list(config, filter=filter, before=before, limit=limit)):
            yield item

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, versions: Any) -> Any:
        return self.put(config, checkpoint, metadata, versions)

    async def aput_writes(
        self, config: Any, writes: Any, task_id: str, task_path: str = ""
    ) -> None:
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)

    def sync_to_disk(self) -> None:
        """Commit what is pending, then fsync the WAL file: every write made so far survives
        a power cut."""
        self.commit_pending()
        wal = self.path.with_name(self.path.name + "-wal")
        if not wal.exists():
            return  # nothing written since the last WAL checkpoint (synced already)
        fsync_path(wal)
        self.fold_wal()

    def fold_wal(self) -> None:
        """Copy the WAL's frames into the database file (a passive WAL checkpoint, which
        fsyncs both files) on a connection of its own, so the loop's writes go on meanwhile."""
        with closing(sqlite3.connect(str(self.path), timeout=0, isolation_level=None)) as conn:
            conn.execute("PRAGMA synchronous=1").fetchall()
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def sqlite_connection(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` with ``SQLITE_PRAGMAS`` in force."""
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    try:
        for name, value in SQLITE_PRAGMAS.items():
            conn.execute(f"PRAGMA {name}={value}").fetchall()
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}").fetchall()
    except BaseException:
        conn.close()
        raise
    # LangGraph's saver commits after each statement group: implicit transactions, as it expects
    conn.isolation_level = ""
    return conn


@asynccontextmanager
async def sqlite_checkpointer(path: Path) -> AsyncIterator[Any]:
    """A checkpointer on the SQLite file ``path`` (created when missing), ``LoopSqliteSaver``
    over LangGraph's tables; InputError naming ``path`` when it cannot be created or is not a
    SQLite file."""
    output_folder(path.parent, what="the checkpoint")
    if path.is_dir():
        raise InputError("the checkpoint is a folder; give a .sqlite file", path=str(path))
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite_connection(path)
        saver = LoopSqliteSaver(conn, path)
        saver.setup()
    except (sqlite3.Error, OSError) as e:
        if conn is not None:
            conn.close()
        raise InputError(f"not a usable SQLite checkpoint file ({e})", path=str(path)) from None
    try:
        yield saver
    finally:
        saver.close()


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
