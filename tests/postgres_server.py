"""A real PostgreSQL (Debian's postgresql package) in a temp dir, for the store's tests.

``initdb`` and ``postgres`` refuse to run as root: as root they run as ``nobody`` (the data
directory is handed to it), as anyone else as themselves. The server listens on a UNIX socket in
its own directory only (no TCP port to collide on), trusts local connections, and is stopped by
its own PID; :meth:`PostgresServer.start` again brings it back with its data, for outage and
recovery tests.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

USER = "tokend"
_numbers = itertools.count()
DATABASE = "tokend"


def require_postgres() -> Path:
    """The directory of initdb and postgres; skip (fail under CI, which installs them) when
    they are missing."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: p.parts)
    if not found:
        message = "needs PostgreSQL (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found[-1].parent


def _runs_as() -> pwd.struct_passwd | None:
    """Whom the server runs as when we are root (it refuses root); None: ourselves."""
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else None


@dataclass
class PostgresServer:
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tokend-pg-")))
    binaries: Path = field(default_factory=require_postgres)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@/{DATABASE}?host={self.directory}"

    def _popen(self, *command: str) -> subprocess.Popen[bytes]:
        account = _runs_as()
        log = (self.directory / "postgres.log").open("ab")
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
            cwd=self.directory,
        )

    def _log(self) -> str:
        return (self.directory / "postgres.log").read_text(errors="replace")

    def initialise(self) -> None:
        account = _runs_as()
        if account is not None:
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        initdb = self._popen(
            str(self.binaries / "initdb"), "-D", str(self.data), "-U", USER, "-A", "trust",
            "--no-sync", "-E", "UTF8", "--locale", "C",
        )  # fmt: skip
        assert initdb.wait(timeout=120) == 0, self._log()
        self.start()
        created = subprocess.run(
            [str(self.binaries / "createdb"), "-h", str(self.directory), "-U", USER, DATABASE],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr

    def start(self) -> None:
        self.process = self._popen(
            str(self.binaries / "postgres"), "-D", str(self.data), "-k", str(self.directory),
            "-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=40",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not (self.directory / ".s.PGSQL.5432").exists() or not self.ready():
            assert self.process.poll() is None, self._log()
            assert time.monotonic() < deadline, "postgres did not answer in 30 s"
            time.sleep(0.05)

    def new_database(self) -> str:
        """A new, empty database on this server: its URL."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"test_{next(_numbers)}"
        engine = create_engine(
            make_url(self.url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as connection:
                connection.execute(text(f"CREATE DATABASE {name}"))
        finally:
            engine.dispose()
        return self.url.replace("/tokend?", f"/{name}?")

    def ready(self) -> bool:
        answer = subprocess.run(
            [str(self.binaries / "pg_isready"), "-q", "-h", str(self.directory), "-U", USER],
            timeout=30,
            check=False,
        )
        return answer.returncode == 0

    def stop(self) -> None:
        """A fast shutdown (SIGINT): open connections are cut, as in an outage."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A server initialised and started for the block, stopped by its PID and removed after."""
    server = PostgresServer()
    try:
        server.initialise()
        yield server
    finally:
        server.remove()
