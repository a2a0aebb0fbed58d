"""Start-up checks of what the daemon relies on but can live without for a while.

A directory that does not answer when the daemon starts is worth a warning that names the
option to look at; the daemon serves anyway (users.json accounts and anonymous pulls need no
directory, and the directory is asked again at every login). Redis checks itself the same way
(:class:`tokend.login.shared_limits.redis_store.RedisFailures`).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from tokend.login.ldap.client import Directory
from tokend.login.ldap.report import DirectoryReport
from tokend.logs.namespaces import NamedLogger


class DirectoryProbe(Service):
    """Once the reactor runs, asks the directory what ``tokend check-config`` asks (the
    service account binds, the base exists, accounts are found): a warning naming ``option``
    when it does not answer. ``close`` drops the connection after (a parent of workers,
    which serves no directory logins itself)."""

    log = NamedLogger("tokend.startup_checks.DirectoryProbe")

    def __init__(
        self, directory: Directory, option: str, reactor: Any, *, close: bool = False
    ) -> None:
        self._directory = directory
        self._option = option
        self._reactor = reactor
        self._close = close

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._probe)

    def _probe(self) -> None:
        if not self.running:
            return
        checking: Deferred[DirectoryReport] = Deferred.fromCoroutine(self._directory.check())
        checking.addCallbacks(self._answered, self._silent)

    def _answered(self, report: DirectoryReport) -> None:
        self._done()

    def _silent(self, failure: Any) -> None:
        if self.running:
            self.log.warn(
                "the directory ({option}) does not answer at start-up: {reason}; directory "
                "accounts get 503 until it does (users.json accounts and anonymous pulls work)",
                option=self._option,
                reason=failure.getErrorMessage() or failure.type.__name__,
            )
        self._done()

    def _done(self) -> None:
        if self._close:
            self._directory.close()

    def stopService(self) -> Any:
        super().stopService()
        if self._close:
            self._directory.close()
