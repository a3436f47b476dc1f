"""Checkpoints in PostgreSQL, through LangGraph's own ``AsyncPostgresSaver`` (psycopg 3).

The saver works over a small connection pool that checks each connection before lending it, so
a server that restarts costs the statements in flight at that moment, not the rest of the run:
every statement the saver sends is retried on a fresh connection while the server comes back
(``RETRY_FOR_S``). LangGraph's writes are idempotent upserts, so sending one twice is harmless.

Credentials are never shown: every message names the database by ``redact_url(url)``.

One run per configuration at a time: ``configuration_lock`` holds a session-level advisory lock
(``pg_try_advisory_lock``) keyed by the run's configuration for as long as the run lasts; a second
run of the same configuration on the same database is refused at once, and a run that dies
(even by SIGKILL) drops its lock with its connection.

The shards of a distributed run (``--engine ray``) write the threads of one configuration from
several processes at once, each shard its own images: a shard holds the configuration's lock
*shared* and a lock of its own (configuration and shard) exclusively. Shards of one run go
side by side; a local run of the same configuration, or a second worker on the same shard, is
refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from core.errors import InputError
from core.redact import redact_text, redact_url, url_secrets

RETRY_FOR_S = 30.0
"""How long a checkpoint statement keeps being retried while the server is unreachable."""
CONNECT_TIMEOUT_S = 10
LOCK_PREFIX = "trustorch-run:"

T = TypeVar("T")


def _reason(error: BaseException, url: str) -> str:
    """The first line of a psycopg error, with no secret of ``url`` in it."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return redact_text(text)


def _connection_kwargs() -> dict[str, Any]:
    from psycopg.rows import dict_row

    # What AsyncPostgresSaver.from_conn_string uses: autocommit, no server-side prepared
    # statements (they do not survive a pooler such as PgBouncer), rows as dicts.
    return {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}


async def connect(url: str, *, application_name: str | None = None) -> Any:
    """One psycopg connection to ``url``; InputError in one line when the server is unreachable
    or refuses the credentials."""
    import psycopg

    try:
        return await psycopg.AsyncConnection.connect(
            url,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name=application_name or "trustorch",
            **_connection_kwargs(),
        )
    except psycopg.Error as e:
        raise InputError(
            f"cannot open the PostgreSQL checkpoint ({_reason(e, url)})", path=redact_url(url)
        ) from None


def _retrying(saver_type: type) -> type:
    """A subclass of ``saver_type`` whose async reads and writes retry on a lost connection."""
    import psycopg

    async def again(call: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_FOR_S
        delay = 0.05
        while True:
            try:
                return await call()
            except psycopg.OperationalError:
                if loop.time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    class RetryingPostgresSaver(saver_type):  # type: ignore[misc, valid-type]
        async def aget_tuple(self, config: Any) -> Any:
            parent = super()
            return await again(lambda: parent.aget_tuple(config))

        async def aput(self, config: Any, checkpoint: Any, metadata: Any, versions: Any) -> Any:
            parent = super()
            return await again(lambda: parent.aput(config, checkpoint, metadata, versions))

        async def aput_writes(
            self, config: Any, writes: Any, task_id: str, task_path: str = ""
        ) -> None:
            parent = super()
            await again(lambda: parent.aput_writes(config, writes, task_id, task_path))

        async def adelete_thread(self, thread_id: str) -> None:
            parent = super()
            await again(lambda: parent.adelete_thread(thread_id))

    return RetryingPostgresSaver


@asynccontextmanager
async def postgres_checkpointer(url: str) -> AsyncIterator[Any]:
    """LangGraph's ``AsyncPostgresSaver`` on ``url``, its tables made or migrated first."""
    import psycopg
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg_pool import AsyncConnectionPool

    first = await connect(url)  # the real reason when it fails (a pool only times out)
    try:
        await AsyncPostgresSaver(first).setup()
    except psycopg.Error as e:
        raise InputError(
            f"cannot set up the PostgreSQL checkpoint tables ({_reason(e, url)})",
            path=redact_url(url),
        ) from None
    finally:
        await first.close()
    pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=2,
        kwargs={"connect_timeout": CONNECT_TIMEOUT_S, **_connection_kwargs()},
        check=AsyncConnectionPool.check_connection,
        timeout=RETRY_FOR_S,
        open=False,
    )
    await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    try:
        yield _retrying(AsyncPostgresSaver)(pool)
    finally:
        await pool.close()


def lock_key(configuration: str) -> int:
    """The signed 64-bit advisory-lock key of a configuration's text."""
    digest = hashlib.sha256((LOCK_PREFIX + configuration).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def part_lock_key(configuration: str, part: str) -> int:
    """The advisory-lock key of one part (a shard) of a configuration's threads."""
    return lock_key(f"{configuration}\x00part:{part}")


@asynccontextmanager
async def configuration_lock(
    url: str, configuration: str, *, part: str | None = None, wait_s: float = 0.0
) -> AsyncIterator[None]:
    """Hold the advisory lock of ``configuration`` on ``url`` for the ``with`` block: alone, or
    with ``part`` shared beside the other parts (see the module docstring). A lock held by
    another session is tried again for ``wait_s`` seconds (the session of a worker killed a
    moment ago may not have ended yet), then InputError naming the holder (host and pid)."""
    me = f"trustorch run pid {os.getpid()} on {socket.gethostname()}"
    conn = await connect(url, application_name=me[:63])
    try:
        whole = lock_key(configuration)
        wanted = [(whole, False)] if part is None else [(whole, True)]
        if part is not None:
            wanted.append((part_lock_key(configuration, part), False))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        for key, shared in wanted:
            try_lock = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
            while True:
                query = f"SELECT {try_lock}(%s) AS ok"
                row = await (await conn.execute(query, (key,))).fetchone()
                if row["ok"]:
                    break
                if loop.time() >= deadline:
                    holder = await _lock_holder(conn, key)
                    what = "this configuration" if key == whole else f"shard {part} of it"
                    raise InputError(
                        f"the checkpoint threads of {what} are being written by another "
                        f"trustorch run ({holder}); wait for it to end",
                        path=redact_url(url),
                    )
                await asyncio.sleep(0.2)
        yield
    finally:
        await conn.close()  # the session ends: its advisory locks go with it


async def _lock_holder(conn: Any, key: int) -> str:
    query = (
        "SELECT a.application_name AS who FROM pg_locks l JOIN pg_stat_activity a "
        "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s::bigint"
    )
    try:
        row = await (await conn.execute(query, (key,))).fetchone()
    except Exception:
        return "holder unknown"
    return str(row["who"]) if row and row["who"] else "holder unknown"
