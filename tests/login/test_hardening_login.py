"""The login path under attack, through the web layer in memory (issue: Hardening II).

Over-long passwords, a full bcrypt queue, one address flooding it, a user locked out by
somebody else's guesses, credentials in a POST's URL, hostile text in log lines, a forwarded
header padded to hide the client, and a stored hash bcrypt cannot read.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlencode

import pytest
from realms import HandFiredWorkers, Realm, Response, assert_throttled, throttle
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from tokend.client_address import FORWARDED_FOR, TrustedProxies, parse_networks
from tokend.login.credential_cache import CredentialCache
from tokend.login.in_flight import InFlight
from tokend.threads import BoundedThreadQueue

LOCAL_PROXY = parse_networks(["127.0.0.0/8"])
TOO_LONG = "p" * 73


def behind_proxy(**kwargs: Any) -> TrustedProxies:
    return TrustedProxies(networks=LOCAL_PROXY, **kwargs)


def lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


def test_an_over_long_password_fails_like_a_wrong_one_and_counts(tmp_path: Path) -> None:
    """It used to be 'abandoned': never a failure, so never a 429, however often it came. It
    costs the one bcrypt a wrong password costs (Hardening III, 7): an answer at once, or a
    message of its own, would tell users.json names from directory names."""
    realm = Realm(tmp_path, throttle=throttle(per_account=100, per_address=3))
    for _ in range(3):
        code, headers, body = realm.get("bar", TOO_LONG)
        assert code == 401, body
        assert b"WWW-Authenticate" in headers
        assert body["errors"][0]["message"] == "invalid user name or password"
    assert_throttled(realm.get("foo", "foo"), 300, "address")
    assert realm.bcrypt_runs == 3


def test_an_over_long_password_is_refused_without_policy_wide_work(tmp_path: Path) -> None:
    """Nothing policy-wide may run for it on the reactor: a users mapping that refuses to be
    walked or counted proves it. Its own name is looked up, for the cost of its padding."""
    realm = Realm(tmp_path, throttle=throttle())
    users = realm.holder.current.users

    class Untouchable(Mapping[str, Any]):
        def __getitem__(self, name: str) -> Any:
            assert name == "bar", f"{name} was looked up"
            return users[name]

        def __iter__(self) -> Iterator[str]:
            raise AssertionError("every user was walked")

        def __len__(self) -> int:
            raise AssertionError("the users were counted")

    policy = copy.copy(realm.holder.current)
    object.__setattr__(policy, "users", Untouchable())  # after whatever building computed
    realm.holder.current = policy
    assert realm.get("bar", TOO_LONG)[0] == 401


def test_an_address_whose_logins_keep_meeting_a_full_queue_is_throttled(tmp_path: Path) -> None:
    workers = HandFiredWorkers()
    realm = Realm(
        tmp_path,
        workers=BoundedThreadQueue(workers, limit=1, queue=0),
        throttle=throttle(per_address=3),
        proxies=behind_proxy(),
    )
    held = realm.start("foo", "foo", real_ip="192.0.2.10")
    for _ in range(3):
        assert realm.get("bar", "bar", real_ip="203.0.113.66")[0] == 503
    assert_throttled(realm.get("bar", "bar", real_ip="203.0.113.66"), 300, "address")
    workers.fire_all()
    assert realm.finish(held)[0] == 200
    owner = realm.start("bar", "bar", real_ip="198.51.100.5")
    workers.fire_all()
    assert realm.finish(owner)[0] == 200, "the account was not charged"


def test_one_address_holds_only_its_share_of_the_bcrypt_queue(tmp_path: Path) -> None:
    """24 addresses used to keep the queue full and the real user got 17/17 x 503."""
    workers = HandFiredWorkers()
    realm = Realm(
        tmp_path,
        workers=BoundedThreadQueue(workers, limit=2, queue=8),
        proxies=behind_proxy(),
        in_flight=InFlight(2),
    )
    flood = [realm.start("bar", f"guess{n}", real_ip="203.0.113.66") for n in range(2)]
    events: list[LogEvent]
    with capturedLogs() as events:
        code, headers, body = realm.get("bar", "guess", real_ip="203.0.113.66")
    assert code == 429, body  # its own limit: not a 503 that pages operators (Hardening III)
    assert headers[b"Retry-After"] == [b"1"]
    assert "from this address" in body["errors"][0]["message"]
    assert [e["outcome"] for e in events if "outcome" in e] == ["throttled"]
    owner = realm.start("foo", "foo", real_ip="192.0.2.10")
    workers.fire_all()
    assert [realm.finish(request)[0] for request in flood] == [401, 401]
    assert realm.finish(owner)[0] == 200, "another address still got a place"
    again = realm.start("bar", "guess", real_ip="203.0.113.66")
    workers.fire_all()
    assert realm.finish(again)[0] == 401, "its places came back"


@pytest.mark.parametrize("flow", ["GET", "POST"])
def test_guessing_from_elsewhere_does_not_lock_the_owner_out(tmp_path: Path, flow: str) -> None:
    realm = Realm(
        tmp_path,
        throttle=throttle(per_account=10),
        cache=CredentialCache(ttl=60),
        proxies=behind_proxy(),
    )

    def login(password: str, address: str) -> Response:
        if flow == "GET":
            return realm.get("bar", password, real_ip=address)
        return realm.post("bar", password, real_ip=address)

    assert login("bar", "192.0.2.10")[0] == 200
    for n in range(10):
        assert login(f"guess{n}", "203.0.113.66")[0] == 401
    assert login("bar", "203.0.113.66")[0] == 429
    assert login("bar", "198.51.100.5")[0] == 429, "a new address is still held back"
    runs = realm.bcrypt_runs
    for _ in range(5):
        assert login("bar", "192.0.2.10")[0] == 200, "the owner's usual address works"
    assert realm.bcrypt_runs == runs, "from the warm cache"


def test_credentials_in_a_posts_url_are_refused(tmp_path: Path) -> None:
    realm = Realm(tmp_path)
    form = {"grant_type": "password", "service": "registry.test", "client_id": "ctr"}
    for query in ("username=bar&password=bar", "password=bar", "refresh_token=x"):
        request = realm.http.post(
            f"http://tokend/v2/token?{query}",
            data=urlencode({**form, "username": "bar", "password": "bar"}).encode(),
            headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
        )
        code, _, body = realm.finish(request)
        assert code == 400, body
        assert body["error"] == "invalid_request"
        assert "never in the URL" in body["error_description"]
    assert realm.bcrypt_runs == 0


def test_hostile_text_is_escaped_in_every_log_line(tmp_path: Path) -> None:
    realm = Realm(tmp_path)
    hostile = "\x1b[31mRED\r\nINJ\u2028"
    client_id = "%1b%5b31mRED%0d%0aINJ"
    events: list[LogEvent]
    with capturedLogs() as events:
        assert realm.finish(realm.start(None, query=f"&client_id={client_id}"))[0] == 200
        assert realm.post(hostile, "wrong")[0] == 401
        assert realm.finish(realm.start(None, query="&scope=\x1b%0a"))[0] == 400
        assert realm.get("bar", "bar", query=f"&client_id={client_id}")[0] == 200
    text = lines(events)
    assert len(text) == 4
    for line in text:
        assert not any(char in line for char in "\x1b\r\n\u2028"), repr(line)
    assert "client_id \\x1b[31mRED\\x0d\\x0aINJ" in text[0]
    assert "account '\\x1b[31mRED\\x0d\\x0aINJ\\u2028'" in text[1]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("wrong", "401"),
        ("throttled", "429"),
        ("bad scope", "400"),
        ("overloaded", "503"),
    ],
)
def test_refusals_name_the_account_and_the_client_id(
    tmp_path: Path, setup: str, expected: str
) -> None:
    workers = HandFiredWorkers()
    realm = Realm(
        tmp_path,
        workers=BoundedThreadQueue(workers, limit=1, queue=0) if setup == "overloaded" else None,
        throttle=throttle(per_account=1),
    )
    if setup == "throttled":
        assert realm.get("bar", "wrong")[0] == 401
    if setup == "overloaded":
        realm.start("foo", "foo")
    query = "&client_id=docker" + ("&scope=nonsense" if setup == "bad scope" else "")
    events: list[LogEvent]
    with capturedLogs() as events:
        code = realm.get("bar", "wrong", query=query)[0]
    assert str(code) == expected
    [line] = [formatEvent(e) for e in events if "outcome" in e]
    assert f": {expected} " in line
    assert "account 'bar'" in line and "client_id docker" in line, line


def test_a_padded_forwarded_for_header_cannot_hide_the_client(tmp_path: Path) -> None:
    """Behind a proxy that appends to X-Forwarded-For: the header used to be cut to its first
    256 characters, so padding pushed the proxy's own entry out of view and every guess came
    from a new address. Now the right-most untrusted address is the client."""
    realm = Realm(
        tmp_path,
        throttle=throttle(per_account=100, per_address=3),
        proxies=behind_proxy(header=FORWARDED_FOR),
    )
    events: list[LogEvent]
    with capturedLogs() as events:
        for n in range(3):
            padding = ", ".join(f"10.{n}.0.{i}" for i in range(40))
            forwarded = {b"X-Forwarded-For": [f"{padding}, 203.0.113.66".encode()]}
            assert realm.get(f"user{n}", "wrong", headers=forwarded)[0] == 401
    assert {e["client"] for e in events if "client" in e} == {"203.0.113.66"}
    header = {b"X-Forwarded-For": [b"203.0.113.66"]}
    assert_throttled(realm.get("bar", "bar", headers=header), 300, "address")


def test_an_oversized_forwarded_header_is_ignored_and_logged(tmp_path: Path) -> None:
    realm = Realm(tmp_path, proxies=behind_proxy(header=FORWARDED_FOR))
    huge = {b"X-Forwarded-For": [b"10.0.0.1, " * 500 + b"203.0.113.66"]}
    events: list[LogEvent]
    with capturedLogs() as events:
        assert realm.get(None, headers=huge)[0] == 200
    assert {e["client"] for e in events if "client" in e} == {"127.0.0.1"}
    assert any("ignored the client address header" in line for line in lines(events))


def test_a_client_written_x_real_ip_is_ignored_when_the_proxy_uses_forwarded_for(
    tmp_path: Path,
) -> None:
    realm = Realm(tmp_path, proxies=behind_proxy(header=FORWARDED_FOR))
    events: list[LogEvent]
    with capturedLogs() as events:
        spoofed = {b"X-Forwarded-For": [b"203.0.113.66"]}
        assert realm.get(None, real_ip="192.0.2.1", headers=spoofed)[0] == 200
    assert {e["client"] for e in events if "client" in e} == {"203.0.113.66"}


def test_a_stored_hash_bcrypt_cannot_read_is_a_401_never_a_500(tmp_path: Path) -> None:
    """The loader refuses such hashes now; should one reach a login anyway, it is a failed
    login, logged, not Twisted's HTML 500 page."""
    realm = Realm(tmp_path, throttle=throttle())
    policy = realm.holder.current
    bad = replace(policy.users["bar"], pass_hash=b"$2b$04$" + b"z" * 53)
    realm.holder.current = replace(policy, users=MappingProxyType({**policy.users, "bar": bad}))
    events: list[LogEvent]
    with capturedLogs() as events:
        code, _, body = realm.get("bar", "bar")
    assert code == 401, body
    assert any(e.get("log_level") == LogLevel.error for e in events), lines(events)
    assert realm.get("foo", "foo")[0] == 200
