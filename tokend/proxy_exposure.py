"""Whether the hosts in a trusted proxy range can reach the token listener themselves.

A trusted peer names the client in a header, and the login throttle counts that name. When the
listener accepts connections on every address, any host in the trusted range that reaches its
port directly (every pod of a cluster for ``10.0.0.0/8``) names whatever client it likes.
The daemon (at start-up) and ``tokend check-config`` warn with the same sentence.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from tokend.client_address import IPNetwork

_TCP = {"tcp": "0.0.0.0", "tcp6": "::", "ssl": "0.0.0.0"}  # noqa: S104 - binds nothing
"""Endpoint types bound to an interface, and the address each binds without ``interface=``."""


def _fields(description: str) -> list[str]:
    """An endpoint string's colon-separated fields (``\\:`` escapes a colon)."""
    fields, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    return [*fields, current]


def every_address(listen: str) -> str | None:
    """The wildcard address a TCP endpoint string binds (``0.0.0.0``, ``::``) when it has no
    ``interface=`` or names a wildcard; None for one bound to an address, and for other kinds
    (a UNIX socket is reached through the file system)."""
    kind, *rest = _fields(listen)
    default = _TCP.get(kind.strip().lower())
    if default is None:
        return None
    interface = default
    for field in rest:
        name, equals, value = field.partition("=")
        if equals and name.strip() == "interface":
            interface = value.strip() or default
    try:
        unspecified = ipaddress.ip_address(interface).is_unspecified
    except ValueError:
        return None  # a host name: bound to whatever it resolves to
    return interface if unspecified else None


def proxy_exposure(
    listen: str,
    trusted: Sequence[IPNetwork],
    listen_option: str = "--listen",
    trusted_option: str = "--trusted-proxy",
) -> str | None:
    """The warning for a listener on every address behind trusted ranges reaching beyond this
    machine (loopback-only ranges are the host's or the pod's own), or None."""
    wildcard = every_address(listen)
    remote = [str(network) for network in trusted if not network.is_loopback]
    if wildcard is None or not remote:
        return None
    return (
        f"{trusted_option} {', '.join(remote)} with {listen_option} {listen} (every address, "
        f"{wildcard}): any host in {', '.join(remote)} that reaches the port directly names "
        "its own client address for the login throttle; bind the listener to the proxy's side "
        "only (interface=127.0.0.1 behind a sidecar or a proxy on this host) or trust only the "
        "proxies' own addresses"
    )
