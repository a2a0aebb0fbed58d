"""Debouncing and coalescing, on a fake clock and with hand-fired work: no threads, no files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import write_policy
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from tokend.holder import PolicyHolder
from tokend.policy_files import load_policy
from tokend.reload import PolicyReloader
from tokend.watcher import MAX_DELAY_SECONDS, PolicyWatchService, touches_policy


def test_only_policy_files_and_the_configmap_link_matter() -> None:
    assert touches_policy(FileModifiedEvent("/c/users.json"))
    assert touches_policy(FileClosedEvent("/c/repositories.json"))
    assert touches_policy(FileMovedEvent("/c/.users.json.tmp", "/c/users.json"))
    assert touches_policy(FileMovedEvent("/c/..data_tmp", "/c/..data"))
    assert touches_policy(FileCreatedEvent("/c/users.json"))
    assert touches_policy(FileClosedEvent("/c/groups.json"))
    assert not touches_policy(FileOpenedEvent("/c/users.json"))
    assert not touches_policy(FileModifiedEvent("/c/.users.json.swp"))
    assert not touches_policy(FileCreatedEvent("/c/notes.txt"))
    assert not touches_policy(DirModifiedEvent("/c"))


def watch(clock: Clock, calls: list[str]) -> PolicyWatchService:
    return PolicyWatchService(Path("/nonexistent"), calls.append, clock, debounce=0.1)


def test_a_burst_of_events_gives_one_reload_after_a_quiet_period() -> None:
    clock, calls = Clock(), []
    watcher = watch(clock, calls)
    for _ in range(5):
        watcher.changed("modified")
        clock.advance(0.05)
    assert calls == []
    watcher.changed("moved")
    clock.advance(0.099)
    assert calls == []
    clock.advance(0.002)
    assert calls == ["modified, moved"]
    clock.advance(10)
    assert calls == ["modified, moved"]


def test_edits_that_never_pause_still_reload_within_the_maximum_delay() -> None:
    clock, calls = Clock(), []
    watcher = watch(clock, calls)
    elapsed = 0.0
    while not calls:
        watcher.changed("modified")
        clock.advance(0.05)
        elapsed += 0.05
    assert elapsed <= MAX_DELAY_SECONDS + 0.1


class HandFiredWorkers:
    """Runs nothing until the test says so, to hold a load 'in flight'."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def run(self, function: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((d, function, args))
        return d

    def finish_one(self) -> None:
        d, function, args = self.pending.pop(0)
        d.callback(function(*args))


def test_triggers_during_a_load_coalesce_into_one_more_load(tmp_path: Path) -> None:
    write_policy(tmp_path, {"a": ("pw", {"*": ["pull"]})})
    holder = PolicyHolder(load_policy(tmp_path).policy, 0)
    workers = HandFiredWorkers()
    reloader = PolicyReloader(tmp_path, holder, Clock(), workers)

    first = reloader.reload("modified")
    second = reloader.reload("modified")
    third = reloader.reload("SIGHUP")
    assert len(workers.pending) == 1
    fired: list[str] = []
    first.addCallback(lambda _: fired.append("first"))
    second.addCallback(lambda _: fired.append("second"))
    third.addCallback(lambda _: fired.append("third"))

    workers.finish_one()
    assert fired == ["first"]
    assert holder.generation == 2
    assert len(workers.pending) == 1, "one more load for the triggers that came meanwhile"
    workers.finish_one()
    assert fired == ["first", "second", "third"]
    assert holder.generation == 3
    assert workers.pending == []

    reloader.reload("modified")
    assert len(workers.pending) == 1
