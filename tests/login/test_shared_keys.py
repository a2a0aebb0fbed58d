"""What goes to Redis is keyed and sealed (pure, no Redis): hashed names, sealed news, stored
failures bound to their set; and the store drops (and counts) what does not verify."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from support import write_key_pair
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.keys import MAX_SKEW, NAMES_REMEMBERED, NewsRejected, SharedKeys
from tokend.login.shared_limits.news import Failed, News, Succeeded, news_to_wire
from tokend.login.shared_limits.redis_address import parse_redis_url
from tokend.login.shared_limits.redis_store import RedisFailures
from tokend.signing.key_set import CURRENT, KeySet, SetKey
from tokend.signing.keys import SigningKey, load_signing_key

NOW = 1_800_000_000.0


def test_names_are_keyed_hashes_that_every_holder_of_the_key_computes_alike(
    tmp_path: Path,
) -> None:
    key_path, cert_path = write_key_pair(tmp_path)
    loaded = load_signing_key(key_path, cert_path)
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    traditional = tmp_path / "traditional.key"
    traditional.write_bytes(
        private.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    traditional.chmod(0o600)
    ours = SharedKeys.from_signing_key(loaded)
    same = SharedKeys.from_signing_key(load_signing_key(traditional, None))
    other_key, other_cert = write_key_pair(tmp_path, "p384")
    other = SharedKeys.from_signing_key(load_signing_key(other_key, other_cert))

    hashed = ours.name("account", "alice")
    assert len(hashed) == 32 and int(hashed, 16) >= 0
    assert same.name("account", "alice") == hashed, "the key, not its PEM form"
    assert other.name("account", "alice") != hashed
    assert ours.name("address", "alice") != hashed
    assert "alice" not in hashed


def test_sealed_news_opens_only_with_the_key_and_only_while_fresh() -> None:
    keys, other = SharedKeys(b"one secret"), SharedKeys(b"another secret")
    news = news_to_wire(Succeeded("a" * 32, "b" * 32, NOW))
    sealed = keys.seal("origin", news, NOW)
    assert sealed.startswith("v1:") and "a" * 32 in sealed
    assert keys.open(sealed, NOW + 1) == ("origin", news)
    assert keys.open(sealed.encode(), NOW - 1) == ("origin", news)

    def refused(message: str, now: float = NOW) -> str:
        with pytest.raises(NewsRejected) as raised:
            keys.open(message, now)
        return raised.value.reason

    assert refused(other.seal("origin", news, NOW)) == "unauthenticated"
    assert refused(sealed.replace("a" * 32, "c" * 32)) == "unauthenticated"
    assert refused(sealed, NOW + MAX_SKEW + 1) == "stale"
    assert refused(sealed, NOW - MAX_SKEW - 1) == "stale"
    assert refused('{"origin": "x", "succeeded": ["alice", "192.0.2.1", 1]}') == "unreadable"
    assert refused("v1:" + "0" * 32) == "unreadable"


def test_a_stored_failure_counts_only_in_its_own_set() -> None:
    keys = SharedKeys(b"secret")
    member = keys.member("tokend:throttle:account:aa", NOW + 0.123456789)
    assert keys.member_time("tokend:throttle:account:aa", member) == NOW + 0.123456789
    assert keys.member_time("tokend:throttle:account:aa", member.encode()) == NOW + 0.123456789
    assert keys.member_time("tokend:throttle:account:bb", member) is None, "copied elsewhere"
    assert SharedKeys(b"other").member_time("tokend:throttle:account:aa", member) is None
    assert keys.member_time("tokend:throttle:account:aa", f"{NOW!r}:x:{'0' * 32}") is None
    assert keys.member("k", NOW) != keys.member("k", NOW), "two failures at one time stay two"


def store(keys: SharedKeys, heard: list[News], clock: Clock) -> RedisFailures:
    news = NewsBus()
    news.hear(lambda what, now: heard.append(what), lambda: None)
    return RedisFailures(
        parse_redis_url("unix:///nowhere.sock"),
        keys=keys,
        news=news,
        per_account=10,
        per_address=30,
        window=300,
        reactor=clock,
    )


def test_the_store_takes_in_what_verifies_and_counts_and_logs_now_and_then_what_does_not() -> None:
    keys, clock, heard = SharedKeys(b"secret"), Clock(), []
    clock.advance(NOW)
    listening = store(keys, heard, clock)
    news = Failed("a" * 32, "b" * 32, NOW)
    with capturedLogs() as events:
        listening._message(keys.seal("another daemon", news_to_wire(news), NOW).encode())
        assert heard == [news]
        forged = SharedKeys(b"guessed").seal("x", news_to_wire(Succeeded("a", "b", NOW)), NOW)
        for _ in range(5):
            listening._message(forged)
        listening._message(b'{"succeeded": ["alice", "192.0.2.1", 1]}')
        seen = keys.seal("x", {"seen": ["account", "a" * 32, [NOW]]}, NOW)
        listening._message(seen)  # only a lookup's answer may say what Redis holds
        clock.advance(61)
        listening._message(forged)
    assert heard == [news]
    assert listening.rejected == {"unauthenticated": 6, "stale": 0, "unreadable": 2}
    drops = [e for e in events if "dropped news from Redis" in e["log_format"]]
    assert [e["counts"] for e in drops] == ["1 unauthenticated", "5 unauthenticated, 2 unreadable"]
    assert "signing key" in drops[0]["log_format"]


def test_a_store_ignores_its_own_echo() -> None:
    keys, clock, heard = SharedKeys(b"secret"), Clock(), []
    clock.advance(NOW)
    listening = store(keys, heard, clock)
    listening._message(listening._sealed(Failed(None, "b" * 32, NOW)))
    assert heard == [] and listening.rejected["unauthenticated"] == 0


def test_a_key_set_with_a_shared_secret_keeps_its_keys_across_a_rotation(tmp_path: Path) -> None:
    """A keys directory's shared secret outlives its signing keys; --key has none, and keeps
    the signing key's derivation."""
    first = load_signing_key(*write_key_pair(tmp_path, "p256"))
    second = load_signing_key(*write_key_pair(tmp_path, "rsa"))
    secret = b"s" * 32

    def set_of(key: SigningKey, shared: bytes | None) -> KeySet:
        return KeySet(SetKey("k", CURRENT, key, tmp_path / "k.key", None), shared_secret=shared)

    before = SharedKeys.from_key_set(set_of(first, secret))
    after = SharedKeys.from_key_set(set_of(second, secret))
    assert before.name("account", "alice") == after.name("account", "alice")
    assert after.open(before.seal("w1", {"x": 1}, 100.0), 100.0) == ("w1", {"x": 1})
    alone = SharedKeys.from_key_set(set_of(first, None))
    assert alone.name("account", "alice") == SharedKeys.from_signing_key(first).name(
        "account", "alice"
    )
    assert alone.name("account", "alice") != before.name("account", "alice")


def test_names_are_remembered_within_a_bound_and_stay_the_same() -> None:
    """The memo of throttle keys (a login asks for the same ones several times) never gives
    another key than the HMAC, and holds at most NAMES_REMEMBERED names."""
    keys = SharedKeys(b"s" * 32)
    alice = keys.name("account", "alice")
    assert keys.name("account", "alice") == alice == SharedKeys(b"s" * 32).name("account", "alice")
    assert keys.name("address", "alice") != alice
    for i in range(NAMES_REMEMBERED + 10):
        keys.name("account", f"user{i}")
    assert len(keys._named) <= NAMES_REMEMBERED
    assert keys.name("account", "alice") == alice
