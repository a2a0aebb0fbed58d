"""The throttle's seam to other workers and daemons (pure, no reactor): what it publishes, and
how what it learns counts, exactly once."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred

from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.news import Failed, News, Seen, Succeeded, Unlocked
from tokend.login.throttle import LoginThrottle


def pair() -> tuple[LoginThrottle, LoginThrottle, list[News]]:
    """Two throttles of one daemon, the first's news relayed to the second as the parent does."""
    sent: list[News] = []
    second = LoginThrottle(per_account=3, per_address=100, window=60)
    first = LoginThrottle(per_account=3, per_address=100, window=60, news=NewsBus(sent.append))
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
    throttle = LoginThrottle(per_account=3, per_address=3, window=60, news=NewsBus(sent.append))
    assert throttle.admit_address("2001:db8::1", 1.0) is None
    throttle.address_ended("2001:db8::1", 1.0, failed=True)
    assert sent == [Failed(None, "2001:db8::/64", 1.0)]


def test_a_success_elsewhere_clears_only_the_failures_before_it() -> None:
    """A success heard late (or replayed) cannot wipe failures that came after it."""
    _, second, _ = pair()
    second.learn(Seen("account", "alice", (1.0, 2.0, 5.0, 6.0)), 6.0)
    second.learn(Succeeded("alice", "192.0.2.1", 3.0), 6.0)
    assert second.accounts.clear("alice") == 2, "5.0 and 6.0 were kept"
    second.learn(Seen("account", "alice", (7.0, 8.0, 9.0)), 9.0)
    second.learn(Unlocked("account", "alice", 8.5), 9.0)
    assert second.admit("alice", "192.0.2.7", 9.0) is None, "7 and 8 unlocked, 9 left"


def test_names_are_counted_under_their_keys() -> None:
    sent: list[News] = []
    throttle = LoginThrottle(
        per_account=3, per_address=3, window=60, news=NewsBus(sent.append),
        keys=lambda table, name: f"{table[:2]}-{len(name)}",
    )  # fmt: skip
    assert throttle.admit("alice", "2001:db8::1", 1.0) is None
    throttle.failed("alice", "2001:db8::1", 1.0)
    assert sent == [Failed("ac-5", "ad-13", 1.0)], "the /64 2001:db8::/64, keyed"
    assert throttle.unlock("account", "ac-5") == 1
    assert throttle.unlock("address", throttle.key("address", "2001:db8::2")) == 1


class Store:
    """The shared store as the throttle asks it: each question kept, answered by the test."""

    def __init__(self) -> None:
        self.questions: list[tuple[list[tuple[str, str]], Deferred[list[Seen]]]] = []

    def ask(self, pairs: list[tuple[str, str]]) -> Deferred[list[Seen]]:
        answer: Deferred[list[Seen]] = Deferred()
        self.questions.append((pairs, answer))
        return answer


def asking(store: Store) -> LoginThrottle:
    """A throttle whose first sight of a key asks ``store`` (Redis, or the parent)."""
    return LoginThrottle(per_account=3, per_address=100, window=60, news=NewsBus(lookup=store.ask))


def test_a_key_is_asked_about_once_before_its_first_check_and_again_after_a_rejoin() -> None:
    store = Store()
    throttle = asking(store)
    first = throttle.consult("alice", "192.0.2.1", 10.0)
    burst = throttle.consult("alice", "192.0.2.1", 10.0)
    assert first is not None and burst is not None, "a burst waits for the same answer"
    assert [pairs for pairs, _ in store.questions] == [
        [("account", "alice"), ("address", "192.0.2.1")]
    ]
    store.questions[0][1].callback([Seen("account", "alice", (1.0, 2.0, 3.0))])
    assert first.called and burst.called
    assert throttle.consult("alice", "192.0.2.1", 10.0) is None, "asked once"
    refusal = throttle.admit("alice", "192.0.2.1", 10.0)
    assert refusal is not None and refusal.reason == "account"

    other = throttle.consult("bob", "192.0.2.1", 10.0)
    assert other is not None and store.questions[-1][0] == [("account", "bob")]
    store.questions[-1][1].callback([])
    assert throttle.consult("bob", "192.0.2.9", 10.0) is not None, "a new address is asked"

    throttle.rejoined()
    assert throttle.consult("alice", "192.0.2.1", 10.0) is not None, "news may have been missed"


def test_a_client_that_leaves_while_the_store_is_asked_breaks_nothing() -> None:
    store = Store()
    throttle = asking(store)
    leaving = throttle.consult("alice", "192.0.2.1", 10.0)
    staying = throttle.consult("alice", "192.0.2.1", 10.0)
    assert leaving is not None and staying is not None
    leaving.addErrback(lambda failure: failure.trap(CancelledError))
    leaving.cancel()
    store.questions[0][1].callback([])
    assert staying.called
    assert throttle.admit("alice", "192.0.2.1", 10.0) is None, "nothing was held for it"


def test_without_a_shared_store_nothing_is_asked() -> None:
    throttle = LoginThrottle(per_account=3, per_address=100, window=60)
    assert throttle.consult("alice", "192.0.2.1", 10.0) is None


def test_a_keyed_throttle_knows_where_an_account_logged_in_by_its_names() -> None:
    """Logins asks with names (for the queue's places kept for known logins); the table holds
    keys."""
    throttle = LoginThrottle(
        per_account=3, per_address=3, window=60, keys=lambda table, name: f"{table}:{name}!"
    )
    assert throttle.admit("alice", "2001:db8::1", 1.0) is None
    throttle.succeeded("alice", "2001:db8::1", 1.0)
    assert throttle.knows("alice", "2001:db8::2", 2.0), "its /64"
    assert not throttle.knows("bob", "2001:db8::1", 2.0)
    assert not throttle.known.knows("alice", "2001:db8::/64", 2.0), "the table holds keys"
