"""The schema's versions on real SQLite and PostgreSQL: from an empty database, from the previous
version with a token in it, and a database a newer tokend migrated."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, cast

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from postgres_server import PostgresServer
from sqlalchemy import Engine, inspect, text
from support import wait_for

from tokend.store.database import Location, connect, locate
from tokend.store.migrating import (
    MIGRATION_LOCK,
    UnknownVersion,
    head,
    upgrade,
    upgrade_engine,
    version,
)
from tokend.store.queries import AccessTokens, secret_hash
from tokend.store.schema import metadata


def owner_index(engine: Engine) -> dict[str, list[str | None]]:
    """The table's plain indexes (the unique constraint's own left out), by name."""
    found = inspect(engine).get_indexes("access_tokens")
    return {i["name"]: i["column_names"] for i in found if not i["unique"] and i["name"]}


def test_an_empty_database_is_brought_to_the_newest_version_which_is_the_schema(
    location: Location,
) -> None:
    assert version(location).current is None
    before, after = upgrade(location)
    assert (before.current, after.current, after.head) == (None, head(), head())
    assert version(location).up_to_date
    engine = connect(location)
    try:
        with engine.connect() as connection:
            # What the migrations built is what schema.py declares: nothing missing, nothing more.
            assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    finally:
        engine.dispose()
    assert upgrade(location)[0].current == head()  # again: nothing to do


def test_the_previous_version_is_upgraded_with_its_tokens_kept(location: Location) -> None:
    engine = connect(location)
    try:
        upgrade_engine(engine, "0001")
        assert version(location).current == "0001"
        assert "ix_access_tokens_owner" not in owner_index(engine)
        kept = AccessTokens(engine, location).create(
            "alice", "ci", secret_hash("s3cret"), {"team/*": ("pull",)}, 1000, 2000
        )
        assert upgrade(location)[1].current == head() == "0002"
        assert owner_index(engine) == {"ix_access_tokens_owner": ["owner"]}
        assert AccessTokens(engine, location).list("alice") == [kept]
    finally:
        engine.dispose()


def test_a_database_a_newer_tokend_migrated_is_refused(location: Location) -> None:
    upgrade(location)
    engine = connect(location)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    finally:
        engine.dispose()
    with pytest.raises(UnknownVersion, match="0099, which this tokend does not know"):
        upgrade(location)
    with pytest.raises(UnknownVersion):
        version(location)


UPGRADE = """
import sys
from tokend.store.database import locate
from tokend.store.migrating import upgrade
print(upgrade(locate(sys.argv[1]))[1].current)
"""


def test_an_upgrade_of_postgresql_waits_for_another_daemons_to_end(
    postgres: PostgresServer,
) -> None:
    """Daemons sharing a PostgreSQL upgrade it at start-up, each under the advisory lock: one
    starting while another upgrades waits, then finds nothing left to do, instead of creating
    the same tables again (duplicate key value violates unique constraint)."""
    url = postgres.new_database()
    engine = connect(locate(url))
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            daemon = subprocess.Popen(
                [sys.executable, "-c", UPGRADE, url], stdout=subprocess.PIPE, text=True
            )
            wait_for(
                "the upgrade waiting for the lock",
                lambda: holder.execute(text(WAITING), {"key": MIGRATION_LOCK}).scalar(),
                process=cast(Any, daemon),
            )
            assert "alembic_version" not in inspect(holder).get_table_names()
            holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
            holder.commit()
        assert daemon.communicate(timeout=60) == (f"{head()}\n", None)
    finally:
        engine.dispose()


WAITING = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
    "AND (classid::bigint << 32 | objid::bigint) = :key"
)
