"""The news bus: made first, handed to the throttle and to what it shares with (Redis, the
parent link) at construction, so neither is given the other after the fact (STYLE rule 17)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed

from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.news import Failed, News, Seen, Succeeded
from tokend.login.throttle import LoginThrottle


def test_a_throttle_joins_the_bus_it_is_made_with_both_ways() -> None:
    """What the shared side hears reaches the throttle, and the throttle's news goes out."""
    sent: list[News] = []
    bus = NewsBus()
    bus.share(sent.append)
    throttle = LoginThrottle(per_account=2, per_address=100, window=60, news=bus)
    bus.learn(Failed("alice", "192.0.2.1", 1.0), 2.0)
    bus.learn(Failed("alice", "192.0.2.2", 1.5), 2.0)
    refusal = throttle.admit("alice", "192.0.2.9", 2.0)
    assert refusal is not None and refusal.reason == "account"
    assert bus.unlock("account", "alice") == 2, "an unlock through the bus clears the throttle"
    assert throttle.admit("alice", "192.0.2.9", 3.0) is None
    throttle.succeeded("alice", "192.0.2.9", 3.0)
    assert sent == [Succeeded("alice", "192.0.2.9", 3.0)]


def test_the_throttle_asks_the_store_the_bus_shares_and_a_rejoin_asks_again() -> None:
    asked: list[list[tuple[str, str]]] = []

    def lookup(pairs: list[tuple[str, str]]) -> Deferred[list[Seen]]:
        asked.append(pairs)
        return succeed([])

    bus = NewsBus(lookup=lookup)
    throttle = LoginThrottle(per_account=2, per_address=100, window=60, news=bus)
    first = throttle.consult("alice", "192.0.2.1", 1.0)
    assert first is not None and first.called
    assert throttle.consult("alice", "192.0.2.1", 1.0) is None, "asked once"
    bus.rejoined()
    assert throttle.consult("alice", "192.0.2.1", 1.0) is not None, "asked again after a rejoin"
    assert len(asked) == 2


def test_without_a_store_nothing_is_asked_and_nobody_listening_unlocks_nothing() -> None:
    bus = NewsBus()
    bus.publish(Failed(None, "192.0.2.1", 1.0))  # nobody shares: dropped
    assert bus.lookup is None
    assert bus.unlock("account", "alice") is None, "no throttle has joined"
    throttle = LoginThrottle(per_account=2, per_address=100, window=60, news=bus)
    assert throttle.consult("alice", "192.0.2.1", 1.0) is None
