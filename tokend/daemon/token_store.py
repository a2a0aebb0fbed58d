"""The access tokens' database in the daemon's trees (#26): the store every token query goes
through (its own thread pool, its engine closed last), and the schema upgrade at start-up.

The upgrade runs once per daemon, before anything is served: in a single-process daemon's
tree, or in the ``--workers`` parent before its workers start (they only query). A database
that cannot be reached then does not stop the daemon: password and anonymous logins never need
it; it is logged once, token logins get 503 meanwhile, and the upgrade is tried again until the
database answers.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.python.failure import Failure

from tokend.daemon.services import StartUpFailure
from tokend.logs.namespaces import NamedLogger
from tokend.store.database import RETRY_AFTER, DatabaseError, DatabaseUnavailable, Location
from tokend.store.migrating import UnknownVersion, Version, upgrade
from tokend.store.runner import EngineService, Store
from tokend.threads import ThreadPoolService, ThreadRunner

STORE_THREADS = 4
"""Queries of the store running at once; more wait for a thread (a slow database holds up only
token logins)."""


class SchemaUpgrade(Service):
    """Brings the database to the newest schema version when the daemon starts.

    At start-up the reactor is not running yet and nothing is served, so the first try runs
    right here: no request meets an old schema. A database that does not answer is logged once
    and tried again every :data:`RETRY_AFTER` seconds on ``threads``; one this tokend cannot
    use (a newer tokend's schema) stops start-up with one sentence."""

    log = NamedLogger("tokend.daemon.SchemaUpgrade")

    def __init__(
        self,
        location: Location,
        threads: ThreadRunner,
        reactor: Any,
        failed: StartUpFailure,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        self._location = location
        self._threads = threads
        self._reactor = reactor
        self._failed = failed
        self._retry_after = retry_after
        self._retry: Any = None

    def startService(self) -> None:
        super().startService()
        try:
            versions = upgrade(self._location)
        except DatabaseUnavailable as e:
            self.log.error(
                "access tokens: {reason}; password and anonymous logins are served, token "
                "logins get 503 until it answers (its schema is upgraded then)",
                reason=e.message,
                database=self._location.shown,
            )
            self._again()
            return
        except (DatabaseError, UnknownVersion) as e:
            self._failed(
                self.log,
                "access tokens: database {database}: {reason}",
                database=self._location.shown,
                reason=str(e),
            )
        self._upgraded(versions)

    def stopService(self) -> None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _again(self) -> None:
        if self.running:
            self._retry = self._reactor.callLater(self._retry_after, self._try)

    def _try(self) -> None:
        self._retry = None
        self._threads.run(upgrade, self._location).addCallbacks(self._upgraded, self._failure)

    def _failure(self, failure: Failure) -> None:
        if not failure.check(DatabaseUnavailable):
            self.log.failure(
                "access tokens: database {database}: upgrade failed",
                failure,
                database=self._location.shown,
            )
        self._again()

    def _upgraded(self, versions: tuple[Version, Version]) -> None:
        before, after = versions
        if before.current == after.current:
            self.log.info(
                "access tokens: database {database} at schema version {version}",
                database=self._location.shown,
                version=after.current,
            )
            return
        self.log.info(
            "access tokens: database {database} upgraded from schema version {before} to {after}",
            database=self._location.shown,
            before=before.current or "none",
            after=after.current,
        )


class TokenStore(MultiService):
    """The store (:attr:`store`) and what it needs, as one service named ``access-tokens``
    in the serving tree: its engine before its pool (services stop in reverse order, so the
    pool's threads are done before the connections close); with ``upgrade_with`` (the daemon's
    start-up failure), the schema upgrade too, before every service added after this one."""

    NAME = "access-tokens"

    def __init__(
        self, location: Location, reactor: Any, upgrade_with: StartUpFailure | None = None
    ) -> None:
        super().__init__()
        self.setName(self.NAME)
        engine = EngineService(location)
        engine.setServiceParent(self)
        pool = ThreadPoolService(reactor, STORE_THREADS, "tokend-store")
        pool.setServiceParent(self)
        if upgrade_with is not None:
            SchemaUpgrade(location, pool, reactor, upgrade_with).setServiceParent(self)
        self.store = Store(engine.tokens, pool)
        """Every query on access tokens, as Deferreds: the door's and the HTTP API's."""


def schema_upgrade(location: Location, reactor: Any, failed: StartUpFailure) -> MultiService:
    """The ``--workers`` parent's upgrade, which queries nothing else: a one-thread pool for
    its retries (no thread starts unless the database was down at start-up)."""
    upgrading = MultiService()
    pool = ThreadPoolService(reactor, 1, "tokend-schema")
    pool.setServiceParent(upgrading)
    SchemaUpgrade(location, pool, reactor, failed).setServiceParent(upgrading)
    return upgrading
