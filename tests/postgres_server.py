"""A real PostgreSQL server on 127.0.0.1 for tests and benchmarks (Debian's ``postgresql``).

    with postgres_server(tmp_path) as pg:
        url = pg.url()               # postgresql://trustorch:PASSWORD@127.0.0.1:PORT/postgres
        pg.create_database("run1")   # a fresh database of its own
        pg.restart()                 # pg_ctl restart, the same port

``initdb`` makes a cluster in a folder of its own with one password-protected superuser
(``scram-sha-256`` over TCP); ``pg_ctl`` starts it on a free loopback port and stops it at the
end. PostgreSQL refuses to run as root, so as root (CI) every server command runs as the
``postgres`` system user (``runuser``) over a folder that user owns. ``durable=False`` turns
fsync off, for tests whose crashes are of the client, never of the server.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "trustorch"
PASSWORD = "pg-test-secret-7f3a"


def postgres_bin() -> Path | None:
    """The folder of the newest installed ``initdb``/``pg_ctl``, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def missing_reason() -> str | None:
    """Why no server can be started here, or None when one can."""
    folder = postgres_bin()
    if folder is None or not (folder / "initdb").is_file():
        return "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as another user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    bin: Path
    data: Path
    port: int
    as_user: list[str]
    log: Path

    def url(self, database: str = "postgres", *, password: str | None = PASSWORD) -> str:
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )

    def _options(self, durable: bool) -> str:
        extra = "" if durable else " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
            f" -c max_connections=40{extra}"
        )

    def start(self, *, durable: bool) -> None:
        self._ctl("-o", self._options(durable), "-l", str(self.log), "-w", "start")

    def restart(self) -> None:
        # -l again: without it the restarted server would write to (and hold open) our pipe
        self._ctl("-m", "fast", "-l", str(self.log), "-w", "restart")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement through ``psql`` (as the superuser); its output."""
        psql = self.bin / "psql" if (self.bin / "psql").is_file() else Path("psql")
        done = subprocess.run(
            [str(psql), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", statement, self.url(database)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        """A new, empty database ``name``; its URL."""
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[PostgresServer]:
    """A started server (see the module docstring), stopped and deleted on exit."""
    reason = missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    folder = postgres_bin()
    assert folder is not None
    root = Path(tempfile.mkdtemp(prefix="trustorch-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    os.chmod(root, 0o700)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_user:
        shutil.chown(pwfile, user="postgres")
    server = PostgresServer(folder, root / "data", _free_port(), as_user, root / "log")
    try:
        subprocess.run(
            [
                *as_user,
                str(folder / "initdb"),
                "-D",
                str(server.data),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        server.start(durable=durable)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
