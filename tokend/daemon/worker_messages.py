"""The parent's conversation with its workers: what it asks them and what it makes of what
they send, over the socketpairs of :mod:`tokend.daemon.wire`. Starting, stopping and restarting
the processes is :class:`tokend.daemon.supervisor.Supervisor`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import eventFromJSON, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from tokend.daemon.wire import (
    CONTROL,
    EXPOSITION,
    HEALTH,
    LOG_EVENT,
    LOG_LINES,
    SCRAPE,
    Framed,
    control,
    frame,
)
from tokend.daemon.worker_logs import ParentLog, marked
from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.news import News, news_from_wire, news_to_wire
from tokend.logs.namespaces import NamedLogger

SCRAPE_TIMEOUT = 2.0
"""Seconds a worker has to answer a metrics scrape; one that does not is left out of it."""
UNLOCK_TIMEOUT = 2.0
"""Seconds a worker has to answer an unlock; one that does not is left out of the count."""


class WorkerChannel(Framed):
    """The parent's end of one worker's socketpair."""

    def __init__(self, on_frames: Callable[[list[tuple[int, bytes]]], None]) -> None:
        self._on_frames = on_frames

    def framesReceived(self, frames: list[tuple[int, bytes]]) -> None:
        self._on_frames(frames)


@dataclass
class WorkerRecord:
    """One worker process as the parent knows it: its slot, its pid, its end of the socketpair
    and the questions it has not answered yet."""

    slot: int
    pid: int
    started: float
    channel: WorkerChannel | None = None
    ready: bool = False
    last_critical: str | None = None
    ended: Deferred[None] = field(default_factory=Deferred)
    scrapes: dict[int, Deferred[bytes]] = field(default_factory=dict)
    """Metrics requests sent and not answered yet, by number."""
    unlocks: dict[int, Deferred[int]] = field(default_factory=dict)
    """Unlocks sent and not answered yet, by number."""


class WorkerMessages:
    """Asks every serving worker (metrics, health, unlocks), passes news between them and to
    Redis, answers their questions to Redis, and writes or relays their log."""

    log = NamedLogger("tokend.processes.Supervisor")

    def __init__(
        self,
        workers: dict[int, WorkerRecord],
        count: int,
        reactor: Any,
        running: Callable[[], bool],
        news: NewsBus,
        log: ParentLog | None = None,
    ) -> None:
        """``workers``: the supervisor's live workers by slot (``count`` of them configured);
        ``running``: whether it still runs (a worker ready after the stop goes unannounced);
        ``news``: the bus it listens on (what Redis hears goes to every worker) and publishes
        the workers' news to."""
        self._workers = workers
        self._reactor = reactor
        self._running = running
        self._news = news
        self._log = log
        self._unlock_number = 0
        self._scrape_number = 0
        self.scrape_failures = dict.fromkeys(range(count), 0)
        """Metrics requests a worker did not answer in time (or answered unreadably)."""
        news.hear(lambda heard, now: self.broadcast(heard), self.rejoined)

    def scrape(self) -> Deferred[list[tuple[int, bytes]]]:
        """Every serving worker's metrics exposition, by worker index. A worker that does not
        answer within :data:`SCRAPE_TIMEOUT` (or ends meanwhile) is left out and counted in
        :attr:`scrape_failures`."""
        return self._ask(SCRAPE, "a metrics scrape")

    def health(self) -> Deferred[list[tuple[int, bytes]]]:
        """Every serving worker's /healthz details (JSON), by worker index; one that does not
        answer within :data:`SCRAPE_TIMEOUT` is left out."""
        return self._ask(HEALTH, "a health request")

    def _ask(self, kind: int, what: str) -> Deferred[list[tuple[int, bytes]]]:
        asked: list[Deferred[tuple[int, bytes] | None]] = []
        for worker in sorted(self._workers.values(), key=lambda w: w.slot):
            if not worker.ready or worker.channel is None:
                continue
            self._scrape_number += 1
            number = self._scrape_number
            answer: Deferred[bytes] = Deferred()
            worker.scrapes[number] = answer
            answer.addTimeout(SCRAPE_TIMEOUT, self._reactor)
            left_out = self._no_answer(worker, number, what, count=kind == SCRAPE)
            answer.addCallbacks(self._answered(worker.slot), left_out)
            asked.append(answer)  # type: ignore[arg-type]
            worker.channel.write(frame(kind, str(number).encode()))
        gathered: Deferred[list[tuple[int, bytes] | None]] = gatherResults(asked)
        return gathered.addCallback(lambda answers: [a for a in answers if a is not None])

    @staticmethod
    def _answered(slot: int) -> Callable[[bytes], tuple[int, bytes]]:
        return lambda body: (slot, body)

    def _no_answer(
        self, worker: WorkerRecord, number: int, what: str, count: bool
    ) -> Callable[[Failure], None]:
        def left_out(reason: Failure) -> None:
            worker.scrapes.pop(number, None)
            if count:
                self.unreadable(worker.slot)
            self.log.warn(
                "worker {slot} (pid {pid}) did not answer {what}: {reason}",
                slot=worker.slot,
                pid=worker.pid,
                what=what,
                reason=reason.getErrorMessage() or getattr(reason.type, "__name__", "no answer"),
            )

        return left_out

    def unreadable(self, slot: int) -> None:
        """Count a worker's scrape as failed."""
        self.scrape_failures[slot] = self.scrape_failures.get(slot, 0) + 1

    def broadcast(self, news: News, *, but: int | None = None) -> None:
        """Tell every worker (except the slot ``but``) what another one or another daemon saw."""
        message = control({"news": news_to_wire(news)})
        for worker in self._workers.values():
            if worker.slot != but and worker.channel is not None:
                worker.channel.write(message)

    def rejoined(self) -> None:
        """Redis is back: every worker asks about each key again when it next sees it."""
        for worker in self._workers.values():
            if worker.channel is not None:
                worker.channel.write(control({"rejoined": True}))

    def unlock(self, table: str, key: str) -> Deferred[list[int]]:
        """Clear one throttle key in every serving worker (``tokend unlock``): the failures
        each cleared; a worker that does not answer in time is left out."""
        asked: list[Deferred[int | None]] = []
        for worker in sorted(self._workers.values(), key=lambda w: w.slot):
            if not worker.ready or worker.channel is None:
                continue
            self._unlock_number += 1
            number = self._unlock_number
            answer: Deferred[int] = Deferred()
            worker.unlocks[number] = answer
            answer.addTimeout(UNLOCK_TIMEOUT, self._reactor)
            answer.addErrback(self._no_unlock(worker, number))
            asked.append(answer)  # type: ignore[arg-type]
            worker.channel.write(control({"unlock": [table, key], "n": number}))
        gathered: Deferred[list[int | None]] = gatherResults(asked)
        return gathered.addCallback(lambda counts: [c for c in counts if c is not None])

    @staticmethod
    def _no_unlock(worker: WorkerRecord, number: int) -> Callable[[Failure], None]:
        def left_out(reason: Failure) -> None:
            worker.unlocks.pop(number, None)

        return left_out

    def _answer(self, worker: WorkerRecord, number: Any, keys: Any) -> None:
        """A worker's question to Redis, answered (empty without Redis or on bad input)."""
        try:
            pairs = [(str(table), str(key)) for table, key in keys]
        except (TypeError, ValueError):
            pairs = []
        lookup = self._news.lookup
        asking = lookup(pairs) if lookup is not None and pairs else None

        def reply(seen: Any) -> None:
            wire = [news_to_wire(news) for news in seen] if isinstance(seen, list) else []
            if worker.channel is not None:
                worker.channel.write(control({"answer": number, "seen": wire}))

        if asking is None:
            reply([])
        else:
            asking.addBoth(reply)

    def received(self, worker: WorkerRecord, frames: list[tuple[int, bytes]]) -> None:
        lines = [payload for kind, payload in frames if kind == LOG_LINES]
        if lines and self._log is not None:
            self._log.write_lines(b"".join(lines))
        for kind, payload in frames:
            if kind == LOG_LINES:
                continue
            elif kind == LOG_EVENT:
                self._relay_event(worker, payload)
            elif kind == EXPOSITION:
                number, _, body = payload.partition(b"\n")
                answer = worker.scrapes.pop(int(number), None) if number.isdigit() else None
                if answer is not None and not answer.called:
                    answer.callback(body)
            elif kind == CONTROL:
                self._control(worker, payload)

    def _relay_event(self, worker: WorkerRecord, payload: bytes) -> None:
        try:
            event = eventFromJSON(payload.decode("utf-8"))
        except ValueError:
            self.log.warn("worker {pid} sent an unreadable log event", pid=worker.pid)
            return
        event = marked(event, worker.pid, worker.slot)
        if not worker.ready and event.get("log_level") is not None:
            if event["log_level"].name == "critical":
                worker.last_critical = formatEvent(event)
        globalLogPublisher(event)

    def _control(self, worker: WorkerRecord, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            self.log.warn("worker {pid} sent an unreadable message", pid=worker.pid)
            return
        if "critical" in message:
            if not worker.ready:
                worker.last_critical = str(message["critical"])
        elif "news" in message:
            try:
                news = news_from_wire(message["news"])
            except ValueError:
                return
            self.broadcast(news, but=worker.slot)
            self._news.publish(news)
        elif "ask" in message:
            self._answer(worker, message["ask"], message.get("keys"))
        elif "unlocked" in message:
            number = message["unlocked"]
            answer = worker.unlocks.pop(number, None) if isinstance(number, int) else None
            cleared = message.get("cleared")
            if answer is not None and not answer.called:
                answer.callback(cleared if isinstance(cleared, int) else 0)
        elif "ready" in message:
            worker.ready = True
            if self._running():
                self.log.info("worker {slot} ready, pid {pid}", slot=worker.slot, pid=worker.pid)

    def forget(self, worker: WorkerRecord) -> None:
        """A worker ended: what it was asked and never answered is given up."""
        for answer in list(worker.scrapes.values()):
            answer.cancel()
        for unlocked in list(worker.unlocks.values()):
            unlocked.cancel()
