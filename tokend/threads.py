"""The one way CPU-bound work (bcrypt, parsing big policy files) leaves the reactor thread.

A dedicated, bounded pool: bcrypt must not starve the reactor's shared pool (DNS, other users).
Threads start in ``startService``, after twistd has forked. ``BoundedThreadQueue`` also bounds the
queue in front of it, so a flood of logins is refused at once instead of waiting for minutes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class ThreadRunner(Protocol):
    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]: ...


class ThreadPoolService(Service):
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


class InlineRunner:
    """Runs the work synchronously: for unit tests and tools without a reactor."""

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return maybeDeferred(function, *args)


class Overloaded(Exception):
    """More work is already waiting than the queue allows; try again shortly."""


class Stopped(Overloaded):
    """The service is stopping: work still waiting is refused rather than run."""


@dataclass(eq=False, slots=True)
class _Call:
    function: Callable[..., Any]
    args: tuple[Any, ...]
    result: Deferred[Any] = field(init=False)


class BoundedThreadQueue:
    """At most ``limit`` calls run at once and at most ``queue`` wait; the rest fail at once.

    Waiting here rather than in the thread pool's own unbounded queue is what makes the bound
    possible, so the pool is never handed more than ``limit`` calls. Cancelling a call that
    still waits takes it out of the queue (it never started). Cancelling one that started
    only stops the waiting for it: its thread runs on, and it keeps its slot until the thread
    returns, else every hang-up would let one more bcrypt into the pool. :meth:`stop` fails
    the calls still waiting at once, so a shutdown never works off a backlog.
    """

    def __init__(self, threads: ThreadRunner, *, limit: int, queue: int) -> None:
        if limit < 1 or queue < 0:
            raise ValueError("limit must be >= 1 and queue >= 0")
        self._threads = threads
        self.limit = limit
        self.queue = queue
        self._running = 0
        self._waiting: deque[_Call] = deque()
        self._stopped = False

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._stopped:
            return fail(Stopped("the service is stopping"))
        if self._running >= self.limit and len(self._waiting) >= self.queue:
            return fail(Overloaded(f"{self._running} running and {self.waiting} waiting"))
        call = _Call(function, args)
        call.result = Deferred(lambda _: self._leave(call))
        if self._running < self.limit:
            self._start(call)
        else:
            self._waiting.append(call)
        return call.result

    def stop(self) -> None:
        """Refuse new calls and fail the waiting ones; running ones end in their threads."""
        self._stopped = True
        waiting, self._waiting = self._waiting, deque()
        for call in waiting:
            call.result.errback(Stopped("the service stopped before this call ran"))

    def _leave(self, call: _Call) -> None:
        """The canceller: a waiting call leaves the queue; a started one is left alone."""
        if call in self._waiting:
            self._waiting.remove(call)

    def _start(self, call: _Call) -> None:
        self._running += 1
        maybeDeferred(self._threads.run, call.function, *call.args).addBoth(self._ended, call)

    def _ended(self, result: object, call: _Call) -> None:
        self._running -= 1
        if not call.result.called:
            if isinstance(result, Failure):
                call.result.errback(result)
            else:
                call.result.callback(result)
        # else: its waiter was cancelled; the result (or failure) has nobody to go to.
        while self._waiting and self._running < self.limit:
            self._start(self._waiting.popleft())


class QueueService(Service):
    """Stops a :class:`BoundedThreadQueue` queue with the daemon. Set under the same parent after
    its pool: services stop in reverse order, so the queue is emptied before the pool joins
    its threads, which then have at most one call each to finish."""

    def __init__(self, queue: BoundedThreadQueue) -> None:
        self._queue = queue

    def stopService(self) -> None:
        super().stopService()
        self._queue.stop()
