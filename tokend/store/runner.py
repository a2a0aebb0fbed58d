"""The store as the daemon uses it: every query on the store's own bounded thread pool, never on
the reactor thread, each answer a Deferred.

The pool is a :class:`~tokend.threads.ThreadPoolService` (threads start after twistd forks), so
a slow or unreachable database holds up only the logins that need it, never bcrypt or DNS.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from tokend.access_tokens.record import AccessToken, Cap
from tokend.store.database import Location, engine_for
from tokend.store.queries import AccessTokens
from tokend.threads import ThreadRunner


class Store:
    """:class:`~tokend.store.queries.AccessTokens`, each call run by ``threads``."""

    def __init__(self, tokens: AccessTokens, threads: ThreadRunner) -> None:
        self._tokens = tokens
        self._threads = threads

    def create(
        self, owner: str, name: str, hashed: str, cap: Cap, created_at: int, expires_at: int
    ) -> Deferred[AccessToken]:
        return self._threads.run(
            self._tokens.create, owner, name, hashed, cap, created_at, expires_at
        )

    def list(self, owner: str | None = None) -> Deferred[list[AccessToken]]:
        return self._threads.run(self._tokens.list, owner)

    def get(self, token_id: str) -> Deferred[AccessToken | None]:
        return self._threads.run(self._tokens.get, token_id)

    def find_by_hash(self, hashed: str) -> Deferred[AccessToken | None]:
        return self._threads.run(self._tokens.find_by_hash, hashed)

    def revoke(self, token_id: str, now: int) -> Deferred[AccessToken | None]:
        return self._threads.run(self._tokens.revoke, token_id, now)

    def touch(self, token_id: str, now: int, address: str | None) -> Deferred[bool]:
        return self._threads.run(self._tokens.touch, token_id, now, address)


class EngineService(Service):
    """Closes the store's connections when the daemon stops. Set under the same parent before
    the store's pool: services stop in reverse order, so no query still runs when it closes.
    No file is touched here (twistd may still be root): the schema upgrade at start-up creates
    a SQLite file, as the daemon's user."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.engine = engine_for(location)
        self.tokens = AccessTokens(self.engine, location)

    def stopService(self) -> None:
        super().stopService()
        self.engine.dispose()
