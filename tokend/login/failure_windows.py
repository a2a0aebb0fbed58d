"""Failed logins counted per key in a sliding window, and the addresses accounts log in from.

Pure: time is a ``now`` float passed in. Memory is bounded: each table keeps at most
``max_entries`` keys and, when full, forgets the least recently failed key that is not locked
out, so rotating user names or addresses can neither grow it nor unlock an account.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_MAX_ENTRIES = 10_000
"""Keys kept per table (accounts, addresses); unlocked ones are forgotten first."""

KNOWN_ADDRESS_DAYS = 30
DEFAULT_MAX_KNOWN = 100_000
"""(account, address) pairs remembered as where an account logs in; the oldest goes first."""


@dataclass(slots=True)
class _Entry:
    failures: tuple[float, ...] = ()
    """The most recent failure times, oldest first, at most ``limit`` of them."""
    pending: int = 0
    """Attempts admitted and not finished yet."""


class FailureWindow:
    """At most ``limit`` failures (finished or in flight) per key in any ``window`` seconds.

    ``limit`` 0 turns the table off: everything is admitted and nothing is stored. Keys that
    reached the limit live in a table of their own, so evicting to make room never picks a
    locked key while an unlocked one is left: a flood of failures on fresh names cannot push
    a locked account out and let it guess again.
    """

    def __init__(self, limit: int, window: float, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if limit < 0 or window <= 0 or max_entries < 1:
            raise ValueError("limit must be >= 0, window > 0 and max_entries >= 1")
        self.limit = limit
        self.window = window
        self.max_entries = max_entries
        self._open: OrderedDict[str, _Entry] = OrderedDict()
        """Keys under the limit, the least recently failed first."""
        self._locked: OrderedDict[str, _Entry] = OrderedDict()
        """Keys at the limit, the earliest locked first."""

    def __len__(self) -> int:
        return len(self._open) + len(self._locked)

    @property
    def locked(self) -> int:
        return len(self._locked)

    def _get(self, key: str) -> _Entry | None:
        entry = self._open.get(key)
        return self._locked.get(key) if entry is None else entry

    def _drop(self, key: str) -> None:
        if self._open.pop(key, None) is None:
            self._locked.pop(key, None)

    def retry_after(self, key: str, now: float) -> float | None:
        """Seconds until ``key`` may try again, or None when it may try now."""
        if not self.limit:
            return None
        self._expire(now)
        entry = self._get(key)
        if entry is None:
            return None
        recent = tuple(t for t in entry.failures if t > now - self.window)
        entry.failures = recent
        if not recent and not entry.pending:
            self._drop(key)
            return None
        if len(recent) < self.limit and key in self._locked:
            self._open[key] = self._locked.pop(key)
        if len(recent) + entry.pending < self.limit:
            return None
        if len(recent) >= self.limit:
            return min(recent[-self.limit] + self.window - now, self.window)
        return 1.0

    def begin(self, key: str) -> None:
        """Count an admitted attempt until ``end`` says how it went."""
        if self.limit:
            self._entry(key).pending += 1

    def end(self, key: str, now: float, *, failed: bool, reset: bool = False) -> None:
        """Finish an attempt: record a failure, or forget the key's failures on ``reset``."""
        if not self.limit:
            return
        entry = self._get(key)
        if entry is None:
            if not failed:
                return
            entry = self._entry(key)
        entry.pending = max(0, entry.pending - 1)
        if reset:
            entry.failures = ()
            if key in self._locked:
                self._open[key] = self._locked.pop(key)
        if failed:
            entry.failures = (*entry.failures, now)[-self.limit :]
            self._place(key, entry)
        if not entry.failures and not entry.pending:
            self._drop(key)

    def merge(self, key: str, times: Iterable[float], now: float) -> None:
        """Count failures another process saw. Idempotent: a time already held counts once, so
        the same failure heard twice (relayed, then echoed by Redis) is not counted twice."""
        if not self.limit:
            return
        fresh = {t for t in times if t > now - self.window}
        if not fresh:
            return
        entry = self._entry(key)
        entry.failures = tuple(sorted(fresh.union(entry.failures)))[-self.limit :]
        self._place(key, entry)

    def clear(self, key: str, before: float | None = None) -> int:
        """Forget a key's failures (all, or those up to ``before``: a login elsewhere at that
        time, which must not clear a failure seen after it); attempts in flight stay. Returns
        how many were forgotten."""
        entry = self._get(key)
        if entry is None:
            return 0
        held = len(entry.failures)
        entry.failures = () if before is None else tuple(t for t in entry.failures if t > before)
        if key in self._locked and len(entry.failures) < self.limit:
            self._open[key] = self._locked.pop(key)
        if not entry.failures and not entry.pending:
            self._drop(key)
        return held - len(entry.failures)

    def _place(self, key: str, entry: _Entry) -> None:
        """Move a key that just failed to where its count puts it."""
        if len(entry.failures) >= self.limit:
            self._open.pop(key, None)
            self._locked.pop(key, None)
            self._locked[key] = entry
        else:
            self._open.move_to_end(key)

    def _entry(self, key: str) -> _Entry:
        entry = self._get(key)
        if entry is None:
            while len(self) >= self.max_entries:
                (self._open or self._locked).popitem(last=False)
            entry = self._open[key] = _Entry()
        return entry

    def _expire(self, now: float) -> None:
        """Drop keys from the least recently failed end whose failures have all expired."""
        for table in (self._open, self._locked):
            while table:
                key, entry = next(iter(table.items()))
                if entry.pending or (entry.failures and entry.failures[-1] > now - self.window):
                    break
                del table[key]


class KnownAddresses:
    """Where each account logged in successfully lately: (account, address key) pairs.

    Bounded: at most ``max_entries`` pairs, the least recently used forgotten first, each for
    ``ttl`` seconds after its last success.
    """

    def __init__(
        self,
        ttl: float = KNOWN_ADDRESS_DAYS * 86_400,
        max_entries: int = DEFAULT_MAX_KNOWN,
    ) -> None:
        if ttl < 0 or max_entries < 1:
            raise ValueError("ttl must be >= 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, account: str, address: str, now: float) -> None:
        if not self.ttl:
            return
        pair = (account, address)
        self._seen.pop(pair, None)
        self._seen[pair] = now
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def knows(self, account: str, address: str, now: float) -> bool:
        seen = self._seen.get((account, address))
        return seen is not None and seen <= now < seen + self.ttl
