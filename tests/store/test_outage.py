"""A PostgreSQL stopped under the store: every query is DatabaseUnavailable (a 503 later, never
a refused login), and the store recovers by itself once the server is back."""

from __future__ import annotations

import pytest
from postgres_server import running_postgres

from tokend.store.database import DatabaseUnavailable, connect, locate
from tokend.store.migrating import upgrade
from tokend.store.queries import AccessTokens, secret_hash


def test_a_stopped_database_is_unavailable_and_recovery_needs_nothing() -> None:
    with running_postgres() as server:
        location = locate(server.url)
        upgrade(location)
        engine = connect(location)
        tokens = AccessTokens(engine, location)
        made = tokens.create("alice", "ci", secret_hash("s"), {"a/*": ("pull",)}, 10, 100)
        assert tokens.find_by_hash(secret_hash("s")) == made  # a pooled connection is open

        server.stop()
        for query in (
            lambda: tokens.find_by_hash(secret_hash("s")),
            lambda: tokens.touch(made.id, 50, "192.0.2.1"),
            lambda: tokens.revoke(made.id, 50),
            lambda: tokens.list(),
        ):
            with pytest.raises(DatabaseUnavailable) as raised:
                query()
            assert raised.value.retry_after > 0

        server.start()
        assert tokens.find_by_hash(secret_hash("s")) == made
        assert tokens.touch(made.id, 50, "192.0.2.1")  # the failed touch did not count

        server.stop()  # a restart between two logins: the pooled connection is dead,
        server.start()  # and the next query must not be the one that finds out
        assert tokens.get(made.id) is not None
        engine.dispose()
