"""Password checks in flight per client network: shares of the bcrypt queue, so that neither
one address nor one network's many addresses can fill it and starve every other login.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

DEFAULT_MAX_IN_FLIGHT = 4
"""Password checks one client address may have running or waiting at once."""

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
    the address itself first (for IPv6 its /64, as :func:`tokend.login.throttle.address_key`),
    then the wider ones."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ((address, 1),)
    shares = SHARES_V6 if isinstance(ip, ipaddress.IPv6Address) else SHARES_V4
    return tuple(
        (str(ipaddress.ip_network((ip, length), strict=False)), multiple)
        for length, multiple in shares
    )
