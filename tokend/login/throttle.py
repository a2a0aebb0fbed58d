"""Throttling of failed logins, per account and per client address: the facade a login asks
before any password is checked, over the failure windows of :mod:`tokend.login.failure_windows`,
sharing what it sees with other workers and daemons.

Pure: time is a ``now`` float passed in. bcrypt makes one guess expensive for us as much as
for an attacker, so a throttled attempt is refused before any password is checked. Attempts
still being checked count against the limit, so a burst of concurrent guesses cannot overshoot
it.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from twisted.internet.defer import Deferred

from tokend.login.failure_windows import DEFAULT_MAX_ENTRIES, FailureWindow, KnownAddresses
from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.news import Failed, News, Succeeded, Unlocked

MAX_ASKED = 100_000
"""Keys remembered as asked of the shared store since it was (re)joined; the oldest goes
first (and is asked again when it comes back)."""


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

    Shared limits: the throttle joins the ``news`` bus it is made with. Every failure and
    success is published on it (to other workers and daemons), and what they saw arrives
    through :meth:`learn`. Admission never waits for them, except once per key through the
    bus's lookup (:meth:`consult`): a process that joined the shared store after a key's
    failures asks the store for them before its first check of that key.
    """

    def __init__(
        self,
        *,
        per_account: int,
        per_address: int,
        window: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        known: KnownAddresses | None = None,
        keys: Callable[[str, str], str] | None = None,
        news: NewsBus | None = None,
    ) -> None:
        self.accounts = FailureWindow(per_account, window, max_entries)
        self.addresses = FailureWindow(per_address, window, max_entries)
        self.known = KnownAddresses() if known is None else known
        self._keys = keys or _plain
        self._news = NewsBus() if news is None else news
        self._news.hear(self.learn, self.rejoined, self.unlock)
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
        ask = self._news.lookup
        if ask is None:
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
            ask(fresh).addBoth(lambda seen: self._answered(fresh, seen, now))
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
        self._news.publish(Succeeded(account, address, now))
        if entry is not None:
            entry = self.key("account", entry)
            self.accounts.end(entry, now, failed=False, reset=True)
            self.known.add(entry, address, now)
            self._news.publish(Succeeded(entry, address, now))

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
        self._news.publish(Failed(account if entry is None else entry, address, now))

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
        self._news.publish(Failed(None, address, now))

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
            self._news.publish(Failed(None, address, now))


def _plain(table: str, name: str) -> str:
    """The keys of a throttle that shares nothing: the names themselves."""
    return name


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
