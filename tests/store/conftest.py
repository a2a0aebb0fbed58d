"""The store's tests run against both databases tokend supports: a real SQLite file in the
test's temp dir and a real PostgreSQL (tests/postgres_server.py), one server for the session and
a database of its own for each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import PostgresServer, running_postgres

from tokend.store.database import Location, connect, locate


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """An empty database of each kind."""
    if request.param == "sqlite":
        found = locate(str(tmp_path / "tokens.db"))
        connect(found).dispose()  # creates the file, as the daemon would
        return found
    server: PostgresServer = request.getfixturevalue("postgres")
    return locate(server.new_database())
