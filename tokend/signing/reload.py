"""Re-reading the signing keys: loaded and checked off the reactor thread, swapped in on it.

A changed key, certificate or keys directory is picked up without a restart. A replacement that
does not load (a certificate that does not match the key, an expired one, a half-written file)
keeps the set in force and logs which file and why; /healthz shows it until a good one arrives.
Start-up and a daily timer warn about every certificate within two weeks of its end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tokend.file_watch import WatchPlan, files_plan
from tokend.signing.holder import KeyHolder, KeySource
from tokend.signing.key_set import KeySet
from tokend.threads import ThreadRunner

KEYS_DIR_NAMES = ("keys.json", "shared.secret", "*.key", "*.crt", "..data")
"""The entries of a keys directory whose change may change the set."""
EXPIRY_WARNING_DAYS = 14
DAY = 24 * 3600.0


class Clock(Protocol):
    def seconds(self) -> float: ...


def key_watch_plan(keys_dir: Path | None, key_file: Path, cert_file: Path | None) -> WatchPlan:
    """What to watch: the keys directory, or the --key and --cert files' symlink chains."""
    if keys_dir is not None:
        return files_plan((), {keys_dir: KEYS_DIR_NAMES})
    return files_plan((key_file,) if cert_file is None else (key_file, cert_file))


def describe(keys: KeySet) -> tuple[tuple[str, str, str, tuple[Any, ...]], ...]:
    """What a set says on the wire, per key: a reload that changes none of it changes nothing."""
    return tuple(
        (key.name, key.state, key.signing.kid, tuple(sorted(key.signing.header.items())))
        for key in keys.keys
    )


class KeyReloader(Service):
    """Runs at most one load at a time; a trigger during a load schedules exactly one more."""

    log = Logger()

    def __init__(
        self,
        load: Callable[[float], KeySet],
        holder: KeyHolder,
        clock: Clock,
        threads: ThreadRunner,
    ) -> None:
        """``load(now)`` reads and checks the files (on ``threads``); any exception from it
        keeps the set in force."""
        self._load = load
        self._holder = holder
        self._clock = clock
        self._threads = threads
        self._busy = False
        self._again: str | None = None
        self._waiting: list[Deferred[None]] = []

    def reload(self, reason: str) -> Deferred[None]:
        """Load the keys now (or right after the load in progress); fires when applied."""
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        if self._busy:
            self._again = reason
        else:
            self._busy = True
            ensureDeferred(self._run(reason))
        return done

    async def _run(self, reason: str) -> None:
        while True:
            waiting, self._waiting = self._waiting, []
            try:
                await self._load_once(reason)
            except Exception:
                self.log.failure("signing keys reload ({reason}) went wrong", reason=reason)
            for done in waiting:
                done.callback(None)
            if self._again is None:
                break
            reason, self._again = self._again, None
        self._busy = False

    async def _load_once(self, reason: str) -> None:
        now = self._clock.seconds()
        old = self._holder.current
        try:
            keys: KeySet = await self._threads.run(self._load, time.time())
        except Exception as e:
            self._holder.record_failure(str(e), now)
            self.log.error(
                "signing keys reload ({reason}) failed, keeping key {kid} from {source}: {error}",
                reason=reason,
                kid=old.signing.kid,
                source=old.source,
                error=str(e),
                files=sorted(
                    {str(f) for key in old.keys for f in (key.key_file, key.cert_file) if f}
                ),
            )
            return
        unchanged = describe(keys) == describe(old)
        self._holder.replace(keys, now)
        if unchanged:
            self.log.info(
                "signing keys reloaded ({reason}): unchanged, key {kid}",
                reason=reason,
                kid=keys.signing.kid,
            )
            return
        self.log.info(
            "signing keys reloaded ({reason}) from {source}: {alg} key {name} kid {kid} signs, "
            "x5c {x5c}; trusted {trusted}",
            reason=reason,
            source=keys.source,
            alg=keys.signing.alg,
            name=keys.current.name,
            kid=keys.signing.kid,
            x5c=bool(keys.signing.chain),
            trusted=[f"{key.state} {key.name}" for key in keys.keys],
            previous_kid=old.signing.kid,
        )


def expiring(keys: KeySet, now: float, days: int = EXPIRY_WARNING_DAYS) -> list[dict[str, Any]]:
    """Each certificate of the set that ends within ``days`` days: the warning's fields."""
    found = []
    for key in keys.keys:
        for subject, not_after in key.expiries():
            if not_after - now < days * DAY:
                found.append(
                    {
                        "subject": subject,
                        "key": key.name,
                        "state": key.state,
                        "days": max(0, int((not_after - now) // DAY)),
                        "not_after": datetime.fromtimestamp(not_after, UTC).isoformat(),
                    }
                )
    return found


class ExpiryWarnings(Service):
    """A warning per certificate within two weeks of its end: at start-up, then once a day
    (the set read anew each time, so a renewal stops the warnings)."""

    log = Logger()

    def __init__(self, keys: KeySource, reactor: Any, wall: Callable[[], float] = time.time):
        self._keys = keys
        self._wall = wall
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._loop.start(DAY, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        for fields in expiring(self._keys.current, self._wall()):
            self.log.warn(
                "signing certificate {subject} of key {key} expires in {days} days ({not_after})",
                **fields,
            )
