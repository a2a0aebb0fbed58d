"""``--workers N``: one listening socket served by N worker processes.

The daemon's first process (the one twistd runs) binds the socket, as a single-process daemon
does, then never accepts on it: it spawns N workers (``python -m tokend.worker``) that inherit
the socket and adopt it (``reactor.adoptStreamPort``), so nginx keeps one upstream and the
kernel spreads connections over whichever workers are waiting. Each worker loads and watches
the policy itself. The parent keeps one socketpair per worker (:mod:`tokend.daemon.wire`
says what travels on it).

Lifecycle: SIGHUP to the parent is passed to every worker (each reloads its policy and its
signing keys); SIGTERM stops every worker, then the parent closes and removes the socket; a
worker that ends is started again after a back-off that grows while workers keep dying young;
a worker that cannot start during start-up stops start-up with one sentence.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import (
    Logger,
)
from twisted.python.failure import Failure

from tokend.daemon.wire import (
    OneProtocol,
    frame,
    split_frames,
)
from tokend.daemon.worker_logs import ParentLog
from tokend.daemon.worker_messages import WorkerChannel, WorkerMessages, WorkerRecord
from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.news import News
from tokend.logs.namespaces import NamedLogger

START_TIMEOUT = 120.0
"""Seconds a worker may take to load its key and policy at start-up."""
STOP_TIMEOUT = 10.0
"""Seconds workers get to stop after SIGTERM before SIGKILL."""
RESTART_DELAY, MAX_RESTART_DELAY = 0.5, 30.0
DIED_YOUNG = 10.0
"""A worker that ends within this many seconds of starting doubles the next back-off."""


class StartUpFailure(Protocol):
    def __call__(self, log: Logger, sentence: str, **fields: Any) -> NoReturn: ...


def worker_count(value: str) -> int:
    """``auto`` (one per CPU) or a whole number from 1 to 256."""
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    count = int(value)
    if not 1 <= count <= 256:
        raise ValueError("must be auto or between 1 and 256")
    return count


class _Ended(ProcessProtocol):
    def __init__(self, on_end: Callable[[Failure], None]) -> None:
        self._on_end = on_end

    def processEnded(self, reason: Failure) -> None:
        self._on_end(reason)


class Supervisor(Service):
    """Starts, restarts and stops the workers; :attr:`messages` talks with them."""

    log = NamedLogger("tokend.processes.Supervisor")

    def __init__(
        self,
        *,
        count: int,
        argv: Sequence[str],
        port: Callable[[], IListeningPort],
        reactor: Any,
        failed: StartUpFailure,
        news: NewsBus | None = None,
        log: ParentLog | None = None,
        log_format: str = "text",
    ) -> None:
        """``port`` gives the bound listening port once the listener has started; ``news``
        (shared by the Redis store, if any) gets every worker's news and answers their
        questions, and what it hears goes to every worker; ``log``, when given, takes the
        workers' finished lines (in ``log_format``), else their events are relayed."""
        self._count = count
        self._argv = list(argv)
        self._port = port
        self._reactor = reactor
        self._failed = failed
        self._log_lines = log_format if log is not None else "events"
        self._workers: dict[int, WorkerRecord] = {}
        self.messages = WorkerMessages(
            self._workers,
            count,
            reactor,
            lambda: bool(self.running),
            NewsBus() if news is None else news,
            log,
        )
        """Metrics, health and unlocks asked of the workers; news passed between them."""
        self._quick_deaths: dict[int, int] = {}
        self._restarts: dict[int, Any] = {}
        self._listen_fd = -1
        self._family = 0
        self._previous_sighup: Any = None
        self.restarts = dict.fromkeys(range(count), 0)
        """Workers started again after one ended, by index (0 … N-1)."""

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._workers.values())

    @property
    def count(self) -> int:
        """Workers configured (--workers)."""
        return self._count

    @property
    def serving(self) -> int:
        """Workers started and serving now."""
        return sum(1 for w in self._workers.values() if w.ready)

    @property
    def scrape_failures(self) -> dict[int, int]:
        """Metrics requests a worker did not answer in time (or answered unreadably)."""
        return self.messages.scrape_failures

    def scrape(self) -> Deferred[list[tuple[int, bytes]]]:
        """Every serving worker's metrics exposition, by worker index."""
        return self.messages.scrape()

    def health(self) -> Deferred[list[tuple[int, bytes]]]:
        """Every serving worker's /healthz details (JSON), by worker index."""
        return self.messages.health()

    def unreadable(self, slot: int) -> None:
        self.messages.unreadable(slot)

    def broadcast(self, news: News, *, but: int | None = None) -> None:
        self.messages.broadcast(news, but=but)

    def rejoined(self) -> None:
        self.messages.rejoined()

    def unlock(self, table: str, key: str) -> Deferred[list[int]]:
        return self.messages.unlock(table, key)

    def startService(self) -> None:
        super().startService()
        port: Any = self._port()
        port.stopReading()  # the workers accept, never the parent
        self._listen_fd = port.fileno()
        self._family = port.socket.family
        started = [self._spawn(slot) for slot in range(self._count)]
        for worker, ours in started:  # all load their policy at once; then each must be ready
            self._connect(worker, ours, self._await_ready(worker, ours))
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        self.log.info(
            "{count} workers serving, pids {pids}; SIGHUP reloads every worker's policy",
            count=self._count,
            pids=self.pids,
        )

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if signal.getsignal(signal.SIGHUP) == self._on_sighup:
            signal.signal(signal.SIGHUP, self._previous_sighup or signal.SIG_DFL)
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        workers = list(self._workers.values())
        for worker in workers:
            self._signal(worker.pid, signal.SIGTERM)
        killer = self._reactor.callLater(STOP_TIMEOUT, self._kill, workers)
        done: Deferred[Any] = DeferredList([w.ended for w in workers])

        def stopped(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            return result

        return done.addBoth(stopped)

    def _kill(self, workers: list[WorkerRecord]) -> None:
        for worker in workers:
            if not worker.ended.called:
                self.log.warn("worker {pid} did not stop in time: SIGKILL", pid=worker.pid)
                self._signal(worker.pid, signal.SIGKILL)

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Pass a reload on to every worker (each re-reads the policy and keys itself)."""
        self.log.info(
            "SIGHUP: reloading the policy and signing keys in {count} workers",
            count=len(self._workers),
        )
        for worker in self._workers.values():
            self._signal(worker.pid, signal.SIGHUP)

    def _spawn(self, slot: int) -> tuple[WorkerRecord, socket.socket]:
        self._restarts.pop(slot, None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = [
            sys.executable, "-m", "tokend.worker",
            "--listen-fd=3", f"--family={int(self._family)}", "--control-fd=4",
            f"--log-lines={self._log_lines}", f"--worker-index={slot}",
            "--", *self._argv,
        ]  # fmt: skip
        holder: list[WorkerRecord] = []
        transport = self._reactor.spawnProcess(
            _Ended(lambda reason: self._ended(holder[0], reason)),
            sys.executable,
            args,
            env=dict(os.environ),
            childFDs={1: 1, 2: 2, 3: self._listen_fd, 4: theirs.fileno()},
        )
        theirs.close()
        worker = WorkerRecord(slot, transport.pid, time.monotonic())
        holder.append(worker)
        self._workers[slot] = worker
        return worker, ours

    def _respawn(self, slot: int) -> None:
        self.restarts[slot] = self.restarts.get(slot, 0) + 1
        worker, ours = self._spawn(slot)
        self._connect(worker, ours, b"")

    def _connect(self, worker: WorkerRecord, ours: socket.socket, leftover: bytes) -> None:
        """Hand the worker's socketpair to the reactor (with what was read of it already)."""
        channel = WorkerChannel(lambda frames: self.messages.received(worker, frames))
        self._reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, OneProtocol(channel))
        ours.close()
        worker.channel = channel
        if leftover:
            channel.dataReceived(leftover)

    def _await_ready(self, worker: WorkerRecord, ours: socket.socket) -> bytes:
        """Start-up only (the reactor does not run yet): block until the worker says it serves,
        relaying its log meanwhile; stop start-up with one sentence if it cannot."""
        deadline = time.monotonic() + START_TIMEOUT
        buffer = b""
        while True:
            try:
                frames, rest = split_frames(buffer)
            except ValueError:
                frames, rest = [], b""
            for index, one in enumerate(frames):
                self.messages.received(worker, [one])
                if worker.ready:
                    return b"".join(frame(*later) for later in frames[index + 1 :]) + rest
            buffer = rest
            remaining = deadline - time.monotonic()
            chunk = b""
            if remaining > 0:
                ours.settimeout(remaining)
                try:
                    chunk = ours.recv(65536)
                except TimeoutError:
                    chunk = b""
                except OSError:
                    chunk = b""
            if not chunk:
                reason = worker.last_critical or (
                    "it exited" if remaining > 0 else f"not ready after {START_TIMEOUT:.0f} s"
                )
                self._abandon_start()
                self._failed(
                    self.log,
                    "worker {slot} could not start: {reason}",
                    slot=worker.slot,
                    reason=reason,
                )
            buffer += chunk

    def _abandon_start(self) -> None:
        for worker in self._workers.values():
            self._signal(worker.pid, signal.SIGKILL)
            with_status(worker.pid)

    def _ended(self, worker: WorkerRecord, reason: Failure) -> None:
        worker.ended.callback(None)
        if self._workers.get(worker.slot) is worker:
            del self._workers[worker.slot]
        self.messages.forget(worker)
        transport: Any = worker.channel.transport if worker.channel is not None else None
        if transport is not None:
            transport.loseConnection()
        if not self.running:
            return
        lived = time.monotonic() - worker.started
        quick = self._quick_deaths.get(worker.slot, 0) + 1 if lived < DIED_YOUNG else 0
        self._quick_deaths[worker.slot] = quick
        delay = min(RESTART_DELAY * 2**quick, MAX_RESTART_DELAY)
        self.log.warn(
            "worker {slot} (pid {pid}) ended after {lived:.1f} s: {reason}; starting another "
            "in {delay:.1f} s",
            slot=worker.slot,
            pid=worker.pid,
            lived=lived,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self._restarts[worker.slot] = self._reactor.callLater(delay, self._respawn, worker.slot)


def with_status(pid: int) -> None:
    """Reap a worker killed while the reactor is not running (it cannot reap it then)."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
