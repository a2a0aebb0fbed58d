"""Fair shares of the bcrypt queue across networks, and room kept for known logins
(Hardening III, item 8).

One IPv6 /48 used to fill the queue from 120 of its /64s (8 of 8 logins from elsewhere got 503):
the share was counted per /64 only. Now a /48 (and an IPv4 /24) holds twice one address's share,
a /32 four times; and a quarter of the queue is left to accounts logging in from where they
succeeded before.
"""

from __future__ import annotations

from pathlib import Path

from realms import HandFiredWorkers, Realm, throttle

from tokend.client_address import TrustedProxies, parse_networks
from tokend.login.in_flight import InFlight
from tokend.threads import BoundedThreadQueue


def one_site(count: int) -> list[str]:
    """``count`` addresses, each in its own /64 of 2001:db8:1::/48."""
    return [f"2001:db8:1:{n:x}::1" for n in range(count)]


def test_one_48_holds_twice_an_address_share_whatever_its_64s() -> None:
    in_flight = InFlight(4, capacity=68)
    answers = [in_flight.admit(address) for address in one_site(120)]
    assert answers.count(None) == 8
    assert set(answers[8:]) == {"network"}
    assert in_flight.admit("2001:db8:2::1") is None, "another /48 of the /32"
    assert in_flight.admit("2001:db9::1") is None, "another /32"
    assert in_flight.admit("192.0.2.1") is None, "IPv4"


def test_one_32_holds_four_times_an_address_share() -> None:
    in_flight = InFlight(4, capacity=68)
    sites = [f"2001:db8:{n:x}::1" for n in range(40)]
    assert [in_flight.admit(address) for address in sites].count(None) == 16
    assert in_flight.admit("2001:db9::1") is None


def test_one_ipv4_24_holds_twice_an_address_share() -> None:
    in_flight = InFlight(4, capacity=68)
    assert [in_flight.admit(f"192.0.2.{n}") for n in range(1, 30)].count(None) == 8
    assert in_flight.admit("192.0.2.200") == "network"
    assert in_flight.admit("198.51.100.1") is None
    for n in range(1, 9):
        in_flight.leave(f"192.0.2.{n}")
    assert len(in_flight) == 2 and in_flight.total == 1


def test_a_quarter_of_the_queue_is_kept_for_known_logins() -> None:
    in_flight = InFlight(4, capacity=68)
    strangers = [f"10.{n}.0.1" for n in range(60)]
    admitted = [address for address in strangers if in_flight.admit(address) is None]
    assert len(admitted) == 68 - 17
    assert in_flight.admit("10.200.0.1") == "queue"
    assert all(in_flight.admit("10.201.0.1", known=True) is None for _ in range(4))
    in_flight.leave(admitted[0])
    assert in_flight.admit("10.200.0.1") == "queue", "the known logins hold the reserve"


def test_through_the_realm_one_48_cannot_fill_the_queue(tmp_path: Path) -> None:
    pool = HandFiredWorkers()
    realm = Realm(
        tmp_path,
        workers=BoundedThreadQueue(pool, limit=2, queue=14),
        throttle=throttle(per_account=1000, per_address=1000),
        proxies=TrustedProxies(networks=parse_networks(["127.0.0.0/8"])),
        in_flight=InFlight(2, capacity=16),
    )
    known = realm.start("bar", "bar", real_ip="2001:db8:99::1")
    pool.fire_all()
    assert realm.finish(known)[0] == 200

    site = [realm.start("foo", "guess", real_ip=address) for address in one_site(120)]
    realm.http.flush()
    assert len(pool.pending) == 2, "two checks run, the others wait in the queue"
    elsewhere = [realm.start("foo", "foo", real_ip=f"2001:db{n:x}::1") for n in range(9, 17)]
    realm.http.flush()
    strangers = [realm.start("foo", "x", real_ip=f"203.0.{n}.1") for n in range(4)]
    realm.http.flush()
    owner = realm.start("bar", "bar", real_ip="2001:db8:99::1")
    realm.http.flush()
    stranger_codes = [realm.finish(request)[0] for request in strangers]
    assert stranger_codes == [503] * 4, "the last places are kept for known logins"
    pool.fire_all()
    answers = [realm.finish(request) for request in site]
    codes = [code for code, _, _ in answers]
    assert codes.count(401) == 4 and codes.count(429) == 116, "one /48: twice one address's share"
    assert "from this network" in answers[-1][2]["errors"][0]["message"]
    assert [realm.finish(request)[0] for request in elsewhere] == [200] * 8
    assert realm.finish(owner)[0] == 200
