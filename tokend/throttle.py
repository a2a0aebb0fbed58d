"""Throttling of failed logins, per account and per client address, and who the client is.

Pure: time is a ``now`` float passed in. bcrypt makes one guess expensive for us as much as
for an attacker, so a throttled attempt is refused before any password is checked. Attempts
still being checked count against the limit, so a burst of concurrent guesses cannot overshoot
it. Memory is bounded: each table keeps at most ``max_entries`` keys and forgets the least
recently failed first, so rotating user names or addresses cannot grow it.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_MAX_ENTRIES = 10_000
"""Keys kept per table (accounts, addresses); the least recently failed is forgotten first."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNIX_PEER = "unix"
"""The client address of a request over the UNIX socket that names no client."""


@dataclass(slots=True)
class _Entry:
    failures: tuple[float, ...] = ()
    """The most recent failure times, oldest first, at most ``limit`` of them."""
    pending: int = 0
    """Attempts admitted and not finished yet."""


class FailureWindow:
    """At most ``limit`` failures (finished or in flight) per key in any ``window`` seconds.

    ``limit`` 0 turns the table off: everything is admitted and nothing is stored.
    """

    def __init__(self, limit: int, window: float, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if limit < 0 or window <= 0 or max_entries < 1:
            raise ValueError("limit must be >= 0, window > 0 and max_entries >= 1")
        self.limit = limit
        self.window = window
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after(self, key: str, now: float) -> float | None:
        """Seconds until ``key`` may try again, or None when it may try now."""
        if not self.limit:
            return None
        self._expire(now)
        entry = self._entries.get(key)
        if entry is None:
            return None
        recent = tuple(t for t in entry.failures if t > now - self.window)
        entry.failures = recent
        if not recent and not entry.pending:
            del self._entries[key]
            return None
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
        entry = self._entries.get(key)
        if entry is None:
            if not failed:
                return
            entry = self._entry(key)
        entry.pending = max(0, entry.pending - 1)
        if reset:
            entry.failures = ()
        if failed:
            entry.failures = (*entry.failures, now)[-self.limit :]
            self._entries.move_to_end(key)
        if not entry.failures and not entry.pending:
            del self._entries[key]

    def _entry(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry

    def _expire(self, now: float) -> None:
        """Drop keys from the least recently failed end whose failures have all expired."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.pending or (entry.failures and entry.failures[-1] > now - self.window):
                return
            del self._entries[key]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an attempt was not admitted, and when to come back."""

    retry_after: float
    reason: str


class LoginThrottle:
    """Failed logins counted per account and per client address.

    A success resets only its own account's count: an attacker who holds one valid account
    cannot wipe out their address's failures, and nobody's failures slow another account.
    """

    def __init__(
        self,
        *,
        per_account: int,
        per_address: int,
        window: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.accounts = FailureWindow(per_account, window, max_entries)
        self.addresses = FailureWindow(per_address, window, max_entries)

    @property
    def size(self) -> int:
        """Keys held across both tables; never more than twice ``max_entries``."""
        return len(self.accounts) + len(self.addresses)

    def admit(self, account: str, address: str, now: float) -> Refusal | None:
        """Refuse, or admit and count the attempt until ``succeeded``/``failed``/``abandoned``."""
        address = address_key(address)
        waits = [
            (wait, reason)
            for wait, reason in (
                (self.accounts.retry_after(account, now), "account"),
                (self.addresses.retry_after(address, now), "address"),
            )
            if wait is not None
        ]
        if waits:
            wait, reason = max(waits)
            return Refusal(wait, reason)
        self.accounts.begin(account)
        self.addresses.begin(address)
        return None

    def succeeded(self, account: str, address: str, now: float) -> None:
        self.accounts.end(account, now, failed=False, reset=True)
        self.addresses.end(address_key(address), now, failed=False)

    def failed(self, account: str, address: str, now: float) -> None:
        self.accounts.end(account, now, failed=True)
        self.addresses.end(address_key(address), now, failed=True)

    def abandoned(self, account: str, address: str, now: float) -> None:
        """The attempt ended without a verdict (overload, cancelled): only release it."""
        self.accounts.end(account, now, failed=False)
        self.addresses.end(address_key(address), now, failed=False)


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


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or single addresses); ValueError names the first that is neither."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _ip(value: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """Peers whose ``X-Real-IP`` / ``X-Forwarded-For`` name the client.

    Anyone else could write those headers themselves, so their own address is the client. The
    UNIX socket peer is the local proxy (nginx): only processes allowed by the socket's
    permissions can connect.
    """

    networks: tuple[IPNetwork, ...] = ()
    unix: bool = True

    def trusts(self, peer: str | None) -> bool:
        """``peer`` is the TCP peer's host, or None for the UNIX socket."""
        if peer is None:
            return self.unix
        ip = _ip(peer)
        return ip is not None and any(ip in network for network in self.networks)

    def client(self, peer: str | None, real_ip: str | None, forwarded_for: str | None) -> str:
        """The client address: from a trusted proxy's headers, else the peer itself.

        ``X-Real-IP`` wins (nginx sets it to ``$remote_addr``). ``X-Forwarded-For`` is read
        from the right, skipping trusted proxies: its left end is whatever the client sent.
        """
        own = UNIX_PEER if peer is None else str(_ip(peer) or peer)
        if not self.trusts(peer):
            return own
        if real_ip:
            ip = _ip(real_ip)
            if ip is not None:
                return str(ip)
        hop: IPAddress | None = None
        for value in reversed((forwarded_for or "").split(",")):
            hop = _ip(value)
            if hop is None:
                return own
            if not self.trusts(str(hop)):
                return str(hop)
        return str(hop) if hop is not None else own
