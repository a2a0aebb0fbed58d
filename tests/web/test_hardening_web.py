"""Throttling, the credential cache and the bcrypt queue through the web layer, in memory.

StubTreq over a TokenAPI with a Clock; bcrypt really runs (cost 4) through workers that count
the calls, or through workers whose Deferreds the test fires by hand.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from realms import HandFiredWorkers, Realm, assert_throttled, throttle
from support import parsed_options
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.usage import UsageError

from tokend.client_address import TrustedProxies, parse_networks
from tokend.login.credential_cache import CredentialCache
from tokend.settings.values import Settings
from tokend.threads import BoundedThreadQueue


def test_a_throttled_account_gets_429_without_running_bcrypt(tmp_path: Path) -> None:
    realm = Realm(tmp_path, throttle=throttle())
    for _ in range(10):
        assert realm.get("foo", "wrong")[0] == 401
    assert realm.bcrypt_runs == 10
    assert_throttled(realm.get("foo", "wrong"), 300, "account")
    assert_throttled(realm.get("foo", "foo"), 300, "account")
    assert realm.bcrypt_runs == 10

    realm.clock.advance(299)
    assert_throttled(realm.get("foo", "foo"), 1, "account")
    realm.clock.advance(1)
    assert realm.login("foo", "foo")["access"] == [
        {"type": "repository", "name": "public/hello", "actions": ["pull"]}
    ]
    assert realm.bcrypt_runs == 11


def test_retry_after_follows_the_oldest_failure_in_the_window(tmp_path: Path) -> None:
    realm = Realm(tmp_path, throttle=throttle(per_account=3))
    for _ in range(3):
        assert realm.get("foo", "wrong")[0] == 401
        realm.clock.advance(100)
    assert realm.get("foo", "wrong")[0] == 401, "the first failure has left the window"
    assert_throttled(realm.get("foo", "foo"), 100, "account")
    realm.clock.advance(99.5)
    assert_throttled(realm.get("foo", "foo"), 1, "account")
    realm.clock.advance(0.5)
    realm.login("foo", "foo")


def test_a_success_restarts_the_account_count(tmp_path: Path) -> None:
    realm = Realm(tmp_path, throttle=throttle(per_account=3))
    for _ in range(2):
        assert realm.get("foo", "wrong")[0] == 401
    realm.login("foo", "foo")
    for _ in range(2):
        assert realm.get("foo", "wrong")[0] == 401
    realm.login("foo", "foo")


def test_an_unrelated_account_logs_in_while_another_is_throttled(tmp_path: Path) -> None:
    realm = Realm(tmp_path, throttle=throttle())
    for _ in range(10):
        realm.get("foo", "wrong")
    assert realm.get("foo", "foo")[0] == 429
    claims = realm.login("bar", "bar")
    assert claims["access"] == [{"type": "repository", "name": "public/hello", "actions": ["pull"]}]


def test_unknown_accounts_are_throttled_like_real_ones(tmp_path: Path) -> None:
    realm = Realm(tmp_path, throttle=throttle(per_account=2))
    for name in ("foo", "ghost"):
        for _ in range(2):
            assert realm.get(name, "wrong")[0] == 401
        assert_throttled(realm.get(name, "wrong"), 300, "account")


def test_the_address_limit_stops_rotating_user_names(tmp_path: Path) -> None:
    realm = Realm(tmp_path, throttle=throttle(per_address=5))
    for index in range(5):
        assert realm.get(f"user{index}", "wrong")[0] == 401
    assert_throttled(realm.get("bar", "bar"), 300, "address")
    assert realm.bcrypt_runs == 5
    assert realm.get(None)[0] == 200, "anonymous requests are never throttled"


def test_a_throttled_post_gets_the_oauth_error(tmp_path: Path) -> None:
    realm = Realm(tmp_path, throttle=throttle(per_account=1))
    assert realm.post("bar", "wrong")[0] == 401
    code, headers, body = realm.post("bar", "bar")
    assert code == 429
    assert headers[b"Retry-After"] == [b"300"]
    assert body["error"] == "temporarily_unavailable"
    assert "too many failed logins" in body["error_description"]


def test_attempts_in_flight_count_so_a_burst_cannot_overshoot(tmp_path: Path) -> None:
    workers = HandFiredWorkers()
    realm = Realm(tmp_path, workers=workers, throttle=throttle(per_account=3))
    in_flight = [realm.start("foo", "wrong") for _ in range(3)]
    code, headers, _ = realm.get("foo", "wrong")
    assert code == 429 and headers[b"Retry-After"] == [b"1"]
    assert workers.calls == 3
    workers.fire_all()
    assert [realm.finish(request)[0] for request in in_flight] == [401, 401, 401]
    assert_throttled(realm.get("foo", "foo"), 300, "account")


def test_throttled_refusals_are_logged_as_such_without_secrets(tmp_path: Path) -> None:
    realm = Realm(tmp_path, throttle=throttle(per_account=1))
    events: list[LogEvent]
    with capturedLogs() as events:
        realm.get("foo", "hunter2")
        realm.get("foo", "hunter3")
    throttled = [e for e in events if e.get("outcome") == "throttled"]
    refused = [e for e in events if e.get("outcome") == "refused"]
    assert len(throttled) == 1 and len(refused) == 1
    assert throttled[0]["account"] == "foo"
    assert throttled[0]["status"] == 429
    assert formatEvent(throttled[0]).startswith("throttled GET /v2/token from 127.0.0.1: 429")
    flattened = repr(events)
    assert "hunter" not in flattened and "Basic " not in flattened


def test_x_real_ip_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    realm = Realm(tmp_path, throttle=throttle(per_address=3))
    events: list[LogEvent]
    with capturedLogs() as events:
        for index in range(3):
            assert realm.get(f"user{index}", "wrong", real_ip=f"198.51.100.{index}")[0] == 401
    assert {e["client"] for e in events if "client" in e} == {"127.0.0.1"}
    assert_throttled(realm.get("bar", "bar", real_ip="203.0.113.77"), 300, "address")


def test_x_real_ip_from_a_trusted_proxy_names_the_client(tmp_path: Path) -> None:
    proxies = TrustedProxies(networks=parse_networks(["127.0.0.0/8"]))
    realm = Realm(tmp_path, throttle=throttle(per_address=3), proxies=proxies)
    events: list[LogEvent]
    with capturedLogs() as events:
        for index in range(3):
            assert realm.get(f"user{index}", "wrong", real_ip="198.51.100.9")[0] == 401
        assert_throttled(realm.get("bar", "bar", real_ip="198.51.100.9"), 300, "address")
        realm.login("bar", "bar", real_ip="203.0.113.77")
    clients = [e["client"] for e in events if "client" in e]
    assert clients == ["198.51.100.9"] * 4 + ["203.0.113.77"]


def test_throttle_state_stays_bounded_when_user_names_rotate(tmp_path: Path) -> None:
    limiter = throttle(per_address=0, max_entries=50)
    realm = Realm(tmp_path, throttle=limiter)
    for index in range(200):
        assert realm.get(f"rotating{index}", "wrong")[0] == 401
    assert limiter.size == 50
    realm.login("foo", "foo")


def test_a_cache_hit_skips_bcrypt_and_still_issues_a_verified_token(tmp_path: Path) -> None:
    realm = Realm(tmp_path, cache=CredentialCache(ttl=60))
    first = realm.login("bar", "bar")
    second = realm.login("bar", "bar")
    assert realm.bcrypt_runs == 1
    assert first["jti"] != second["jti"]
    assert second["access"] == [{"type": "repository", "name": "public/hello", "actions": ["pull"]}]


def test_a_wrong_password_after_a_cached_success_still_fails(tmp_path: Path) -> None:
    realm = Realm(tmp_path, cache=CredentialCache(ttl=60))
    realm.login("bar", "bar")
    code, headers, _ = realm.get("bar", "bar!")
    assert code == 401
    assert headers[b"WWW-Authenticate"] == [b'Basic realm="tokend-test"']
    assert realm.get("foo", "bar")[0] == 401
    assert realm.bcrypt_runs == 3


def test_failures_are_never_cached(tmp_path: Path) -> None:
    cache = CredentialCache(ttl=60)
    realm = Realm(tmp_path, cache=cache)
    for _ in range(2):
        assert realm.get("bar", "wrong")[0] == 401
        assert realm.get("ghost", "bar")[0] == 401
    assert len(cache) == 0
    assert realm.bcrypt_runs == 4


def test_a_reload_that_changes_the_hash_invalidates(tmp_path: Path) -> None:
    cache = CredentialCache(ttl=60)
    realm = Realm(tmp_path, cache=cache)
    realm.login("bar", "bar")
    realm.login("foo", "foo")
    assert len(cache) == 2
    realm.reload({"bar": ("changed", {"*": ["pull"]})})
    assert len(cache) == 0, "the changed and the removed user are both forgotten"
    assert realm.get("bar", "bar")[0] == 401
    assert realm.get("foo", "foo")[0] == 401
    realm.login("bar", "changed")
    realm.login("bar", "changed")
    assert realm.bcrypt_runs == 2 + 2 + 1


def test_a_cache_entry_expires_after_its_ttl(tmp_path: Path) -> None:
    realm = Realm(tmp_path, cache=CredentialCache(ttl=60))
    realm.login("bar", "bar")
    realm.clock.advance(59)
    realm.login("bar", "bar")
    assert realm.bcrypt_runs == 1
    realm.clock.advance(1)
    realm.login("bar", "bar")
    assert realm.bcrypt_runs == 2


def test_ttl_zero_checks_every_time(tmp_path: Path) -> None:
    realm = Realm(tmp_path, cache=CredentialCache(ttl=0))
    for _ in range(3):
        realm.login("bar", "bar")
    assert realm.bcrypt_runs == 3


def test_a_throttled_account_gets_no_answer_from_the_cache(tmp_path: Path) -> None:
    proxies = TrustedProxies(networks=parse_networks(["127.0.0.0/8"]))
    realm = Realm(
        tmp_path, throttle=throttle(per_account=2), cache=CredentialCache(ttl=60), proxies=proxies
    )
    realm.login("bar", "bar", real_ip="192.0.2.10")
    for _ in range(2):
        assert realm.get("bar", "guess", real_ip="203.0.113.66")[0] == 401
    assert realm.get("bar", "bar", real_ip="198.51.100.5")[0] == 429
    assert realm.bcrypt_runs == 3


@pytest.fixture
def queued(tmp_path: Path) -> tuple[Realm, HandFiredWorkers]:
    workers = HandFiredWorkers()
    realm = Realm(
        tmp_path,
        workers=BoundedThreadQueue(workers, limit=2, queue=1),
        cache=CredentialCache(ttl=60),
    )
    return realm, workers


def test_a_full_bcrypt_queue_answers_503(queued: tuple[Realm, HandFiredWorkers]) -> None:
    realm, workers = queued
    in_flight = [realm.start("bar", "bar"), realm.start("foo", "foo"), realm.start("bar", "x")]
    assert workers.calls == 2, "two run, the third waits"
    events: list[LogEvent]
    with capturedLogs() as events:
        code, headers, body = realm.get("foo", "foo")
    assert code == 503
    assert headers[b"Retry-After"] == [b"1"]
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert workers.calls == 2
    assert [e["outcome"] for e in events if "outcome" in e] == ["overloaded"]
    assert formatEvent(events[-1]).startswith("overloaded GET /v2/token")

    workers.fire_all()
    assert workers.calls == 3
    assert [realm.finish(request)[0] for request in in_flight] == [200, 200, 401]


def test_anonymous_requests_and_cache_hits_do_not_queue(
    queued: tuple[Realm, HandFiredWorkers],
) -> None:
    realm, workers = queued
    first = realm.start("bar", "bar")
    workers.fire_all()
    assert realm.finish(first)[0] == 200
    in_flight = [realm.start("foo", "x") for _ in range(3)]
    assert realm.get("foo", "foo")[0] == 503
    assert realm.get(None)[0] == 200
    realm.login("bar", "bar")
    workers.fire_all()
    assert [realm.finish(request)[0] for request in in_flight] == [401, 401, 401]
    assert workers.calls == 4


def parsed(tmp_path: Path, *args: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The hardening options' settings, by option name."""
    settings: Settings = parsed_options(tmp_path, *args, environ=environ).settings
    limits = settings.limits
    return {
        "bcrypt-queue": limits.bcrypt_queue,
        "max-failures-per-account": limits.max_failures_per_account,
        "max-failures-per-address": limits.max_failures_per_address,
        "failure-window": limits.failure_window,
        "credential-cache-ttl": limits.credential_cache_ttl,
        "credential-cache-size": limits.credential_cache_size,
        "trusted-proxy": settings.listen.trusted_proxies,
    }


HARDENING_OPTIONS = (
    "bcrypt-queue",
    "max-failures-per-account",
    "max-failures-per-address",
    "failure-window",
    "credential-cache-ttl",
    "credential-cache-size",
    "trusted-proxy",
)


def test_hardening_defaults(tmp_path: Path) -> None:
    options = parsed(tmp_path)
    assert {name: options[name] for name in HARDENING_OPTIONS} == {
        "bcrypt-queue": 64,
        "max-failures-per-account": 10,
        "max-failures-per-address": 30,
        "failure-window": 300,
        "credential-cache-ttl": 60,
        "credential-cache-size": 10_000,
        "trusted-proxy": (),
    }


def test_hardening_options_from_the_command_line_and_the_environment(tmp_path: Path) -> None:
    environ = {
        "TOKEND_TRUSTED_PROXY": "10.0.0.0/8, 192.0.2.1",
        "TOKEND_MAX_FAILURES_PER_ACCOUNT": "0",
        "TOKEND_CREDENTIAL_CACHE_TTL": "0",
    }
    from_env = parsed(tmp_path / "env", environ=environ)
    assert from_env["trusted-proxy"] == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.1/32"),
    )
    assert from_env["max-failures-per-account"] == 0
    assert from_env["credential-cache-ttl"] == 0
    from_cli = parsed(
        tmp_path / "cli",
        "--trusted-proxy", "::1", "--trusted-proxy", "127.0.0.0/8", "--bcrypt-queue", "0",
        "--failure-window", "60", "--credential-cache-size", "5",
        environ=environ,
    )  # fmt: skip
    assert from_cli["trusted-proxy"] == (
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("127.0.0.0/8"),
    )
    assert from_cli["bcrypt-queue"] == 0
    assert from_cli["failure-window"] == 60
    assert from_cli["credential-cache-size"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trusted-proxy", "nginx"], "--trusted-proxy 'nginx' is not an IP address or CIDR"),
        (["--max-failures-per-account", "-1"], "--max-failures-per-account must be between"),
        (["--max-failures-per-address", "lots"], "--max-failures-per-address must be a whole"),
        (["--failure-window", "0"], "--failure-window must be between 1 and 86400"),
        (["--credential-cache-ttl", "7200"], "--credential-cache-ttl must be between 0 and 3600"),
        (["--credential-cache-size", "0"], "--credential-cache-size must be between"),
        (["--bcrypt-queue", "-5"], "--bcrypt-queue must be between 0 and 100000"),
    ],
)
def test_bad_hardening_options_are_usage_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        parsed(tmp_path, *args)
