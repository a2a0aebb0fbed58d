"""Who the client is: the peer, or what a trusted proxy's chosen header says. Pure."""

from __future__ import annotations

import ipaddress

import pytest

from tokend.client_address import (
    FORWARDED_FOR,
    MAX_HEADER_CHARS,
    ClientAddress,
    TrustedProxies,
    client_ip,
    parse_networks,
)

TRUSTED = parse_networks(["127.0.0.1", "10.0.0.0/8"])
NGINX = TrustedProxies(networks=TRUSTED)
HAPROXY = TrustedProxies(networks=TRUSTED, header=FORWARDED_FOR)


@pytest.mark.parametrize(
    ("proxies", "peer", "values", "client"),
    [
        (TrustedProxies(), "203.0.113.5", ["198.51.100.1"], "203.0.113.5"),
        (TrustedProxies(), None, ["198.51.100.1"], "198.51.100.1"),
        (TrustedProxies(), None, [], "unix"),
        (TrustedProxies(unix=False), None, ["198.51.100.1"], "unix"),
        (NGINX, "127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        (NGINX, "127.0.0.1", [], "127.0.0.1"),
        (NGINX, "127.0.0.2", ["198.51.100.1"], "127.0.0.2"),
        (NGINX, "::ffff:10.0.0.3", ["198.51.100.1"], "198.51.100.1"),
        (NGINX, "10.9.9.9", ["::ffff:198.51.100.1"], "198.51.100.1"),
        (NGINX, "2001:db8::1", ["198.51.100.1"], "2001:db8::1"),
        (HAPROXY, "127.0.0.1", ["192.0.2.66, 198.51.100.1"], "198.51.100.1"),
        (HAPROXY, "127.0.0.1", ["198.51.100.1, 10.1.1.1, 10.2.2.2"], "198.51.100.1"),
        (HAPROXY, "127.0.0.1", ["10.1.1.1, 10.2.2.2"], "10.1.1.1"),
        (HAPROXY, "127.0.0.1", ["bogus, 198.51.100.1"], "198.51.100.1"),
        (HAPROXY, "127.0.0.1", ["198.51.100.1, bogus"], "127.0.0.1"),
        (HAPROXY, "203.0.113.5", ["198.51.100.1"], "203.0.113.5"),
        # HAProxy adds a line of its own after the client's: the last line's right end wins.
        (HAPROXY, "127.0.0.1", ["192.0.2.66", "198.51.100.1"], "198.51.100.1"),
    ],
)
def test_the_client_address(
    proxies: TrustedProxies, peer: str | None, values: list[str], client: str
) -> None:
    assert proxies.client(peer, values).address == client


def test_only_the_chosen_header_is_read() -> None:
    """Behind a proxy that appends to X-Forwarded-For, a client-written X-Real-IP would pass
    through untouched, and the reverse behind nginx: the operator names the header."""
    assert NGINX.header == "x-real-ip"
    with pytest.raises(ValueError, match="one of x-real-ip, x-forwarded-for"):
        TrustedProxies(header="forwarded")


def test_padding_cannot_push_the_proxys_entry_out_of_view() -> None:
    """The attack: the client pads X-Forwarded-For so that a header cut at its start no longer
    holds the address the proxy appended. The padded header names the right-most hop."""
    padding = ", ".join(f"192.0.2.{n % 250}" for n in range(60))
    assert len(padding) > 256
    assert HAPROXY.client("127.0.0.1", [f"{padding}, 198.51.100.7"]).address == "198.51.100.7"


@pytest.mark.parametrize(
    ("proxies", "values", "reason"),
    [
        (HAPROXY, ["192.0.2.1, " * (MAX_HEADER_CHARS // 10) + "198.51.100.7"], "longer than"),
        (HAPROXY, ["198.51.100.7, not-an-address"], "not an IP address"),
        (NGINX, ["not-an-address"], "not an IP address"),
    ],
)
def test_an_oversized_or_unparsable_header_is_ignored_with_a_reason(
    proxies: TrustedProxies, values: list[str], reason: str
) -> None:
    client = proxies.client("127.0.0.1", values)
    assert client.address == "127.0.0.1"
    assert client.ignored is not None and reason in client.ignored


def test_an_untrusted_peers_header_is_ignored_silently() -> None:
    assert HAPROXY.client("203.0.113.5", ["x" * 10_000]) == ClientAddress("203.0.113.5")


def test_parse_networks() -> None:
    assert parse_networks([" 10.0.0.0/8", "::1", "192.168.1.7/24"]) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.0/24"),
    )
    with pytest.raises(ValueError, match="'nginx' is not an IP address or CIDR network"):
        parse_networks(["10.0.0.1", "nginx"])


def test_an_address_reads_the_same_remembered_or_not() -> None:
    """Short text is parsed once and remembered; longer text (a long zone id) is parsed each
    time: both give what ipaddress gives, IPv4-mapped addresses unmapped."""
    for _ in range(2):
        assert client_ip(" 10.1.2.3 ") == ipaddress.ip_address("10.1.2.3")
        assert client_ip("::ffff:10.1.2.3") == ipaddress.ip_address("10.1.2.3")
        assert client_ip("unix") is None
    zone = "fe80::1%" + "z" * 80
    assert client_ip(zone) == ipaddress.ip_address(zone)
    assert client_ip("x" * 100) is None
