"""The throttle's seam to other workers and daemons (pure, no reactor): what it publishes, and
how what it learns counts, exactly once."""

from __future__ import annotations

from tokend.login.throttle import Failed, LoginThrottle, News, Seen, Succeeded


def pair() -> tuple[LoginThrottle, LoginThrottle, list[News]]:
    """Two throttles of one daemon, the first's news relayed to the second as the parent does."""
    sent: list[News] = []
    second = LoginThrottle(per_account=3, per_address=100, window=60)
    first = LoginThrottle(per_account=3, per_address=100, window=60, publish=sent.append)
    return first, second, sent


def test_failures_elsewhere_count_here() -> None:
    first, second, sent = pair()
    for now in (1.0, 2.0):
        assert first.admit("alice", "192.0.2.1", now) is None
        first.failed("alice", "192.0.2.1", now)
    assert sent == [Failed("alice", "192.0.2.1", 1.0), Failed("alice", "192.0.2.1", 2.0)]
    for news in sent:
        second.learn(news, 3.0)
    assert second.admit("alice", "192.0.2.9", 3.0) is None
    second.failed("alice", "192.0.2.9", 3.0)
    refusal = second.admit("alice", "192.0.2.9", 3.5)
    assert refusal is not None and refusal.reason == "account"


def test_the_same_failure_heard_twice_counts_once() -> None:
    """Relayed by the parent, then echoed by Redis with every time the key holds."""
    _, second, _ = pair()
    second.learn(Failed("alice", "192.0.2.1", 1.0), 2.0)
    second.learn(Seen("account", "alice", (1.0,)), 2.0)
    second.learn(Seen("account", "alice", (1.0, 1.5)), 2.0)
    assert second.admit("alice", "192.0.2.1", 2.0) is None, "two failures, not three"


def test_failures_outside_the_window_are_not_learned() -> None:
    _, second, _ = pair()
    second.learn(Seen("account", "alice", (1.0, 2.0, 3.0)), 100.0)
    assert len(second.accounts) == 0


def test_a_success_elsewhere_clears_the_account_and_knows_the_address() -> None:
    first, second, sent = pair()
    second.learn(Seen("account", "alice", (1.0, 2.0, 3.0)), 4.0)
    assert second.admit("alice", "192.0.2.7", 4.0) is not None
    assert first.admit("alice", "192.0.2.1", 4.0) is None
    first.succeeded("alice", "192.0.2.1", 4.0)
    assert sent == [Succeeded("alice", "192.0.2.1", 4.0)]
    second.learn(sent[0], 4.0)
    assert second.admit("alice", "192.0.2.7", 4.5) is None
    assert second.known.knows("alice", "192.0.2.1", 5.0)


def test_an_address_failure_names_no_account() -> None:
    sent: list[News] = []
    throttle = LoginThrottle(per_account=3, per_address=3, window=60, publish=sent.append)
    assert throttle.admit_address("2001:db8::1", 1.0) is None
    throttle.address_ended("2001:db8::1", 1.0, failed=True)
    assert sent == [Failed(None, "2001:db8::/64", 1.0)]
