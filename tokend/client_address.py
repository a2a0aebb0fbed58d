"""Who the client is: the peer, or what a trusted proxy says the client was.

Pure. A proxy names the client in one header, and which one depends on the proxy: nginx sets
``X-Real-IP`` to ``$remote_addr`` (and passes a client's own ``X-Forwarded-For`` through
unless told otherwise), HAProxy and most cloud load balancers append the peer to
``X-Forwarded-For`` (and pass a client's own ``X-Real-IP`` through). Reading both lets a client
pick its own address behind one of them, so the operator names the one their proxy writes, the
way nginx's own ``real_ip_header`` does, and only that header is read.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNIX_PEER = "unix"
"""The client address of a request over the UNIX socket that names no client."""

REAL_IP = "x-real-ip"
FORWARDED_FOR = "x-forwarded-for"
CLIENT_HEADERS = (REAL_IP, FORWARDED_FOR)

MAX_HEADER_CHARS = 4096
"""Longer than any honest chain of proxies; a longer header is ignored as a whole, never cut:
cutting it is what let padding push the proxy's own entry out of view."""


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or single addresses); ValueError names the first that is neither."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def client_ip(value: str) -> IPAddress | None:
    """An address as tokend compares it: an IPv4-mapped IPv6 address is its IPv4 address;
    None for anything that is no address (``unix``). The few addresses a daemon sees again
    and again (its proxy's, a CI's, ``unix``) are parsed once; longer text, never an address
    but for a long zone id, is not remembered."""
    if len(value) <= _REMEMBERED_CHARS:
        return _remembered_ip(value)
    return _parsed_ip(value)


_REMEMBERED_CHARS = 64
"""Longer than any address's text (45 characters at the most, without a zone id)."""


def _parsed_ip(value: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_remembered_ip = functools.lru_cache(maxsize=1024)(_parsed_ip)


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """The address requests are logged and throttled by, and why the header was not used."""

    address: str
    ignored: str | None = None
    """Set when a trusted proxy's header could not be used: the peer stands in, and this says
    why (for the log)."""

    def ip(self) -> IPAddress | None:
        """The address policy rules with ``from`` are checked against; None for a UNIX-socket
        peer that named no client (no such rule applies then)."""
        return client_ip(self.address)


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """Peers whose ``header`` names the client.

    Anyone else could write that header themselves, so their own address is the client. The
    UNIX socket peer is the local proxy (nginx): only processes allowed by the socket's
    permissions can connect.
    """

    networks: tuple[IPNetwork, ...] = ()
    unix: bool = True
    header: str = REAL_IP

    def __post_init__(self) -> None:
        if self.header not in CLIENT_HEADERS:
            raise ValueError(f"the client header must be one of {', '.join(CLIENT_HEADERS)}")

    def trusts(self, peer: str | None) -> bool:
        """``peer`` is the TCP peer's host, or None for the UNIX socket."""
        if peer is None:
            return self.unix
        ip = client_ip(peer)
        return ip is not None and any(ip in network for network in self.networks)

    def client(self, peer: str | None, values: Sequence[str]) -> ClientAddress:
        """The client: named by a trusted proxy's header, else the peer itself.

        ``values`` are the header's lines in the order received (a proxy may add a line of
        its own instead of appending to the last). ``X-Forwarded-For`` is read from the right,
        skipping trusted proxies: its left end is whatever the client sent.
        """
        own = UNIX_PEER if peer is None else str(client_ip(peer) or peer)
        if not values or not self.trusts(peer):
            return ClientAddress(own)
        if sum(len(value) for value in values) > MAX_HEADER_CHARS:
            return ClientAddress(own, f"{self.header} longer than {MAX_HEADER_CHARS} characters")
        if self.header == REAL_IP:
            ip = client_ip(values[-1])
            if ip is None:
                return ClientAddress(own, f"{self.header} is not an IP address")
            return ClientAddress(str(ip))
        hop: IPAddress | None = None
        for value in reversed(",".join(values).split(",")):
            hop = client_ip(value)
            if hop is None:
                return ClientAddress(own, f"{self.header} holds something not an IP address")
            if not self.trusts(str(hop)):
                return ClientAddress(str(hop))
        return ClientAddress(str(hop) if hop is not None else own)
