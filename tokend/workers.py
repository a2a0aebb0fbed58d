"""The one way CPU-bound work (bcrypt, parsing big policy files) leaves the reactor thread.

A dedicated, bounded pool: bcrypt must not starve the reactor's shared pool (DNS, other users).
Threads start in ``startService``, after twistd has forked. ``BoundedWorkers`` also bounds the
queue in front of it, so a flood of logins is refused at once instead of waiting for minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, maybeDeferred
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


class Overloaded(Exception):
    """More work is already waiting than the queue allows; try again shortly."""


class BoundedWorkers:
    """At most ``limit`` calls run at once and at most ``queue`` wait; the rest fail at once.

    Waiting here rather than in the thread pool's own unbounded queue is what makes the bound
    possible. A waiting call that is cancelled (the client went away) leaves the queue.
    """

    def __init__(self, workers: Workers, *, limit: int, queue: int) -> None:
        if limit < 1 or queue < 0:
            raise ValueError("limit must be >= 1 and queue >= 0")
        self._workers = workers
        self._semaphore = DeferredSemaphore(limit)
        self.queue = queue

    @property
    def running(self) -> int:
        return self._semaphore.limit - self._semaphore.tokens

    @property
    def waiting(self) -> int:
        return len(self._semaphore.waiting)

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        if not self._semaphore.tokens and self.waiting >= self.queue:
            return fail(Overloaded(f"{self.running} running and {self.waiting} waiting"))
        return self._semaphore.run(self._workers.run, function, *args)
