"""Failed-login throttling and trusted proxies: pure, with ``now`` passed in."""

from __future__ import annotations

import pytest

from tokend.login.failure_windows import FailureWindow, KnownAddresses
from tokend.login.in_flight import InFlight
from tokend.login.throttle import LoginThrottle, Refusal, address_key

NOW = 1_800_000_000.0


def fail(throttle: LoginThrottle, account: str, address: str, now: float) -> None:
    assert throttle.admit(account, address, now) is None
    throttle.failed(account, address, now)


def test_reaching_the_limit_refuses_until_the_window_has_passed() -> None:
    throttle = LoginThrottle(per_account=3, per_address=100, window=300)
    for second in (0, 10, 20):
        fail(throttle, "alice", "192.0.2.1", NOW + second)
    assert throttle.admit("alice", "192.0.2.1", NOW + 30) == Refusal(270.0, "account")
    assert throttle.admit("alice", "192.0.2.9", NOW + 299) == Refusal(1.0, "account")
    assert throttle.admit("alice", "192.0.2.1", NOW + 300) is None


def test_the_window_slides_failure_by_failure() -> None:
    throttle = LoginThrottle(per_account=2, per_address=100, window=100)
    fail(throttle, "alice", "a", NOW)
    fail(throttle, "alice", "a", NOW + 50)
    assert throttle.admit("alice", "a", NOW + 60) == Refusal(40.0, "account")
    fail(throttle, "alice", "a", NOW + 100)
    assert throttle.admit("alice", "a", NOW + 110) == Refusal(40.0, "account")
    assert throttle.admit("alice", "a", NOW + 150) is None


def test_refusals_are_not_failures() -> None:
    throttle = LoginThrottle(per_account=1, per_address=100, window=60)
    fail(throttle, "alice", "a", NOW)
    for second in range(1, 60):
        assert throttle.admit("alice", "a", NOW + second) is not None
    assert throttle.admit("alice", "a", NOW + 60) is None


def test_other_accounts_are_not_slowed_by_one_accounts_failures() -> None:
    throttle = LoginThrottle(per_account=2, per_address=100, window=300)
    fail(throttle, "alice", "192.0.2.1", NOW)
    fail(throttle, "alice", "192.0.2.1", NOW)
    assert throttle.admit("alice", "192.0.2.1", NOW) is not None
    assert throttle.admit("bob", "192.0.2.1", NOW) is None


def test_a_success_clears_its_account_but_not_the_address() -> None:
    throttle = LoginThrottle(per_account=2, per_address=3, window=300)
    fail(throttle, "alice", "a", NOW)
    fail(throttle, "mallory", "a", NOW)
    assert throttle.admit("alice", "a", NOW) is None
    throttle.succeeded("alice", "a", NOW)
    fail(throttle, "alice", "a", NOW)
    assert throttle.admit("alice", "b", NOW) is None, "alice's count restarted at the success"
    throttle.abandoned("alice", "b", NOW)
    assert throttle.admit("bob", "a", NOW) == Refusal(300.0, "address")


def test_the_address_limit_catches_rotating_user_names() -> None:
    throttle = LoginThrottle(per_account=10, per_address=5, window=300)
    for index in range(5):
        fail(throttle, f"user{index}", "198.51.100.7", NOW)
    assert throttle.admit("someone", "198.51.100.7", NOW + 1) == Refusal(299.0, "address")
    assert throttle.admit("someone", "198.51.100.8", NOW + 1) is None


def test_attempts_in_flight_count_against_the_limit() -> None:
    throttle = LoginThrottle(per_account=3, per_address=100, window=300)
    for _ in range(3):
        assert throttle.admit("alice", "a", NOW) is None
    assert throttle.admit("alice", "a", NOW) == Refusal(1.0, "account")
    throttle.abandoned("alice", "a", NOW)
    assert throttle.admit("alice", "a", NOW) is None
    for _ in range(3):
        throttle.failed("alice", "a", NOW)
    assert throttle.admit("alice", "a", NOW) == Refusal(300.0, "account")


def test_zero_turns_a_table_off_and_stores_nothing() -> None:
    throttle = LoginThrottle(per_account=0, per_address=0, window=300)
    for _ in range(1000):
        fail(throttle, "alice", "a", NOW)
    assert throttle.size == 0


def test_expired_keys_are_forgotten() -> None:
    throttle = LoginThrottle(per_account=5, per_address=5, window=60)
    for index in range(100):
        fail(throttle, f"user{index}", f"192.0.2.{index}", NOW)
    assert throttle.size == 200
    assert throttle.admit("new", "192.0.2.200", NOW + 61) is None
    throttle.abandoned("new", "192.0.2.200", NOW + 61)
    assert throttle.size == 0


def test_rotating_100k_user_names_and_addresses_stays_bounded() -> None:
    throttle = LoginThrottle(per_account=10, per_address=30, window=300, max_entries=1000)
    for index in range(100_000):
        address = f"10.{index >> 16}.{(index >> 8) & 255}.{index & 255}"
        fail(throttle, f"user{index}", address, NOW + index / 1000)
    assert len(throttle.accounts) == 1000
    assert len(throttle.addresses) == 1000
    assert throttle.size == 2000


def test_the_least_recently_failed_key_is_evicted_first() -> None:
    window = FailureWindow(limit=2, window=300, max_entries=2)
    for key in ("old", "kept"):
        window.begin(key)
        window.end(key, NOW, failed=True)
    window.begin("old")
    window.end("old", NOW + 1, failed=True)
    window.begin("new")
    window.end("new", NOW + 2, failed=True)
    assert window.retry_after("old", NOW + 3) == 297.0
    assert window.retry_after("kept", NOW + 3) is None
    assert len(window) == 2


def test_a_clock_that_went_back_never_asks_for_more_than_the_window() -> None:
    throttle = LoginThrottle(per_account=1, per_address=100, window=60)
    fail(throttle, "alice", "a", NOW)
    refusal = throttle.admit("alice", "a", NOW - 3600)
    assert refusal is not None and refusal.retry_after == 60


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        ("unix", "unix"),
    ],
)
def test_an_ipv6_client_is_throttled_by_its_64(address: str, key: str) -> None:
    assert address_key(address) == key


def test_one_ipv6_64_shares_the_address_limit() -> None:
    throttle = LoginThrottle(per_account=100, per_address=2, window=60)
    fail(throttle, "a", "2001:db8::1", NOW)
    fail(throttle, "b", "2001:db8::2", NOW)
    assert throttle.admit("c", "2001:db8::3", NOW) is not None
    assert throttle.admit("c", "2001:db8:0:1::3", NOW) is None


def test_a_flood_of_fresh_names_does_not_evict_a_locked_account() -> None:
    """Eviction used to take the least recently failed key, locked or not: 10,000 failures on
    fresh names pushed a locked account out and let it guess again."""
    throttle = LoginThrottle(per_account=3, per_address=0, window=300, max_entries=100)
    for _ in range(3):
        fail(throttle, "alice", "a", NOW)
    for index in range(10_000):
        fail(throttle, f"fresh{index}", "a", NOW + 1)
    assert throttle.admit("alice", "a", NOW + 2) == Refusal(298.0, "account")
    assert len(throttle.accounts) == 100


def test_when_every_key_is_locked_the_earliest_locked_goes() -> None:
    window = FailureWindow(limit=1, window=300, max_entries=2)
    for key in ("first", "second", "third"):
        window.end(key, NOW, failed=True)
    assert window.locked == 2
    assert window.retry_after("first", NOW) is None
    assert window.retry_after("third", NOW) == 300.0


def test_a_lock_that_expires_frees_the_key_for_eviction_again() -> None:
    window = FailureWindow(limit=2, window=60, max_entries=2)
    for _ in range(2):
        window.end("old", NOW, failed=True)
    assert window.locked == 1
    assert window.retry_after("old", NOW + 61) is None
    assert window.locked == 0


def test_an_address_the_account_logged_in_from_is_exempt_from_the_account_limit() -> None:
    throttle = LoginThrottle(per_account=3, per_address=30, window=300)
    assert throttle.admit("alice", "192.0.2.10", NOW) is None
    throttle.succeeded("alice", "192.0.2.10", NOW)
    for _ in range(3):
        fail(throttle, "alice", "203.0.113.66", NOW + 10)
    assert throttle.admit("alice", "203.0.113.66", NOW + 11) == Refusal(299.0, "account")
    assert throttle.admit("alice", "198.51.100.5", NOW + 11) == Refusal(299.0, "account")
    assert throttle.admit("alice", "192.0.2.10", NOW + 11) is None, "the owner's usual address"


def test_a_known_address_still_has_its_own_limit() -> None:
    throttle = LoginThrottle(per_account=3, per_address=5, window=300)
    assert throttle.admit("alice", "192.0.2.10", NOW) is None
    throttle.succeeded("alice", "192.0.2.10", NOW)
    for _ in range(5):
        fail(throttle, "alice", "192.0.2.10", NOW + 1)
    assert throttle.admit("alice", "192.0.2.10", NOW + 2) == Refusal(299.0, "address")


def test_a_known_address_is_known_for_its_account_only_and_for_30_days() -> None:
    throttle = LoginThrottle(per_account=1, per_address=30, window=300)
    assert throttle.admit("alice", "2001:db8::1", NOW) is None
    throttle.succeeded("alice", "2001:db8::1", NOW)
    assert throttle.known.knows("alice", address_key("2001:db8::99"), NOW + 1)
    assert not throttle.known.knows("bob", address_key("2001:db8::1"), NOW + 1)
    assert throttle.known.knows("alice", address_key("2001:db8::1"), NOW + 30 * 86_400 - 1)
    assert not throttle.known.knows("alice", address_key("2001:db8::1"), NOW + 30 * 86_400)


def test_known_addresses_stay_bounded() -> None:
    known = KnownAddresses(max_entries=100)
    for index in range(10_000):
        known.add("alice", f"10.0.{index >> 8}.{index & 255}", NOW)
    assert len(known) == 100
    assert known.knows("alice", "10.0.39.15", NOW)
    assert not known.knows("alice", "10.0.0.0", NOW)


def test_an_overloaded_attempt_is_a_failure_of_the_address_only() -> None:
    throttle = LoginThrottle(per_account=2, per_address=3, window=300)
    for index in range(3):
        assert throttle.admit(f"user{index}", "a", NOW) is None
        throttle.overloaded(f"user{index}", "a", NOW)
    assert throttle.admit("user0", "b", NOW) is None, "no account was charged"
    assert throttle.admit("someone", "a", NOW) == Refusal(300.0, "address")


def test_one_address_holds_a_bounded_share_of_the_checks_in_flight() -> None:
    in_flight = InFlight(limit=2)
    assert in_flight.admit("2001:db8::1") is None and in_flight.admit("2001:db8::2") is None
    assert in_flight.admit("2001:db8::3") == "address", "one /64, one share"
    assert in_flight.admit("192.0.2.1") is None
    in_flight.leave("2001:db8::1")
    assert in_flight.admit("2001:db8::3") is None
    for address in ("2001:db8::2", "2001:db8::3", "192.0.2.1"):
        in_flight.leave(address)
    assert len(in_flight) == 0 and in_flight.total == 0
    assert all(InFlight(limit=0).admit("a") is None for _ in range(100))
