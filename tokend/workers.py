"""The one way CPU-bound work (bcrypt, parsing big policy files) leaves the reactor thread.

A dedicated, bounded pool: bcrypt must not starve the reactor's shared pool (DNS, other users).
Threads start in ``startService``, after twistd has forked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class Workers(Protocol):
    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]: ...


class WorkerPool(Service):
    """A bounded thread pool that lives as long as the service."""

    def __init__(self, reactor: IReactorFromThreads, size: int, name: str) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=size, name=name)

    @property
    def size(self) -> int:
        return int(self._pool.max)

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return threads.deferToThreadPool(self._reactor, self._pool, function, *args)


class InlineWorkers:
    """Runs the work synchronously: for unit tests and tools without a reactor."""

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return maybeDeferred(function, *args)
