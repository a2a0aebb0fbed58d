"""Login-throttle news shared beyond one process: its wire form, and the Redis store.

The throttle itself stays local and synchronous (:class:`tokend.login.throttle.LoginThrottle`):
anonymous and cached requests never wait for anyone. What it saw goes out through its
``publish`` seam; what others saw comes in through ``learn``. Workers of one daemon exchange
news through their parent (:mod:`tokend.processes`); daemons exchange it through Redis.

Redis: every failure runs one short Lua script (one round trip, atomic) that adds the failure
to a sorted set per account and per address (``tokend:throttle:account:<sha256>``,
``tokend:throttle:address:<sha256>``), drops the times older than the window, keeps at most the
limit's worth, sets the key's TTL to the window (so a flood of names costs bounded memory, and
nothing outlives its window), and publishes the key's failure times on
``tokend:throttle:news``. Every daemon subscribes and merges those times into its local tables
(merging is idempotent, so its own failures echoed back do not count twice). A success deletes
its account's key and is published likewise. Client: txredisapi, Twisted-native, so the
default reactor stays as it is.

Redis unreachable: nothing waits and nothing fails; each daemon falls back to its own limits
(fail open, for availability), says so once per outage, and reconnects by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger

from tokend.login.throttle import Failed, LoginThrottle, News, Seen, Succeeded

NAMESPACE = "tokend:throttle:"
CHANNEL = NAMESPACE + "news"
REPLY_TIMEOUT = 2
"""Seconds a Redis command may take before the store counts Redis as unavailable."""
MAX_RECONNECT_DELAY = 5
"""Seconds between reconnection attempts at most: shared limits return soon after Redis."""

FAILED_SCRIPT = """
local now, window, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local news = {origin = ARGV[4], seen = {}}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[4 + 3 * i - 2])
  redis.call('ZADD', key, ARGV[1], member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  redis.call('ZREMRANGEBYRANK', key, 0, -limit - 1)
  redis.call('PEXPIRE', key, math.ceil(window * 1000))
  local flat = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local times = {}
  for j = 2, #flat, 2 do times[#times + 1] = flat[j] end
  news.seen[i] = {ARGV[4 + 3 * i - 1], ARGV[4 + 3 * i], times}
end
redis.call('PUBLISH', ARGV[5 + 3 * #KEYS], cjson.encode(news))
return #KEYS
"""
"""KEYS: the sorted sets; ARGV: now, window, unique member, origin, then per key its limit,
table and plain name, then the channel. Times travel as Redis's own score strings (exact
doubles; cjson would round numbers to 14 digits and a failure echoed back would no longer
match itself)."""

SUCCEEDED_SCRIPT = """
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""


def news_to_wire(news: News) -> dict[str, Any]:
    """A JSON-able form of one piece of throttle news."""
    if isinstance(news, Failed):
        return {"failed": [news.account, news.address, news.at]}
    if isinstance(news, Succeeded):
        return {"succeeded": [news.account, news.address, news.at]}
    return {"seen": [news.table, news.key, list(news.times)]}


def news_from_wire(wire: Any) -> News:
    """The news a wire form stands for; ValueError for anything else."""
    try:
        if "failed" in wire:
            account, address, at = wire["failed"]
            if account is not None and not isinstance(account, str):
                raise ValueError("account")
            return Failed(account, str(address), float(at))
        if "succeeded" in wire:
            account, address, at = wire["succeeded"]
            return Succeeded(str(account), str(address), float(at))
        table, key, times = wire["seen"]
        if table not in ("account", "address"):
            raise ValueError("table")
        return Seen(table, str(key), tuple(float(t) for t in times))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not throttle news: {e}") from None


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where Redis is: a UNIX socket path, or host and port (with TLS for ``rediss``)."""

    url: str
    path: str | None = None
    host: str = "localhost"
    port: int = 6379
    tls: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def shown(self) -> str:
        """The URL without its password, for logs."""
        if self.path is not None:
            return f"unix://{self.path}" + (f"?db={self.db}" if self.db else "")
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://…`` (TLS) or
    ``unix:///path/to/redis.sock[?db=N]``; ValueError with a sentence otherwise."""
    parts = urlsplit(url)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ValueError("a unix:// Redis URL needs an absolute socket path (unix:///path)")
        db_values = parse_qs(parts.query).get("db", ["0"])
        return RedisAddress(
            url, path=parts.path, db=_db(db_values[0]), username=username, password=password
        )
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    if not parts.hostname:
        raise ValueError("names no host")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("has a bad port") from None
    db = parts.path.strip("/") or "0"
    return RedisAddress(
        url,
        host=parts.hostname,
        port=port,
        tls=parts.scheme == "rediss",
        db=_db(db),
        username=username,
        password=password,
    )


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"has a bad database number {text!r}")
    return int(text)


def key_of(table: str, name: str) -> str:
    """A Redis key of bounded length for any account name or address."""
    return (
        NAMESPACE + table + ":" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    )


class RedisFailures(Service):
    """Throttle news to and from Redis; unreachable Redis only means local limits meanwhile."""

    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        *,
        sink: Callable[[News], None],
        per_account: int,
        per_address: int,
        window: float,
        reactor: Any,
    ) -> None:
        """``sink`` gets what any daemon saw (this one's own failures included, harmlessly:
        merging is idempotent)."""
        self._address = address
        self._sink = sink
        self._limits = {"account": per_account, "address": per_address}
        self._window = window
        self._reactor = reactor
        self._origin = os.urandom(8).hex()
        self._commands: Any = None
        self._subscriber: Any = None
        self._subscribed = False
        self.available = False
        self._outage_logged = False

    def attach(self, throttle: LoginThrottle, parent: MultiService) -> None:
        """Share ``throttle``'s news through Redis (a single-process daemon)."""
        throttle.publish = self.record
        self.setServiceParent(parent)

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

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                store._message(message)

        class Subscriptions(txredisapi.RedisFactory):  # type: ignore[misc]
            protocol = Subscriber
            maxDelay = MAX_RECONNECT_DELAY
            initialDelay = 0.2

            def addConnection(self, conn: Any) -> None:
                super().addConnection(conn)
                if conn.connected:
                    conn.subscribe(CHANNEL).addCallbacks(
                        lambda _: store._subscription(True), lambda f: store._unreachable(f.value)
                    )

            def delConnection(self, conn: Any) -> None:
                super().delConnection(conn)
                store._subscription(False)
                store._unreachable(ConnectionError("connection lost"))

        address = self._address
        self._commands = Commands(
            address.shown,
            address.db,
            1,
            isLazy=True,
            password=address.password,
            username=address.username,
            replyTimeout=REPLY_TIMEOUT,
        )
        self._commands.startConnecting(self._endpoint())
        self._subscriber = Subscriptions(
            address.shown, None, 1, isLazy=True, password=address.password,
            username=address.username,
        )  # fmt: skip
        self._subscriber.startConnecting(self._endpoint())
        self.log.info("login throttle shared through Redis at {redis}", redis=address.shown)

    def stopService(self) -> Any:
        super().stopService()
        stopping = [f.disconnect() for f in (self._commands, self._subscriber) if f is not None]
        from twisted.internet.defer import DeferredList

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
        elif isinstance(news, Succeeded):
            self._record_success(news)

    def _record_failure(self, news: Failed) -> None:
        keys: list[str] = []
        # repr: txredisapi sends a float with six decimals, and the times echoed back must
        # equal the ones the workers hold, to the last bit.
        args: list[Any] = [
            repr(news.at),
            repr(float(self._window)),
            f"{news.at!r}:{os.urandom(6).hex()}",
            self._origin,
        ]
        for table, name in (("account", news.account), ("address", news.address)):
            limit = self._limits[table]
            if name is None or not limit:
                continue
            keys.append(key_of(table, name))
            args += [limit, table, name]
        if not keys:
            return
        args.append(CHANNEL)
        self._run(self._commands.handler.eval(FAILED_SCRIPT, keys, args))

    def _record_success(self, news: Succeeded) -> None:
        if not self._limits["account"]:
            return
        message = json.dumps({"origin": self._origin, "succeeded": news_to_wire(news)["succeeded"]})
        keys = [key_of("account", news.account)]
        self._run(self._commands.handler.eval(SUCCEEDED_SCRIPT, keys, [CHANNEL, message]))

    def _run(self, running: Any) -> None:
        running.addCallbacks(
            lambda _: self._connections_changed(), lambda f: self._unreachable(f.value)
        )

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
            body = json.loads(message)
            if "succeeded" in body:
                if body.get("origin") == self._origin:
                    return  # already applied here, and a later failure must not be cleared
                self._sink(news_from_wire({"succeeded": body["succeeded"]}))
                return
            for table, name, times in body["seen"]:
                self._sink(news_from_wire({"seen": [table, name, times or []]}))
        except (ValueError, KeyError, TypeError):
            self.log.warn("ignored an unreadable message on {channel}", channel=CHANNEL)

    def _reachable(self) -> None:
        if self.available:
            return
        self.available = True
        if self._outage_logged:
            self._outage_logged = False
            self.log.info(
                "redis reachable again at {redis}: login limits are shared again",
                redis=self._address.shown,
            )

    def _unreachable(self, reason: BaseException) -> None:
        self.available = False
        if self._outage_logged or not self.running:
            return
        self._outage_logged = True
        self.log.warn(
            "redis unavailable at {redis} ({reason}): login limits are per process until it "
            "returns",
            redis=self._address.shown,
            reason=str(reason) or type(reason).__name__,
        )
