"""The daemon's control socket, through which ``tokend unlock`` ends a lockout now.

A UNIX socket owned by the daemon (``--control-socket``; by default the token socket's path
plus ``.control``), mode 0600: only the daemon's own user (and root) may connect, which is who
may end a lockout. It is bound after twistd gives up root, so that user owns it. One JSON line
in, one JSON line out, then the daemon closes the connection:

    {"unlock": "account", "name": "alice"}
    {"unlock": "address", "name": "203.0.113.7"}

The answer says what was cleared: failures in each process of the daemon (every worker with
``--workers``), and with ``--redis`` in Redis, with how many other daemons were told (an
authenticated unlock message, which each applies to its own processes).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

from twisted.application import strports
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin

from tokend.login.shared_limits.keys import SharedKeys
from tokend.login.shared_limits.redis_store import RedisFailures
from tokend.login.throttle import address_key
from tokend.logs.namespaces import NamedLogger

CONTROL_SUFFIX = ".control"
IDLE_TIMEOUT = 10
"""Seconds a control connection may take to send its request."""
TABLES = ("account", "address")

LocalUnlock = Callable[[str, str], Deferred[list[int]]]
"""Clears one throttle key in every process of this daemon: failures cleared, per process."""


def control_endpoint(path: str) -> str:
    """The strports description of a control socket: mode 0600 and a lock file (a stale
    socket left by a crash is cleared, a running daemon's is not taken over)."""
    escaped = path.replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:{escaped}:mode=600:lockfile=1"


class UnlockRefused(ValueError):
    """A request the daemon cannot carry out; the message says why."""


class Unlocking:
    """What ``tokend unlock`` asks for: the name's throttle keys cleared here and in Redis."""

    log = NamedLogger("tokend.control.Unlocking")

    def __init__(
        self,
        keys: SharedKeys,
        local: LocalUnlock,
        redis: RedisFailures | None = None,
        entries: Callable[[str], Awaitable[list[str]]] | None = None,
    ) -> None:
        """``entries``: the throttle names of the directory entry an account name leads to
        (its failures are counted under the entry too), looked up when it is unlocked."""
        self._keys = keys
        self._local = local
        self._redis = redis
        self._entries = entries

    async def unlock(self, table: str, name: str) -> dict[str, Any]:
        if table not in TABLES:
            raise UnlockRefused("unlock what? account or address")
        if table == "address":
            try:
                names = [address_key(str(ipaddress.ip_address(name)))]
            except ValueError:
                raise UnlockRefused(f"{name!r} is not an IP address") from None
        else:
            if not name or not name.isprintable():
                raise UnlockRefused("not an account name")
            # Directory accounts are counted by their casefolded name (one person, one budget).
            names = list(dict.fromkeys((name, name.casefold())))
        entries = [] if table == "address" or self._entries is None else await self._entries(name)
        cleared, processes, redis = 0, 0, None
        for each in names + entries:
            key = self._keys.name(table, each)
            counts = await self._local(table, key)
            if each not in entries:  # an entry's failures are its names' failures again
                cleared += max(counts, default=0)  # each process held the same failures
            processes = max(processes, len(counts))
            if self._redis is not None:
                shared = await self._redis.unlock(table, key)
                if shared is not None:
                    before = redis or {"cleared": 0, "told": 0}
                    redis = {"cleared": before["cleared"] + shared[0], "told": shared[1]}
        self.log.info(
            "unlocked {table} {name} (tokend unlock): {cleared} failures cleared ({processes} "
            "processes){shared}",
            table=table,
            name=name,
            cleared=cleared,
            processes=processes,
            shared=(
                ""
                if self._redis is None
                else " (Redis unavailable)"
                if redis is None
                else f", {redis['cleared']} in Redis, {redis['told']} other daemons told"
            ),
        )
        return {
            "unlocked": table,
            "name": name,
            "cleared": cleared,
            "processes": processes,
            "redis": redis,
            "redis_configured": self._redis is not None,
        }


class _Control(LineOnlyReceiver, TimeoutMixin):
    MAX_LENGTH = 4096
    delimiter = b"\n"

    def __init__(self, unlocking: Unlocking) -> None:
        self._unlocking = unlocking
        self._busy = False

    def connectionMade(self) -> None:
        self.setTimeout(IDLE_TIMEOUT)

    def timeoutConnection(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answer({"error": "request too long"})

    def lineReceived(self, line: bytes) -> None:
        if self._busy:
            return
        self._busy = True
        self.setTimeout(None)
        try:
            request = json.loads(line)
            table, name = request["unlock"], request["name"]
            if not isinstance(table, str) or not isinstance(name, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._answer({"error": 'expected {"unlock": "account" or "address", "name": ...}'})
            return
        done: Deferred[dict[str, Any]] = Deferred.fromCoroutine(self._unlocking.unlock(table, name))
        done.addCallbacks(self._answer, self._failed)

    def _failed(self, failure: Any) -> None:
        if failure.check(UnlockRefused):
            self._answer({"error": str(failure.value)})
        else:
            Unlocking.log.failure("tokend unlock failed", failure)
            self._answer({"error": "the daemon could not unlock it; its log says why"})

    def _answer(self, answer: dict[str, Any]) -> None:
        transport: Any = self.transport
        if transport is not None:
            self.sendLine(json.dumps(answer).encode())
            transport.loseConnection()


class _ControlFactory(Factory):
    noisy = False

    def __init__(self, unlocking: Unlocking) -> None:
        self._unlocking = unlocking

    def buildProtocol(self, addr: Any) -> _Control:
        protocol = _Control(self._unlocking)
        protocol.factory = self
        return protocol


class ControlSocket(Service):
    """Listens on the control socket from startService on: after twistd has given up root
    (``--uid``), so the daemon's user owns it."""

    log = NamedLogger("tokend.control.ControlSocket")

    def __init__(self, path: str, unlocking: Unlocking, reactor: Any) -> None:
        self.path = path
        self._listening = strports.service(
            control_endpoint(path), cast(Any, _ControlFactory(unlocking)), reactor=reactor
        )

    def startService(self) -> None:
        super().startService()
        try:
            self._listening.privilegedStartService()
        except Exception as e:  # a control socket must never keep the daemon from serving
            self.log.warn(
                "no control socket at {path} ({reason}): tokend unlock cannot reach this daemon",
                path=self.path,
                reason=getattr(e, "socketError", None) or str(e),
            )
            return
        self._listening.startService()

    def stopService(self) -> Any:
        super().stopService()
        if self._listening.running:
            return self._listening.stopService()
        return succeed(None)


def single_process(unlock: Callable[[str, str], int]) -> LocalUnlock:
    """A one-process daemon's :data:`LocalUnlock`: its own throttle."""
    return lambda table, key: succeed([unlock(table, key)])
