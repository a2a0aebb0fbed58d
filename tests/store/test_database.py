"""``--database`` parsed, the SQLite file as the daemon makes it (0600, WAL, only the default's
directory created), and several processes writing to it at once, as --workers do."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from tokend.store.database import DEFAULT_DATABASE, DatabaseError, connect, locate
from tokend.store.migrating import upgrade
from tokend.store.queries import AccessTokens


def test_a_path_or_an_absolute_sqlite_url_is_a_sqlite_file(tmp_path: Path) -> None:
    assert locate(None).path == Path(DEFAULT_DATABASE) == Path("state/tokend.db")
    assert locate("tokens.db").path == Path("tokens.db")
    url = locate(f"sqlite:///{tmp_path}/t.db")
    assert url.path == tmp_path / "t.db" and url.url.drivername == "sqlite"


def test_postgresql_is_reached_through_psycopg_and_shown_without_its_password() -> None:
    found = locate("postgresql://tokend:hunter2@db.example:5432/tokend")
    assert found.path is None and found.url.drivername == "postgresql+psycopg"
    assert "hunter2" not in found.shown and "db.example:5432/tokend" in found.shown
    assert locate("postgresql+psycopg://t@/t?host=/run/postgresql").url.database == "t"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("", "is empty"),
        ("sqlite:///relative.db", "absolute path"),
        ("sqlite://", "absolute path"),
        ("sqlite:///:memory:", "absolute path"),
        ("mysql://u@h/db", "mysql:// is not supported"),
        ("postgresql+asyncpg://u@h/db", "not asyncpg"),
        ("postgresql://u@h:port/db", "not a database URL"),
    ],
)
def test_a_database_tokend_cannot_use_is_one_sentence(value: str, said: str) -> None:
    with pytest.raises(DatabaseError, match=said):
        locate(value)


def test_the_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    location = locate(str(tmp_path / "t.db"))
    upgrade(location)
    assert stat.S_IMODE(os.stat(tmp_path / "t.db").st_mode) == 0o600
    engine = connect(location)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 5000
            AccessTokens(engine, location).list()
            for name in ("t.db-wal", "t.db-shm"):
                assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    finally:
        engine.dispose()


def test_only_the_default_directory_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatabaseError, match="the directory mistyped does not exist"):
        connect(locate("mistyped/tokend.db"))
    assert not (tmp_path / "mistyped").exists()
    connect(locate(None)).dispose()
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert (tmp_path / "state" / "tokend.db").is_file()


WORKER = """
import sys
from tokend.store.database import connect, locate
from tokend.store.queries import AccessTokens, secret_hash
location = locate(sys.argv[1])
tokens = AccessTokens(connect(location), location)
for n in range(40):
    made = tokens.create("alice", f"{sys.argv[2]}-{n}", secret_hash(f"{sys.argv[2]}-{n}"),
                         {"a/*": ("pull",)}, n, 10_000)
    tokens.touch(made.id, 100 + n, "192.0.2.1")
    tokens.revoke(made.id, 200 + n)
"""


def test_several_processes_share_the_sqlite_file(tmp_path: Path) -> None:
    location = locate(str(tmp_path / "t.db"))
    upgrade(location)
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "t.db"), f"w{i}"])
        for i in range(3)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
    engine = connect(location)
    try:
        made = AccessTokens(engine, location).list("alice")
    finally:
        engine.dispose()
    assert len(made) == 120
    assert all(t.revoked_at is not None and t.last_used_at is not None for t in made)


def test_a_database_that_cannot_be_created_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default's directory taken by a file (or not writable: a container's working
    directory belongs to root), or the file itself not openable: a DatabaseError naming the
    place and the reason, never an OSError's traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(DatabaseError, match=r"cannot create state .*File exists.*--database"):
        connect(locate(None))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "tokend.db").mkdir()
    with pytest.raises(DatabaseError, match=r"cannot create or open .*tokend\.db \(Is a direc"):
        connect(locate(str(tmp_path / "taken" / "tokend.db")))
