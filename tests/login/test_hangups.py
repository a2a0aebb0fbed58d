"""A client that hangs up stops only its own waiting (Hardening III, items 2 and 5), in memory.

The bcrypt queue never hands its pool more calls than it has threads, whoever cancels what; the
door keeps a check's places until the check ends and counts its verdict as if the client had
stayed; the web logs a hang-up at info. Bcrypt calls are held by ``HandFiredWorkers`` until the
test fires them, so "still running" is a state the test holds, not a race.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from realms import NOW, USERS, HandFiredWorkers, Realm, throttle
from support import settled, write_policy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import Login, LoginError, LoginOverloaded, LoginThrottled
from tokend.login.in_flight import InFlight
from tokend.login.logins import Logins
from tokend.login.password_file import PasswordFile, UnknownNames
from tokend.login.passwords import PasswordChecker
from tokend.login.throttle import LoginThrottle
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.threads import BoundedThreadQueue, Overloaded, Stopped

HERE = "192.0.2.10"
ELSEWHERE = "198.51.100.5"


def failure_of(deferred: Deferred[Any]) -> BaseException:
    failures: list[Any] = []
    deferred.addErrback(failures.append)
    assert failures, "the Deferred has not failed"
    return failures[0].value


def square(n: int) -> int:
    return n * n


# -- the bcrypt queue -------------------------------------------------------------------------


def test_a_started_call_keeps_its_slot_after_its_waiter_is_cancelled() -> None:
    """The old queue let the thread's slot go at the cancel: the next call started while the
    first still ran, so every hang-up put one more bcrypt into the pool's unbounded queue."""
    pool = HandFiredWorkers()
    queue = BoundedThreadQueue(pool, limit=1, queue=1)
    first = queue.run(square, 3)
    first.cancel()
    assert isinstance(failure_of(first), CancelledError)
    assert queue.running == 1, "its thread still runs"
    second = queue.run(square, 4)
    assert (queue.running, queue.waiting, len(pool.pending)) == (1, 1, 1)
    assert isinstance(failure_of(queue.run(square, 5)), Overloaded), "the queue is full"
    pool.fire_all()
    assert settled(second) == 16
    assert (queue.running, queue.waiting) == (0, 0)


def test_the_pool_never_holds_more_calls_than_the_limit_whoever_hangs_up() -> None:
    pool = HandFiredWorkers()
    queue = BoundedThreadQueue(pool, limit=2, queue=8)
    for n in range(200):
        call = queue.run(square, n)
        call.addErrback(lambda _: None)
        call.cancel()
        assert len(pool.pending) <= 2
    assert pool.calls == 2, "cancelled before they started, the others never ran"


def test_a_waiting_call_that_is_cancelled_leaves_the_queue() -> None:
    pool = HandFiredWorkers()
    queue = BoundedThreadQueue(pool, limit=1, queue=2)
    running = queue.run(square, 2)
    waiting = queue.run(square, 3)
    assert queue.waiting == 1
    waiting.cancel()
    assert isinstance(failure_of(waiting), CancelledError)
    assert queue.waiting == 0
    pool.fire_all()
    assert settled(running) == 4
    assert pool.calls == 1, "the cancelled call never ran"


def test_stopping_fails_the_waiting_calls_at_once_and_lets_the_running_end() -> None:
    pool = HandFiredWorkers()
    queue = BoundedThreadQueue(pool, limit=1, queue=4)
    running = queue.run(square, 2)
    waiting = [queue.run(square, n) for n in range(3)]
    queue.stop()
    assert all(isinstance(failure_of(call), Stopped) for call in waiting)
    assert isinstance(failure_of(queue.run(square, 9)), Stopped)
    pool.fire_all()
    assert settled(running) == 4
    assert pool.calls == 1


# -- the door ---------------------------------------------------------------------------------


class Door:
    """Logins over users.json with a bcrypt queue whose calls the test fires by hand."""

    def __init__(
        self, tmp_path: Path, *, limit: int = 1, per_account: int = 10, in_flight: int = 0
    ) -> None:
        write_policy(tmp_path / "config", USERS)
        self.holder = PolicyHolder(load_policy(tmp_path / "config").policy, NOW)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.pool = HandFiredWorkers()
        self.queue = BoundedThreadQueue(self.pool, limit=limit, queue=16)
        passwords = PasswordChecker(self.queue)
        self.throttle = LoginThrottle(per_account=per_account, per_address=30, window=300)
        current: Callable[[], Any] = lambda: self.holder.current  # noqa: E731
        password_file = PasswordFile(current, passwords, CredentialCache(ttl=0), self.clock.seconds)
        self.logins = Logins(
            current=current,
            authenticators=[password_file, UnknownNames(password_file)],
            passwords=passwords,
            clock=self.clock.seconds,
            throttle=self.throttle,
            in_flight=InFlight(in_flight),
        )

    def abandoned(self, account: str, password: str, client: str = HERE) -> None:
        """A login whose client hangs up while its check waits for bcrypt."""
        waiting = self.logins.login(UsernamePassword(account, password.encode()), client)
        assert isinstance(waiting, Deferred)
        waiting.cancel()
        assert isinstance(failure_of(waiting), CancelledError)

    def login(self, account: str, password: str, client: str = HERE) -> object:
        """A login whose client waits: its Login, or the refusal."""
        try:
            answer = self.logins.login(UsernamePassword(account, password.encode()), client)
        except LoginError as e:
            return e
        if not isinstance(answer, Deferred):
            return answer
        self.pool.fire_all()
        results: list[Any] = []
        answer.addBoth(results.append)
        return results[0].value if isinstance(results[0], Failure) else results[0]


def test_an_abandoned_wrong_password_counts_as_a_failure(tmp_path: Path) -> None:
    door = Door(tmp_path, per_account=2)
    door.abandoned("bar", "guess1")
    door.abandoned("bar", "guess2")
    assert door.queue.running == 1 and door.queue.waiting == 1, "both checks still run"
    door.pool.fire_all()
    assert door.queue.running == 0
    refused = door.login("bar", "bar", ELSEWHERE)
    assert isinstance(refused, LoginThrottled) and refused.by == "account", refused


def test_an_abandoned_attempt_counts_while_it_is_checked(tmp_path: Path) -> None:
    """Pending, it counts against the limit: hang-ups cannot outrun the throttle."""
    door = Door(tmp_path, per_account=2, limit=2)
    door.abandoned("bar", "guess1")
    door.abandoned("bar", "guess2")
    refused = door.login("bar", "guess3", ELSEWHERE)
    assert isinstance(refused, LoginThrottled) and refused.by == "account", refused


def test_an_abandoned_right_password_counts_as_a_success(tmp_path: Path) -> None:
    door = Door(tmp_path, per_account=3)
    for n in range(2):
        assert not isinstance(door.login("bar", f"guess{n}", ELSEWHERE), Login)
    assert len(door.throttle.accounts) == 1
    door.abandoned("bar", "bar")
    door.pool.fire_all()
    assert len(door.throttle.accounts) == 0, "its failures are forgotten"
    assert door.throttle.known.knows("bar", HERE, NOW), "and its address is known"


def test_the_address_share_is_held_until_the_check_ends(tmp_path: Path) -> None:
    door = Door(tmp_path, in_flight=1)
    door.abandoned("bar", "guess")
    with pytest.raises(LoginOverloaded, match="from this address"):
        door.logins.login(UsernamePassword("foo", b"foo"), HERE)
    assert isinstance(door.login("foo", "foo", ELSEWHERE), Login), "another address gets in"
    door.pool.fire_all()
    assert isinstance(door.login("foo", "foo", HERE), Login), "the place came back"


# -- the web ----------------------------------------------------------------------------------


def test_a_hang_up_is_logged_at_info_and_the_check_counts(tmp_path: Path) -> None:
    pool = HandFiredWorkers()
    realm = Realm(
        tmp_path,
        workers=BoundedThreadQueue(pool, limit=1, queue=4),
        throttle=throttle(per_account=1),
    )
    events: list[LogEvent]
    with capturedLogs() as events:
        request = realm.start("bar", "wrong")
        request.addErrback(lambda _: None)  # the client's own view: it gave up
        realm.http.flush()
        assert len(pool.pending) == 1
        request.cancel()
        realm.http.flush()
        pool.fire_all()
        realm.http.flush()
    lines = [formatEvent(event) for event in events]
    assert [event["log_level"] for event in events] == [LogLevel.info], lines
    assert "the client left before its answer (account 'bar'" in lines[0]
    code, _, body = realm.get("bar", "bar")
    assert code == 429, body
