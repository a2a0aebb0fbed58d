"""A client that hangs up stops only its own waiting (Hardening III, item 2), in memory.

The bcrypt queue never hands its pool more calls than it has threads, whoever cancels what.
Bcrypt calls are held by ``HandFiredWorkers`` until the test fires them, so "still running" is
a state the test holds, not a race.
"""

from __future__ import annotations

from typing import Any

from support import settled
from test_hardening_web import HandFiredWorkers
from twisted.internet.defer import CancelledError, Deferred

from tokend.workers import BoundedWorkers, Overloaded, Stopped

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
    queue = BoundedWorkers(pool, limit=1, queue=1)
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
    queue = BoundedWorkers(pool, limit=2, queue=8)
    for n in range(200):
        call = queue.run(square, n)
        call.addErrback(lambda _: None)
        call.cancel()
        assert len(pool.pending) <= 2
    assert pool.calls == 2, "cancelled before they started, the others never ran"


def test_a_waiting_call_that_is_cancelled_leaves_the_queue() -> None:
    pool = HandFiredWorkers()
    queue = BoundedWorkers(pool, limit=1, queue=2)
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
    queue = BoundedWorkers(pool, limit=1, queue=4)
    running = queue.run(square, 2)
    waiting = [queue.run(square, n) for n in range(3)]
    queue.stop()
    assert all(isinstance(failure_of(call), Stopped) for call in waiting)
    assert isinstance(failure_of(queue.run(square, 9)), Stopped)
    pool.fire_all()
    assert settled(running) == 4
    assert pool.calls == 1
