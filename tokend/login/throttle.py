"""Throttling of failed logins, per account and per client address.

Pure: time is a ``now`` float passed in. bcrypt makes one guess expensive for us as much as
for an attacker, so a throttled attempt is refused before any password is checked. Attempts
still being checked count against the limit, so a burst of concurrent guesses cannot overshoot
it. Memory is bounded: each table keeps at most ``max_entries`` keys and, when full, forgets
the least recently failed key that is not locked out, so rotating user names or addresses can
neither grow it nor unlock an account.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from twisted.internet.defer import Deferred

from tokend.login.shared_limits.news import Ask, Failed, News, Succeeded, Unlocked

DEFAULT_MAX_ENTRIES = 10_000
"""Keys kept per table (accounts, addresses); unlocked ones are forgotten first."""

KNOWN_ADDRESS_DAYS = 30
DEFAULT_MAX_KNOWN = 100_000
"""(account, address) pairs remembered as where an account logs in; the oldest goes first."""

DEFAULT_MAX_IN_FLIGHT = 4
"""Password checks one client address may have running or waiting at once."""

MAX_ASKED = 100_000
"""Keys remembered as asked of the shared store since it was (re)joined; the oldest goes
first (and is asked again when it comes back)."""


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


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an attempt was not admitted, and when to come back."""

    retry_after: float
    reason: str


class LoginThrottle:
    """Failed logins counted per account and per client address.

    A success resets only its own account's count: an attacker who holds one valid account
    cannot wipe out their address's failures, and nobody's failures slow another account.
    An address the account logged in from within ``known_days`` days is exempt from the
    account's limit (not from its own): guessing from elsewhere cannot lock the owner out of
    the places they usually log in from.

    Names become table keys through ``keys`` (table, name) -> key: a daemon passes a keyed
    hash, so that what it shares with other processes (and Redis) never names an account or
    carries a password typed as a name.

    Shared limits: every failure and success is also handed to ``publish`` (the seam to other
    workers and daemons), and what they saw arrives through :meth:`learn`. Admission never
    waits for them, except once per key through ``ask`` (:meth:`consult`): a process that
    joined the shared store after a key's failures asks the store for them before its first
    check of that key.
    """

    def __init__(
        self,
        *,
        per_account: int,
        per_address: int,
        window: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        known: KnownAddresses | None = None,
        publish: Callable[[News], None] | None = None,
        keys: Callable[[str, str], str] | None = None,
        ask: Ask | None = None,
    ) -> None:
        self.accounts = FailureWindow(per_account, window, max_entries)
        self.addresses = FailureWindow(per_address, window, max_entries)
        self.known = KnownAddresses() if known is None else known
        self.publish: Callable[[News], None] = publish or _nowhere
        self._keys = keys or _plain
        self._ask = ask
        self._asked: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._asking: dict[tuple[str, str], list[Deferred[None]]] = {}

    def key(self, table: Literal["account", "address"], name: str) -> str:
        """The key ``name`` is counted under (an address by its :func:`address_key`)."""
        return self._keys(table, address_key(name) if table == "address" else name)

    def learn(self, news: News, now: float) -> None:
        """Take in what another worker or daemon saw (never published again)."""
        if isinstance(news, Failed):
            if news.account is not None:
                self.accounts.merge(news.account, (news.at,), now)
            self.addresses.merge(news.address, (news.at,), now)
        elif isinstance(news, Succeeded):
            self.accounts.clear(news.account, before=news.at)
            self.known.add(news.account, news.address, news.at)
        elif isinstance(news, Unlocked):
            self._table(news.table).clear(news.key, before=news.at)
        else:
            self._table(news.table).merge(news.key, news.times, now)

    def unlock(self, table: str, key: str) -> int:
        """End a key's lockout now (``tokend unlock``); how many failures were forgotten."""
        return self._table(table).clear(key)

    def knows(self, account: str, address: str, now: float) -> bool:
        """Whether ``account`` logged in from ``address`` (its network key) lately."""
        return self.known.knows(self.key("account", account), self.key("address", address), now)

    def _table(self, table: str) -> FailureWindow:
        return self.accounts if table == "account" else self.addresses

    @property
    def size(self) -> int:
        """Keys held across both tables; never more than twice ``max_entries``."""
        return len(self.accounts) + len(self.addresses)

    def consult(self, account: str, address: str, now: float) -> Deferred[None] | None:
        """None when :meth:`admit` may decide at once; else a Deferred that fires once the
        shared store has answered for keys this process has not asked about since it (re)joined
        the store (the answer merged). Attempts arriving meanwhile for the same key wait for
        the same answer, so a burst cannot slip past it."""
        if self._ask is None:
            return None
        wanted = [
            pair
            for pair in (("account", self.key("account", account)),
                         ("address", self.key("address", address)))
            if self._table(pair[0]).limit and pair not in self._asked
        ]  # fmt: skip
        if not wanted:
            return None
        waiting: Deferred[None] = Deferred()
        fresh = [pair for pair in wanted if pair not in self._asking]
        for pair in wanted:
            self._asking.setdefault(pair, [])
        self._asking[wanted[0]].append(waiting)
        if fresh:
            self._ask(fresh).addBoth(lambda seen: self._answered(fresh, seen, now))
        return waiting

    def _answered(self, pairs: list[tuple[str, str]], seen: object, now: float) -> None:
        if isinstance(seen, list):
            for news in seen:
                self.learn(news, now)
        for pair in pairs:
            self._asked[pair] = None
            while len(self._asked) > MAX_ASKED:
                self._asked.popitem(last=False)
            for waiter in self._asking.pop(pair, []):
                if not waiter.called:  # else cancelled: its client went away
                    waiter.callback(None)

    def rejoined(self) -> None:
        """The shared store was (re)joined: news may have been missed meanwhile, so every key
        is asked about again when next seen."""
        self._asked.clear()

    def admit(self, account: str, address: str, now: float) -> Refusal | None:
        """Refuse, or admit and count the attempt until ``succeeded``/``failed``/``abandoned``."""
        account, address = self.key("account", account), self.key("address", address)
        checks = [(self.addresses.retry_after(address, now), "address")]
        if not self.known.knows(account, address, now):
            checks.append((self.accounts.retry_after(account, now), "account"))
        waits = [(wait, reason) for wait, reason in checks if wait is not None]
        if waits:
            wait, reason = max(waits)
            return Refusal(wait, reason)
        self.accounts.begin(account)
        self.addresses.begin(address)
        return None

    def admit_entry(self, entry: str, address: str, now: float) -> Refusal | None:
        """Within an attempt :meth:`admit` let in: may the directory entry its name led to
        (``entry``, a name no login can spell) try too? Counted in the accounts' table, with
        the same exemption for addresses the entry logged in from, so that every name
        reaching one entry shares one budget. The attempt's end names it again."""
        entry, address = self.key("account", entry), self.key("address", address)
        if not self.known.knows(entry, address, now):
            wait = self.accounts.retry_after(entry, now)
            if wait is not None:
                return Refusal(wait, "account")
        self.accounts.begin(entry)
        return None

    def succeeded(self, account: str, address: str, now: float, entry: str | None = None) -> None:
        account, address = self.key("account", account), self.key("address", address)
        self.accounts.end(account, now, failed=False, reset=True)
        self.addresses.end(address, now, failed=False)
        self.known.add(account, address, now)
        self.publish(Succeeded(account, address, now))
        if entry is not None:
            entry = self.key("account", entry)
            self.accounts.end(entry, now, failed=False, reset=True)
            self.known.add(entry, address, now)
            self.publish(Succeeded(entry, address, now))

    def failed(self, account: str, address: str, now: float, entry: str | None = None) -> None:
        """A wrong password. With an ``entry`` admitted, the failure is told to the others
        once, as the entry's (every name reaching it shares it there); the name's own count
        stays in this process, where it spares the directory a search."""
        account, address = self.key("account", account), self.key("address", address)
        self.accounts.end(account, now, failed=True)
        self.addresses.end(address, now, failed=True)
        if entry is not None:
            entry = self.key("account", entry)
            self.accounts.end(entry, now, failed=True)
        self.publish(Failed(account if entry is None else entry, address, now))

    def overloaded(self, account: str, address: str, now: float, entry: str | None = None) -> None:
        """Refused for lack of capacity: a failure of the address, not of the account.

        An address whose logins keep meeting a full queue is throttled like one whose passwords
        keep failing; the account did nothing wrong.
        """
        account, address = self.key("account", account), self.key("address", address)
        self.accounts.end(account, now, failed=False)
        if entry is not None:
            self.accounts.end(self.key("account", entry), now, failed=False)
        self.addresses.end(address, now, failed=True)
        self.publish(Failed(None, address, now))

    def abandoned(self, account: str, address: str, now: float, entry: str | None = None) -> None:
        """The attempt ended without a verdict (the client went away): only release it."""
        self.accounts.end(self.key("account", account), now, failed=False)
        if entry is not None:
            self.accounts.end(self.key("account", entry), now, failed=False)
        self.addresses.end(self.key("address", address), now, failed=False)

    def admit_address(self, address: str, now: float) -> Refusal | None:
        """:meth:`admit` for an attempt that names no account it could be charged to (a
        refresh token is only trusted once checked): the address alone is counted."""
        address = self.key("address", address)
        wait = self.addresses.retry_after(address, now)
        if wait is not None:
            return Refusal(wait, "address")
        self.addresses.begin(address)
        return None

    def address_ended(self, address: str, now: float, *, failed: bool) -> None:
        """Finish an attempt admitted by :meth:`admit_address`."""
        address = self.key("address", address)
        self.addresses.end(address, now, failed=failed)
        if failed:
            self.publish(Failed(None, address, now))


def _plain(table: str, name: str) -> str:
    """The keys of a throttle that shares nothing: the names themselves."""
    return name


def _nowhere(news: News) -> None:
    """The publisher of a throttle that shares nothing."""


SHARES_V6 = ((64, 1), (48, 2), (32, 4))
"""(IPv6 prefix length, multiple of the per-address limit) one network may hold: a /64 is one
host or one LAN, a /48 one site (the usual end-site assignment), a /32 one provider's block."""
SHARES_V4 = ((32, 1), (24, 2))
"""(IPv4 prefix length, multiple of the per-address limit): one address, one /24."""
RESERVED_FRACTION = 4
"""One check place in this many is kept for logins from where their account succeeded before."""

ShareFull = Literal["address", "network", "queue"]
"""Why :meth:`InFlight.admit` refused: the address's own share, a wider network's, or the
places left to strangers in the whole queue."""


class InFlight:
    """Password checks in flight (running or waiting for a thread), per client network.

    One address may hold at most ``limit`` of them, its /48 (IPv6) or /24 (IPv4) twice that
    and its /32 (IPv6) four times that, so neither a handful of addresses nor one network's
    many addresses can fill the bcrypt queue and starve every other login. ``limit`` 0 turns
    the shares off. With ``capacity`` (the checks the queue holds, running and waiting), one
    place in ``RESERVED_FRACTION`` is kept for known logins (an account logging in from an
    address it succeeded from before): a flood from strangers cannot take the last places.
    """

    def __init__(self, limit: int = DEFAULT_MAX_IN_FLIGHT, capacity: int = 0) -> None:
        if limit < 0 or capacity < 0:
            raise ValueError("limit and capacity must be >= 0")
        self.limit = limit
        self.capacity = capacity
        self.reserved = capacity // RESERVED_FRACTION
        self.total = 0
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        """Networks holding checks (each address counts with each prefix it falls in)."""
        return len(self._counts)

    def admit(self, address: str, *, known: bool = False) -> ShareFull | None:
        """Take a place for ``address``, or say (taking nothing) which share is full."""
        keys = share_keys(address) if self.limit else ()
        for key, multiple in keys:
            if self._counts.get(key, 0) >= self.limit * multiple:
                return "address" if multiple == 1 else "network"
        if self.capacity and not known and self.total >= self.capacity - self.reserved:
            return "queue"
        for key, _ in keys:
            self._counts[key] = self._counts.get(key, 0) + 1
        self.total += 1
        return None

    def leave(self, address: str) -> None:
        """Give back the place :meth:`admit` took for ``address``."""
        self.total = max(0, self.total - 1)
        for key, _ in share_keys(address) if self.limit else ():
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)


def share_keys(address: str) -> tuple[tuple[str, int], ...]:
    """The networks ``address`` is counted in, each with its multiple of the per-address share:
    the address itself first (for IPv6 its /64, as :func:`address_key`), then the wider ones."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ((address, 1),)
    shares = SHARES_V6 if isinstance(ip, ipaddress.IPv6Address) else SHARES_V4
    return tuple(
        (str(ipaddress.ip_network((ip, length), strict=False)), multiple)
        for length, multiple in shares
    )


def address_key(address: str) -> str:
    """The throttling key of a client address: an IPv6 client owns a whole /64."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
