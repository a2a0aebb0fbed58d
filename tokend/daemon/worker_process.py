"""One worker of a ``--workers N`` daemon (see tokend.daemon.supervisor).

Started by the daemon's parent process only: it inherits the bound listening socket and one end
of a socketpair to the parent, parses the same options the daemon got, builds the same service
tree minus the listeners (it adopts the socket instead; its metrics go to the parent when
asked), and runs its own reactor. Its log events go to the parent, which writes them where
twistd was told to; it ends when the parent goes away.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import (
    LogLevel,
    eventAsJSON,
    formatEvent,
)

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
from tokend.daemon.worker_logs import marked
from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.news import News, Seen, news_from_wire, news_to_wire
from tokend.login.shared_limits.redis_store import LOOKUP_TIMEOUT, START_UP_WAIT
from tokend.logs.text_lines import format_text_line

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from tokend.policy.holder import PolicyHolder
    from tokend.web.health import KeyFiles


ASK_TIMEOUT = START_UP_WAIT + LOOKUP_TIMEOUT + 1
"""Seconds a worker waits for the parent's answer from Redis at most (the parent bounds its
own wait; this only covers a parent that never answers)."""


class ParentLink(Framed):
    """The worker's end of the socketpair: log events, news and questions for Redis out; news,
    answers, unlocks and metrics requests in."""

    def __init__(self, reactor: Any, news: NewsBus, *, asks: bool) -> None:
        """Joins ``news`` as its shared side: the throttle's news goes to the parent, and
        (``asks``: with --redis) its questions for Redis too."""
        self._reactor = reactor
        self._news = news
        self._registry: CollectorRegistry | None = None
        self._holder: PolicyHolder | None = None
        self._keys: KeyFiles | None = None
        self._asked = 0
        self._answers: dict[int, Deferred[list[Seen]]] = {}
        news.share(self.publish, self.ask if asks else None)

    def expose(
        self,
        registry: CollectorRegistry,
        holder: PolicyHolder | None = None,
        keys: KeyFiles | None = None,
    ) -> None:
        """Answer the parent's metrics requests with this registry's exposition, and its
        health requests with the details of the policy ``holder`` serves and its ``keys``."""
        self._registry = registry
        self._holder = holder
        self._keys = keys

    def publish(self, news: News) -> None:
        self.write(control({"news": news_to_wire(news)}))

    def ask(self, pairs: list[tuple[str, str]]) -> Deferred[list[Seen]]:
        """What Redis holds for these keys, through the parent (see LoginThrottle.consult)."""
        self._asked += 1
        number = self._asked
        answer: Deferred[list[Seen]] = Deferred()
        self._answers[number] = answer
        timer = self._reactor.callLater(ASK_TIMEOUT, self._answered, number, [])

        def settled(seen: list[Seen]) -> list[Seen]:
            if timer.active():
                timer.cancel()
            return seen

        self.write(control({"ask": number, "keys": pairs}))
        return answer.addCallback(settled)

    def _answered(self, number: Any, seen: list[Seen]) -> None:
        answer = self._answers.pop(number, None) if isinstance(number, int) else None
        if answer is not None and not answer.called:
            answer.callback(seen)

    def framesReceived(self, frames: list[tuple[int, bytes]]) -> None:
        for kind, payload in frames:
            if kind == SCRAPE:
                self._answer_scrape(payload)
            elif kind == HEALTH:
                self._answer_health(payload)
            elif kind == CONTROL:
                self._learn(payload)

    def _answer_scrape(self, number: bytes) -> None:
        from prometheus_client import generate_latest

        body = generate_latest(self._registry) if self._registry is not None else b""
        self.write(frame(EXPOSITION, number + b"\n" + body))

    def _answer_health(self, number: bytes) -> None:
        from tokend.web.health import details

        body = details(self._holder.status(), keys=self._keys) if self._holder is not None else {}
        answer = json.dumps(body, separators=(",", ":")).encode("utf-8")
        self.write(frame(EXPOSITION, number + b"\n" + answer))

    def _learn(self, payload: bytes) -> None:
        """The other workers' news (and unlocks) for this worker's throttle, on the bus."""
        try:
            message = json.loads(payload)
            if "news" in message:
                self._news.learn(news_from_wire(message["news"]), self._reactor.seconds())
            elif "answer" in message:
                seen = [news_from_wire(wire) for wire in message["seen"]]
                self._answered(message["answer"], [s for s in seen if isinstance(s, Seen)])
            elif "rejoined" in message:
                self._news.rejoined()
            elif "unlock" in message:
                table, key = message["unlock"]
                cleared = self._news.unlock(table, str(key))
                if cleared is not None:
                    self.write(control({"unlocked": message["n"], "cleared": cleared}))
        except (ValueError, KeyError, TypeError):
            return

    def connectionLost(self, reason: Any = None) -> None:
        """The parent is gone: so is this worker."""
        if self._reactor.running:
            self._reactor.stop()


class AdoptedListener(Service):
    """Serves the socket the parent bound. Stopping only stops accepting: the socket file and
    its lock belong to the parent (an adopted UNIX port would unlink the file when closed)."""

    def __init__(self, fd: int, family: int, factory: Any, reactor: Any) -> None:
        self._fd = fd
        self._family = family
        self._factory = factory
        self._reactor = reactor
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        # What reactor.adoptStreamPort does, with ports that accept one connection per wake-up.
        if self._family == socket.AF_UNIX:
            port: Any = _FairUNIXPort._fromListeningDescriptor(
                self._reactor, self._fd, self._factory
            )
        else:
            port = _FairTCPPort._fromListeningDescriptor(
                self._reactor, self._fd, self._family, self._factory
            )
        port.startListening()
        self.port = port
        os.close(self._fd)  # the port works on a copy

    def stopService(self) -> None:
        super().stopService()
        if self.port is not None:
            port: Any = self.port
            port.stopReading()
            port.socket.close()
            self.port = None


ACCEPT_PAUSE = 0.001
"""Seconds a worker leaves the listening socket to the others after accepting a connection."""


class _OneAccept:
    """Every worker is woken for a new connection and the first to call accept() gets it.
    Twisted's port accepts up to a hundred at once (and learns to take more), so one worker
    would take a whole burst of keep-alive connections and keep them: one at a time spreads
    them over the workers that are free."""

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass

    def doRead(self) -> None:
        """Accept one, then leave the next connection to a worker less busy for a moment."""
        port: Any = self
        super().doRead()  # type: ignore[misc]
        if port.connected and not port.disconnecting:
            port.stopReading()
            port.reactor.callLater(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        port: Any = self
        if port.connected and not port.disconnecting:
            port.startReading()


class _FairUNIXPort(_OneAccept, unix.Port):
    def startListening(self) -> None:
        """Serve the adopted socket as the parent bound it. Twisted's own ``startListening``
        would chmod the path to its default mode 0666 (whatever ``:mode=`` said, so every
        local user could reach tokend past nginx and name their own X-Real-IP) and call
        ``listen()`` again with its default backlog of 50; this one leaves the socket file,
        its mode, its group and its backlog alone."""
        port: Any = self
        skt = port._preexistingSocket
        if skt is None:
            raise RuntimeError("a worker only adopts the socket its parent bound")
        port._preexistingSocket = None
        tcp._reservedFD.reserve()  # as Twisted's: a descriptor kept for running out of them
        port.factory.doStart()
        port.connected = True
        port.socket = skt
        port.fileno = skt.fileno
        port.startReading()


class _FairTCPPort(_OneAccept, tcp.Port):
    pass


class Outbox:
    """Log observer: each event to the parent, as the finished line (``text``: twistd's, marked
    ``pid N``; ``json``: --log-format json's) or as the event (``events``: the parent's
    observer formats it); written straight to the socket until the reactor owns it, then
    through the link."""

    def __init__(
        self, channel: socket.socket, lines: str = "events", index: int | None = None
    ) -> None:
        self._channel = channel
        self._pid = os.getpid()
        self._index = index
        self._lines = lines
        self.link: ParentLink | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self._lines == "events":
            self.send(frame(LOG_EVENT, eventAsJSON(event).encode("utf-8")))
            return
        event = marked(event, self._pid, self._index)
        if self._lines == "json":
            from tokend.logs.json_lines import event_as_json

            line: str | None = event_as_json(event)
        else:
            line = format_text_line(event)
        if line:
            self.send(frame(LOG_LINES, line.encode("utf-8")))
        if event.get("log_level") == LogLevel.critical:
            self.send(control({"critical": formatEvent(event)}))

    def send(self, message: bytes) -> None:
        if self.link is not None:
            self.link.write(message)
            return
        try:
            self._channel.sendall(message)
        except OSError:
            pass


def critical_event(sentence: str) -> dict[str, Any]:
    import time

    return {
        "log_format": "{sentence}",
        "sentence": sentence,
        "log_level": LogLevel.critical,
        "log_namespace": "tokend.worker",
        "log_time": time.time(),
    }


class WorkerSetup:
    """What serving_tree needs to build a worker's tree: the inherited socket, the news bus
    the parent link shares (the throttle's news out, the other workers' in, questions for
    Redis through the parent), and how to hand its metrics to the parent (which serves
    --metrics for all workers)."""

    def __init__(
        self,
        listen_fd: int,
        family: int,
        news: NewsBus,
        expose: Callable[[CollectorRegistry, PolicyHolder, KeyFiles], None] = (
            lambda registry, holder, keys: None
        ),
    ):
        self.listen_fd = listen_fd
        self.family = family
        self.news = news
        self.expose = expose

    def listener(self, site: Any, reactor: Any) -> AdoptedListener:
        """The service serving ``site`` on the socket the parent bound."""
        return AdoptedListener(self.listen_fd, self.family, site, reactor)
