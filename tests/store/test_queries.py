"""The queries on real SQLite and PostgreSQL: what is kept of a token, who finds it, revocation,
and last use written at most once a minute per token, across processes too."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import pytest_twisted
from sqlalchemy import Engine, event, exc
from twisted.internet import reactor

from tokend.access_tokens.record import AccessToken
from tokend.store.database import DatabaseUnavailable, Location, connect, locate
from tokend.store.migrating import upgrade
from tokend.store.queries import TOUCH_INTERVAL, AccessTokens, secret_hash
from tokend.store.runner import EngineService, Store
from tokend.threads import ThreadPoolService

SECRET = "tokend_at_" + "x" * 43
CAP = {"team/*": ("pull", "push"), "base/**": ("pull",)}


@pytest.fixture
def engine(location: Location) -> Iterator[Engine]:
    upgrade(location)
    found = connect(location)
    yield found
    found.dispose()


@pytest.fixture
def tokens(engine: Engine, location: Location) -> AccessTokens:
    return AccessTokens(engine, location)


def test_a_token_is_kept_with_its_hash_only_and_found_by_it(
    tokens: AccessTokens, engine: Engine
) -> None:
    made = tokens.create("alice", "ci-deploy", secret_hash(SECRET), CAP, 1000, 1000 + 86_400)
    assert made == tokens.get(made.id)
    assert made.cap == CAP and made.usable_at(1000) and not made.usable_at(1000 + 86_400)
    assert SECRET not in repr(made)
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT * FROM access_tokens").all()
    assert SECRET not in repr(stored) and secret_hash(SECRET) in repr(stored)
    assert tokens.find_by_hash(secret_hash(SECRET)) == made
    assert tokens.find_by_hash(secret_hash(SECRET + "y")) is None
    assert tokens.get("nope") is None


def test_tokens_are_listed_oldest_first_all_or_one_owners(tokens: AccessTokens) -> None:
    first = tokens.create("alice", "a", secret_hash("1"), CAP, 10, 100)
    other = tokens.create("bob", "b", secret_hash("2"), {}, 20, 100)
    second = tokens.create("alice", "c", secret_hash("3"), CAP, 30, 100)
    assert tokens.list() == [first, other, second]
    assert tokens.list("alice") == [first, second]
    assert tokens.list("carol") == []
    assert len({first.id, other.id, second.id}) == 3


def test_two_tokens_never_share_a_secret(tokens: AccessTokens) -> None:
    tokens.create("alice", "a", secret_hash(SECRET), CAP, 10, 100)
    with pytest.raises(exc.IntegrityError):
        tokens.create("bob", "b", secret_hash(SECRET), CAP, 10, 100)


@pytest.mark.parametrize(
    ("owner", "name", "expires"), [("", "n", 100), ("a", "x" * 257, 100), ("a", "n", 10)]
)
def test_a_token_without_an_owner_a_sane_name_or_a_future_is_refused(
    tokens: AccessTokens, owner: str, name: str, expires: int
) -> None:
    with pytest.raises(ValueError):
        tokens.create(owner, name, secret_hash(SECRET), CAP, 10, expires)
    assert tokens.list() == []


def test_a_revoked_token_keeps_its_first_revocation(tokens: AccessTokens) -> None:
    made = tokens.create("alice", "a", secret_hash(SECRET), CAP, 10, 100)
    revoked = tokens.revoke(made.id, 50)
    assert revoked is not None and revoked.revoked_at == 50 and not revoked.usable_at(51)
    again = tokens.revoke(made.id, 60)
    assert again is not None and again.revoked_at == 50
    found = tokens.find_by_hash(secret_hash(SECRET))
    assert found is not None and found.revoked_at == 50  # found, so the refusal can be logged
    assert tokens.revoke("nope", 60) is None


def test_last_use_is_written_at_most_once_a_minute_per_token_across_processes(
    tokens: AccessTokens, engine: Engine, location: Location
) -> None:
    made = tokens.create("alice", "a", secret_hash(SECRET), CAP, 0, 10_000)
    other = tokens.create("alice", "b", secret_hash("other"), CAP, 1, 10_000)
    another_process = AccessTokens(engine, location)
    writes: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: writes.append(a[2]))

    assert tokens.touch(made.id, 1000, "192.0.2.7")
    assert not tokens.touch(made.id, 1000 + TOUCH_INTERVAL - 1, "192.0.2.8")
    assert len(writes) == 1  # this process knew: nothing was sent to the database
    assert not another_process.touch(made.id, 1030, "192.0.2.9")  # the database's condition
    assert tokens.touch(other.id, 1001, "2001:db8::1")  # each token has its own minute
    assert tokens.touch(made.id, 1000 + TOUCH_INTERVAL, "192.0.2.10")
    assert [t.last_used_at for t in tokens.list()] == [1060, 1001]
    assert [t.last_used_from for t in tokens.list()] == ["192.0.2.10", "2001:db8::1"]


def test_queries_on_a_database_that_does_not_answer_are_unavailable_not_errors() -> None:
    nowhere = locate("postgresql://tokend@/tokend?host=/nonexistent")
    tokens = AccessTokens(connect(nowhere), nowhere)
    with pytest.raises(DatabaseUnavailable) as raised:
        tokens.find_by_hash(secret_hash(SECRET))
    assert raised.value.retry_after > 0 and "/nonexistent" in str(raised.value)
    assert SECRET not in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_the_store_runs_every_query_on_its_own_threads(location: Location) -> None:
    upgrade(location)
    service = EngineService(location)
    pool = ThreadPoolService(reactor, 2, "store")
    pool.startService()
    threads: set[str] = set()
    event.listen(
        service.engine,
        "before_cursor_execute",
        lambda *a: threads.add(threading.current_thread().name),
    )
    store = Store(service.tokens, pool)
    try:
        made: AccessToken = await store.create("alice", "a", secret_hash(SECRET), CAP, 10, 100)
        assert await store.get(made.id) == made
        assert await store.find_by_hash(secret_hash(SECRET)) == made
        assert await store.list("alice") == [made]
        assert await store.touch(made.id, 20, "192.0.2.7")
        revoked = await store.revoke(made.id, 30)
        assert revoked is not None and revoked.revoked_at == 30
    finally:
        pool.stopService()
        service.stopService()
    assert threading.main_thread().name not in threads and threads, threads
