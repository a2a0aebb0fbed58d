"""Login-throttle news shared between daemons through Redis: the store and its connections.

The throttle itself stays local and synchronous (:class:`tokend.login.throttle.LoginThrottle`):
anonymous and cached requests never wait for anyone. What it saw goes out through its
``publish`` seam; what others saw comes in through ``learn``. Workers of one daemon exchange
news through their parent (:mod:`tokend.daemon.worker_messages`); daemons exchange it through Redis.

Redis holds throttle keys, never names: accounts and addresses are keyed hashes
(:mod:`tokend.login.shared_limits.keys`). Every failure runs one short Lua script (one round trip,
atomic) that adds it to a sorted set per account and per address
(``tokend:throttle:account:<hash>``, ``tokend:throttle:address:<hash>``), each member carrying
a MAC; drops the times older than the window; keeps at most the limit's worth; sets the key's TTL
to the window (a flood of names costs bounded memory, nothing outlives its window); and
publishes the failure, sealed (a MAC over the news, its sender and its time), on
``tokend:throttle:news``. A success clears its account's failures up to its time, an operator's
unlock clears the key; both are published likewise. Every daemon subscribes and takes in what
verifies; anything else is dropped and counted. A process that has not asked about a key since
it (re)joined asks Redis for that key's failures before its first check of it
(:meth:`RedisFailures.lookup`), so a daemon that starts after an account was locked refuses it
too. Client: txredisapi, Twisted-native, so the default reactor stays as it is.

Redis unreachable: nothing waits (beyond the first seconds after start-up, and a short bound
per lookup) and nothing fails; each daemon falls back to its own limits (fail open, for
availability), says so once per outage, and reconnects by itself.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS

from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.keys import REJECTED_REASONS, NewsRejected, SharedKeys
from tokend.login.shared_limits.news import (
    Failed,
    News,
    Seen,
    Succeeded,
    Unlocked,
    news_from_wire,
    news_to_wire,
    throttle_table,
)
from tokend.login.shared_limits.redis_address import RedisAddress
from tokend.login.shared_limits.redis_scripts import (
    CHANNEL,
    FAILED_SCRIPT,
    LOOKUP_SCRIPT,
    SUCCEEDED_SCRIPT,
    UNLOCK_SCRIPT,
    redis_key,
)
from tokend.logs.namespaces import NamedLogger

REPLY_TIMEOUT = 2
"""Seconds a Redis command may take before the store counts Redis as unavailable."""
LOOKUP_TIMEOUT = 1.0
"""Seconds a first check of a key waits for Redis's answer at most; then it goes on without."""
START_UP_WAIT = 3.0
"""Seconds after start-up during which first checks wait for Redis to answer at all; a Redis
that has not answered by then is reported (naming the option) and not waited for again."""
MAX_RECONNECT_DELAY = 5
"""Seconds between reconnection attempts at most: shared limits return soon after Redis."""
REJECTED_LOG_INTERVAL = 60.0
"""Seconds between two log lines about messages dropped (each says how many since the last)."""


class RedisFailures(Service):
    """Throttle news to and from Redis; unreachable Redis only means local limits meanwhile.

    It joins the ``news`` bus as the shared side: the bus's listener learns what other daemons
    saw, and is told each time both connections are up again (news may have been missed: keys
    are to be asked about again).
    """

    log = NamedLogger("tokend.login.shared_failures.RedisFailures")

    def __init__(
        self,
        address: RedisAddress,
        *,
        keys: SharedKeys,
        news: NewsBus,
        per_account: int,
        per_address: int,
        window: float,
        reactor: Any,
        option: str = "--redis",
    ) -> None:
        self._address = address
        self._keys = keys
        self._news = news
        self._limits = {"account": per_account, "address": per_address}
        self._window = window
        self._reactor = reactor
        self._option = option
        self._origin = os.urandom(8).hex()
        self._commands: Any = None
        self._subscriber: Any = None
        self._subscribed = False
        self._outage_logged = False
        self._last_error: str | None = None
        self._starting: list[Deferred[None]] | None = []
        """Lookups waiting for Redis during the first seconds; None once that is over."""
        self._start_timer: Any = None
        self.available = False
        """Both connections up: limits are shared (the metric reads it)."""
        self.rejected = dict.fromkeys(REJECTED_REASONS, 0)
        """Messages and stored failures dropped, by reason (the metric reads it)."""
        self._unlogged = dict.fromkeys(REJECTED_REASONS, 0)
        self._rejected_logged_at: float | None = None
        news.share(self.record, self.lookup)

    def _endpoint(self) -> Any:
        address = self._address
        if address.path is not None:
            return UNIXClientEndpoint(self._reactor, address.path, timeout=REPLY_TIMEOUT)
        endpoint: Any = TCP4ClientEndpoint(
            self._reactor, address.host, address.port, timeout=REPLY_TIMEOUT
        )
        if address.tls:
            return wrapClientTLS(optionsForClientTLS(address.host), endpoint)
        return endpoint

    def startService(self) -> None:
        super().startService()
        import txredisapi  # imported only by daemons that use Redis

        store = self

        class Commands(txredisapi.RedisFactory):  # type: ignore[misc]
            maxDelay = MAX_RECONNECT_DELAY
            initialDelay = 0.2

            def addConnection(self, conn: Any) -> None:
                super().addConnection(conn)
                store._connections_changed()

            def delConnection(self, conn: Any) -> None:
                super().delConnection(conn)
                store._unreachable(ConnectionError("connection lost"))

            def connectionError(self, why: str) -> None:
                super().connectionError(why)
                store._last_error = why

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                store._message(message)

        class Subscriptions(Commands):
            protocol = Subscriber

            def addConnection(self, conn: Any) -> None:
                txredisapi.RedisFactory.addConnection(self, conn)
                if conn.connected:
                    conn.subscribe(CHANNEL).addCallbacks(
                        lambda _: store._subscription(True), lambda f: store._unreachable(f.value)
                    )

            def delConnection(self, conn: Any) -> None:
                txredisapi.RedisFactory.delConnection(self, conn)
                store._subscription(False)
                store._unreachable(ConnectionError("connection lost"))

        address = self._address
        if address.password_in_url:
            self.log.warn(
                "the Redis password is part of {option}: anyone who can list the daemon's "
                "command line or read its environment sees it; use --redis-password-file",
                option=self._option,
            )
        login = {"password": address.password, "username": address.username}
        self._commands = Commands(
            address.shown, address.db, 1, isLazy=True, replyTimeout=REPLY_TIMEOUT, **login
        )
        self._commands.startConnecting(self._endpoint())
        self._subscriber = Subscriptions(address.shown, None, 1, isLazy=True, **login)
        self._subscriber.startConnecting(self._endpoint())
        self._reactor.callWhenRunning(self._start_clock)

    def _start_clock(self) -> None:
        if self.running and self._starting is not None:
            self._start_timer = self._reactor.callLater(START_UP_WAIT, self._started)

    def _started(self) -> None:
        """The first seconds are over: a Redis that has not answered yet is reported, naming
        the option, and nothing waits for it any more."""
        if self._starting is None:
            return
        waiting, self._starting = self._starting, None
        if not self.available and self.running:
            self._outage_logged = True
            self.log.warn(
                "redis at {redis} ({option}) does not answer {seconds:.0f} s after start-up"
                "{reason}: login limits are per process until it does (it is tried again every "
                "few seconds)",
                redis=self._address.shown,
                option=self._option,
                seconds=START_UP_WAIT,
                reason=f" ({self._last_error})" if self._last_error else "",
            )
        for waiter in waiting:
            waiter.callback(None)

    def stopService(self) -> Any:
        super().stopService()
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self._started()
        stopping = [f.disconnect() for f in (self._commands, self._subscriber) if f is not None]
        return DeferredList(stopping, consumeErrors=True)

    def record(self, news: News) -> None:
        """Send this process's news to Redis; dropped (local limits only) while it is away."""
        if not self.running or self._commands is None:
            return
        if not self._commands.size:
            self._unreachable(ConnectionError("not connected"))
            return
        if isinstance(news, Failed):
            self._record_failure(news)
        elif isinstance(news, Succeeded) and self._limits["account"]:
            keys = [redis_key("account", news.account)]
            args = [repr(news.at), CHANNEL, self._sealed(news)]
            self._run(self._commands.handler.eval(SUCCEEDED_SCRIPT, keys, args))

    def _sealed(self, news: News) -> str:
        return self._keys.seal(self._origin, news_to_wire(news), self._reactor.seconds())

    def _record_failure(self, news: Failed) -> None:
        keys: list[str] = []
        # repr: txredisapi sends a float with six decimals, and the times must stay exact.
        args: list[Any] = [repr(news.at), repr(float(self._window)), CHANNEL, self._sealed(news)]
        for table, key in (("account", news.account), ("address", news.address)):
            limit = self._limits[table]
            if key is None or not limit:
                continue
            keys.append(redis_key(table, key))
            args += [self._keys.member(keys[-1], news.at), limit]
        if keys:
            self._run(self._commands.handler.eval(FAILED_SCRIPT, keys, args))

    def _run(self, running: Any) -> None:
        running.addCallbacks(
            lambda _: self._connections_changed(), lambda f: self._unreachable(f.value)
        )

    def lookup(self, pairs: list[tuple[str, str]]) -> Deferred[list[Seen]]:
        """The failures Redis holds for these (table, key) pairs, verified; an empty answer
        when Redis is away or slower than :data:`LOOKUP_TIMEOUT` (fail open)."""
        if self._starting is not None and self.running and not self.available:
            ready: Deferred[None] = Deferred()
            self._starting.append(ready)
            return ready.addCallback(lambda _: self.lookup(pairs))
        if not self.available or self._commands is None:
            return succeed([])
        answer: Deferred[list[Seen]] = Deferred()
        timer = self._reactor.callLater(LOOKUP_TIMEOUT, _settle, answer, [])
        keys = [redis_key(table, key) for table, key in pairs]
        since = repr(self._reactor.seconds() - self._window)

        def found(stored: Any) -> None:
            if timer.active():
                timer.cancel()
            _settle(answer, self._verified(pairs, keys, stored))

        def failed(reason: Any) -> None:
            self._unreachable(reason.value)
            found(None)

        # Never cancelled on timeout: a cancelled reply would shift txredisapi's replies.
        self._commands.handler.eval(LOOKUP_SCRIPT, keys, [since]).addCallbacks(found, failed)
        return answer

    def _verified(self, pairs: list[tuple[str, str]], keys: list[str], stored: Any) -> list[Seen]:
        if not isinstance(stored, list) or len(stored) != len(pairs):
            return []
        seen = []
        for (table, key), name, members in zip(pairs, keys, stored, strict=True):
            times = [self._keys.member_time(name, m) for m in members or []]
            for _ in range(times.count(None)):
                self._reject("unauthenticated")
            valid = tuple(t for t in times if t is not None)
            if valid:
                seen.append(Seen(table, key, valid))  # type: ignore[arg-type]
        return seen

    def unlock(self, table: str, key: str) -> Deferred[tuple[int, int] | None]:
        """Clear ``key`` in Redis and tell every other daemon: (failures cleared there, daemons
        told), or None while Redis is away."""
        if not self.available or self._commands is None:
            return succeed(None)
        sealed = self._sealed(Unlocked(throttle_table(table), key, self._reactor.seconds()))
        running = self._commands.handler.eval(
            UNLOCK_SCRIPT, [redis_key(table, key)], [CHANNEL, sealed]
        )

        def counted(answer: Any) -> tuple[int, int]:
            cleared, told = answer
            return int(cleared), max(0, int(told) - (1 if self._subscribed else 0))

        def failed(reason: Any) -> None:
            self._unreachable(reason.value)

        return running.addCallbacks(counted, failed)  # type: ignore[no-any-return]

    def _subscription(self, subscribed: bool) -> None:
        self._subscribed = subscribed
        self._connections_changed()

    def _connections_changed(self) -> None:
        """Shared again only once both connections are back: commands alone would count our
        failures in Redis while we still miss everyone else's news."""
        commands = self._commands
        if self._subscribed and commands is not None and commands.size:
            self._reachable()

    def _message(self, message: Any) -> None:
        try:
            origin, wire = self._keys.open(message, self._reactor.seconds())
            if origin == self._origin:
                return  # already applied here
            news = news_from_wire(wire)
            if isinstance(news, Seen):
                raise NewsRejected("unreadable")
        except NewsRejected as e:
            self._reject(e.reason)
            return
        except ValueError:
            self._reject("unreadable")
            return
        self._news.learn(news, self._reactor.seconds())

    def _reject(self, reason: str) -> None:
        """Count a dropped message (or stored failure); log now and then, never per message."""
        self.rejected[reason] += 1
        self._unlogged[reason] += 1
        now = self._reactor.seconds()
        logged = self._rejected_logged_at
        if logged is not None and 0 <= now - logged < REJECTED_LOG_INTERVAL:
            return
        self._rejected_logged_at = now
        counts = ", ".join(f"{n} {why}" for why, n in self._unlogged.items() if n)
        self._unlogged = dict.fromkeys(REJECTED_REASONS, 0)
        self.log.warn(
            "dropped news from Redis at {redis} ({counts}): daemons sharing a Redis must share "
            "the signing key (--key), or their limits are not shared; and nobody else may write "
            "to {channel}",
            redis=self._address.shown,
            counts=counts,
            channel=CHANNEL,
        )

    def _reachable(self) -> None:
        if self.available:
            return
        self.available = True
        self._news.rejoined()
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        if self._starting is not None:
            self._started()
            self.log.info(
                "login throttle shared through Redis at {redis}", redis=self._address.shown
            )
        elif self._outage_logged:
            self._outage_logged = False
            self.log.info(
                "redis reachable again at {redis}: login limits are shared again",
                redis=self._address.shown,
            )

    def _unreachable(self, reason: BaseException) -> None:
        self.available = False
        if self._outage_logged or not self.running or self._starting is not None:
            return
        self._outage_logged = True
        self.log.warn(
            "redis unavailable at {redis} ({reason}): login limits are per process until it "
            "returns",
            redis=self._address.shown,
            reason=str(reason) or type(reason).__name__,
        )


def _settle(answer: Deferred[list[Seen]], seen: list[Seen]) -> None:
    if not answer.called:
        answer.callback(seen)
