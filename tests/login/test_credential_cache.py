"""The verified-credential cache: pure, with ``now`` passed in."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tokend.login.credential_cache import CredentialCache

NOW = 1_800_000_000.0
HASH = b"$2b$04$abcdefghijklmnopqrstuuJ0ZfJ0cXaYhq7Qn1m3bX4m8hW0u5dyy"
OTHER_HASH = b"$2b$04$zyxwvutsrqponmlkjihgfeJ0ZfJ0cXaYhq7Qn1m3bX4m8hW0u5dyy"


@dataclass(frozen=True)
class User:
    pass_hash: bytes


def test_a_success_is_remembered_for_exactly_ttl() -> None:
    cache = CredentialCache(ttl=60)
    assert not cache.verified("alice", b"right", HASH, NOW)
    cache.add("alice", b"right", HASH, NOW)
    assert cache.verified("alice", b"right", HASH, NOW)
    assert cache.verified("alice", b"right", HASH, NOW + 59.9)
    assert not cache.verified("alice", b"right", HASH, NOW + 60)
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("user", "password", "pass_hash"),
    [
        ("alice", b"wrong", HASH),
        ("alice", b"right ", HASH),
        ("alice", b"", HASH),
        ("bob", b"right", HASH),
        ("alice", b"right", OTHER_HASH),
    ],
)
def test_only_the_same_user_password_and_hash_hit(
    user: str, password: bytes, pass_hash: bytes
) -> None:
    cache = CredentialCache(ttl=60)
    cache.add("alice", b"right", HASH, NOW)
    assert not cache.verified(user, password, pass_hash, NOW)


def test_fields_cannot_run_into_each_other() -> None:
    cache = CredentialCache(ttl=60, key=b"k" * 32)
    cache.add("ab", b"c", HASH, NOW)
    assert not cache.verified("a", b"bc", HASH, NOW)
    cache.add("a", b"b", b"c" + HASH, NOW)
    assert not cache.verified("a", b"bc", HASH, NOW)


def test_the_key_is_random_per_process_and_nothing_secret_is_kept() -> None:
    first, second = CredentialCache(ttl=60), CredentialCache(ttl=60)
    first.add("alice", b"hunter2", HASH, NOW)
    second.add("alice", b"hunter2", HASH, NOW)
    assert set(first._entries) != set(second._entries)
    stored = repr(vars(first)) + repr(first)
    assert "hunter2" not in stored and HASH.decode() not in stored


def test_ttl_zero_turns_it_off() -> None:
    cache = CredentialCache(ttl=0)
    cache.add("alice", b"right", HASH, NOW)
    assert not cache.verified("alice", b"right", HASH, NOW)
    assert len(cache) == 0


def test_the_oldest_entry_goes_when_full() -> None:
    cache = CredentialCache(ttl=60, max_entries=100)
    for index in range(10_000):
        cache.add(f"user{index}", b"pw", HASH, NOW + index / 1000)
    assert len(cache) == 100
    assert cache.verified("user9999", b"pw", HASH, NOW + 10)
    assert not cache.verified("user9899", b"pw", HASH, NOW + 10)


def test_a_clock_that_went_back_does_not_stretch_an_entry() -> None:
    cache = CredentialCache(ttl=60)
    cache.add("alice", b"right", HASH, NOW)
    assert not cache.verified("alice", b"right", HASH, NOW - 3600)


def test_a_reload_forgets_removed_and_changed_users_only() -> None:
    cache = CredentialCache(ttl=60)
    for user in ("kept", "changed", "removed"):
        cache.add(user, b"pw", HASH, NOW)
    old = {"kept": User(HASH), "changed": User(HASH), "removed": User(HASH)}
    new = {"kept": User(HASH), "changed": User(OTHER_HASH), "added": User(HASH)}
    cache.policy_replaced(old, new)
    assert len(cache) == 1
    assert cache.verified("kept", b"pw", HASH, NOW)
    assert not cache.verified("changed", b"pw", HASH, NOW)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl"):
        CredentialCache(ttl=-1)
    with pytest.raises(ValueError, match="max_entries"):
        CredentialCache(ttl=60, max_entries=0)
