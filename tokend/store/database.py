"""Where the access tokens live: ``--database`` parsed into a SQLAlchemy engine.

A plain path or ``sqlite:///ABSOLUTE/PATH`` is an embedded SQLite file (created 0600, WAL, a
busy timeout, so several worker processes share it); ``postgresql://…`` is a PostgreSQL shared
by several daemons. A database that cannot answer is :class:`DatabaseUnavailable`: a 503, not a
refused login.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

T = TypeVar("T")

DEFAULT_DATABASE = "state/tokend.db"
"""The default with the default ``--config-dir`` (``config``): beside the config directory, in
the daemon's working directory. Only the default's directory is created (0700), so a mistyped
path never creates directories."""
BUSY_TIMEOUT = 5.0
"""Seconds a SQLite writer waits for another process's write to end before giving up."""
CONNECT_TIMEOUT = 5
"""Seconds a PostgreSQL connection may take to open."""
RETRY_AFTER = 5
"""The Retry-After of a login the database could not answer."""


class DatabaseError(ValueError):
    """A ``--database`` value that names no database tokend can use, as one sentence."""


class DatabaseUnavailable(Exception):
    """The database did not answer (stopped, unreachable, locked too long): try again later.

    Not a login error itself: the store sits below the door, and the authenticator that asks
    it turns this into a ``BackendUnavailable`` (503 with ``Retry-After``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = RETRY_AFTER


UNAVAILABLE = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError)
"""What SQLAlchemy raises when the database, not the query, is at fault."""


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed ``--database``: the URL SQLAlchemy connects to and, for SQLite, the file."""

    url: URL
    path: Path | None
    is_default: bool = False
    """The default file beside the config directory: its ``state/`` directory is created."""

    @property
    def shown(self) -> str:
        """The URL without its password, for logs and the tool's output."""
        return self.url.render_as_string(hide_password=True)


def default_path(config_dir: Path) -> Path:
    """``state/tokend.db`` beside ``config_dir`` (in its parent), where the daemon and the tool
    both look when ``--database`` is not given."""
    if config_dir.name in ("", ".", ".."):
        config_dir = config_dir.resolve()
    return config_dir.parent / "state" / "tokend.db"


def locate(value: str | None, config_dir: Path = Path("config")) -> Location:
    """``--database``'s value (None: the default, beside ``config_dir``) as a
    :class:`Location`."""
    if value is None:
        path = default_path(config_dir)
        return Location(make_url("sqlite://").set(database=str(path)), path, is_default=True)
    text = value.strip()
    if not text:
        raise DatabaseError("--database is empty: give a path, sqlite:///PATH or postgresql://…")
    if "://" not in text:
        path = Path(text)
        return Location(make_url("sqlite://").set(database=str(path)), path)
    try:
        url = make_url(text)
    except (exc.ArgumentError, ValueError):
        raise DatabaseError(f"--database {text!r} is not a database URL") from None
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite":
        if not url.database or url.database == ":memory:" or not Path(url.database).is_absolute():
            raise DatabaseError(
                "--database sqlite:///PATH needs an absolute path (sqlite:////srv/tokend.db); "
                "a relative one is a plain path"
            )
        return Location(url.set(drivername="sqlite"), Path(url.database))
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise DatabaseError(f"--database: PostgreSQL is reached with psycopg, not {driver}")
        return Location(url.set(drivername="postgresql+psycopg"), None)
    raise DatabaseError(
        f"--database: {backend}:// is not supported; give a path, sqlite:///PATH or postgresql://…"
    )


def _create_file(path: Path, is_default: bool) -> None:
    """The SQLite file, 0600 from its first byte (SQLite gives its -wal and -shm files the
    file's own mode); only the default's directory is created."""
    if is_default:
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise DatabaseError(
                f"cannot create {path.parent} for the access tokens' database "
                f"({e.strerror or e}): make it writable by this user, or give --database "
                "a place that is"
            ) from None
    elif not path.parent.is_dir():
        raise DatabaseError(f"--database {path}: the directory {path.parent} does not exist")
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as e:
        raise DatabaseError(
            f"cannot create or open the access tokens' database {path} ({e.strerror or e})"
        ) from None


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def connect(location: Location, create: bool = True) -> Engine:
    """An engine for ``location``; it opens connections only when first used, so it may be
    made before twistd forks. The SQLite file is created here, unless ``create`` is false."""
    if location.path is not None:
        if create:
            _create_file(location.path, location.is_default)
        elif not location.path.is_file():
            raise DatabaseError(f"{location.path} does not exist (tokend db upgrade creates it)")
    return engine_for(location)


def engine_for(location: Location) -> Engine:
    """An engine for ``location`` that touches no file until a connection opens: the daemon
    makes it before twistd sheds root, and the file is created by the daemon's own user at
    start-up (:func:`connect`, through the migrations)."""
    if location.path is not None:
        engine = create_engine(
            location.url,
            connect_args={"timeout": BUSY_TIMEOUT, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        location.url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=CONNECT_TIMEOUT,
        connect_args={"connect_timeout": CONNECT_TIMEOUT},
    )


@contextmanager
def unavailable_as_503(location: Location) -> Iterator[None]:
    """SQLAlchemy's errors of an unreachable database as :class:`DatabaseUnavailable`."""
    try:
        yield
    except UNAVAILABLE as e:
        said = str(getattr(e, "orig", None) or e).strip() or type(e).__name__
        reason = said.splitlines()[0]
        raise DatabaseUnavailable(f"database {location.shown} unavailable: {reason}") from e


def guarded(location: Location, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``, an unreachable database raised as :class:`DatabaseUnavailable`."""
    with unavailable_as_503(location):
        return function(*args)
