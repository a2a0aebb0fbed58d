"""Debouncing and coalescing, on a fake clock and with hand-fired work: no threads, no files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from realms import HandFiredWorkers
from support import write_policy
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from watchdog.events import (
    DirDeletedEvent,
    DirModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.reload import PolicyReloader
from tokend.policy.watcher import (
    MAX_DELAY_SECONDS,
    MAX_LINKS,
    WATCHED_NAMES,
    PolicyWatchService,
    Resolution,
    resolve,
    touches,
    watch_plan,
)
from tokend.threads import InlineRunner


def test_only_policy_files_and_the_configmap_link_matter() -> None:
    names = WATCHED_NAMES
    assert touches(FileModifiedEvent("/c/users.json"), "/c", names)
    assert touches(FileClosedEvent("/c/repositories.json"), "/c", names)
    assert touches(FileMovedEvent("/c/.users.json.tmp", "/c/users.json"), "/c", names)
    assert touches(FileMovedEvent("/c/..data_tmp", "/c/..data"), "/c", names)
    assert touches(FileCreatedEvent("/c/users.json"), "/c", names)
    assert touches(FileClosedEvent("/c/groups.json"), "/c", names)
    assert not touches(FileOpenedEvent("/c/users.json"), "/c", names)
    assert not touches(FileModifiedEvent("/c/.users.json.swp"), "/c", names)
    assert not touches(FileCreatedEvent("/c/notes.txt"), "/c", names)
    assert not touches(DirModifiedEvent("/c"), "/c", names)


def test_outside_the_config_directory_only_the_chain_s_own_names_matter() -> None:
    names = frozenset({"tokend-users"})
    assert touches(FileModifiedEvent("/etc/secrets/tokend-users"), "/etc/secrets", names)
    assert touches(
        FileMovedEvent("/etc/secrets/.tmp", "/etc/secrets/tokend-users"), "/etc/secrets", names
    )
    assert not touches(FileModifiedEvent("/etc/secrets/users.json"), "/etc/secrets", names)
    assert not touches(FileModifiedEvent("/etc/tokend-users"), "/etc/secrets", names)
    assert touches(DirDeletedEvent("/etc/secrets"), "/etc/secrets", names)
    assert not touches(DirModifiedEvent("/etc/secrets"), "/etc/secrets", names)


def test_the_plan_follows_every_link_to_where_the_files_are(tmp_path: Path) -> None:
    """users.json -> ../shared/users.json -> /abs/vault/current/u.json, current -> v1."""
    config, shared, vault = tmp_path / "config", tmp_path / "shared", tmp_path / "vault"
    write_policy(config, {"a": ("pw", {"*": ["pull"]})})
    (vault / "v1").mkdir(parents=True)
    os.replace(config / "users.json", vault / "v1" / "u.json")
    (vault / "current").symlink_to("v1")
    shared.mkdir()
    (shared / "users.json").symlink_to(vault / "current" / "u.json")
    (config / "users.json").symlink_to("../shared/users.json")

    resolution = resolve(config / "users.json")
    assert resolution.links == (
        (str(config), "users.json"),
        (str(shared), "users.json"),
        (str(vault), "current"),
    )
    assert resolution.end == (str(vault / "v1"), "u.json") and resolution.exists

    plan = watch_plan(config)
    assert plan == {
        str(config): WATCHED_NAMES,
        str(shared): frozenset({"users.json"}),
        str(vault): frozenset({"current"}),
        str(vault / "v1"): frozenset({"u.json"}),
    }

    (vault / "v2").mkdir()
    os.replace(vault / "v1" / "u.json", vault / "v2" / "u.json")
    (vault / "next").symlink_to("v2")
    os.replace(vault / "next", vault / "current")
    assert str(vault / "v1") not in watch_plan(config)
    assert watch_plan(config)[str(vault / "v2")] == frozenset({"u.json"})


def test_a_missing_target_is_watched_from_the_nearest_directory_that_exists(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config"
    write_policy(config, {"a": ("pw", {"*": ["pull"]})})
    (config / "users.json").unlink()
    (config / "users.json").symlink_to(tmp_path / "gone" / "deeper" / "users.json")
    resolution = resolve(config / "users.json")
    assert resolution == Resolution(
        ((str(config), "users.json"),), (str(tmp_path), "gone"), exists=False
    )
    assert watch_plan(config)[str(tmp_path)] == frozenset({"gone"})


def test_a_link_loop_ends_the_chain(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    resolution = resolve(tmp_path / "a")
    assert not resolution.exists
    assert len(resolution.links) > MAX_LINKS


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

    workers.fire_one()
    assert fired == ["first"]
    assert holder.generation == 2
    assert len(workers.pending) == 1, "one more load for the triggers that came meanwhile"
    workers.fire_one()
    assert fired == ["first", "second", "third"]
    assert holder.generation == 3
    assert workers.pending == []

    reloader.reload("modified")
    assert len(workers.pending) == 1


def test_a_good_reload_clears_the_failure_a_bad_one_left(tmp_path: Path) -> None:
    write_policy(tmp_path, {"a": ("pw", {"*": ["pull"]})})
    policy = load_policy(tmp_path).policy
    holder = PolicyHolder(policy, 0)
    assert holder.files_valid

    holder.record_failure("users.json: line 1 column 2: broken", 5)
    status = holder.status()
    assert (status.files_valid, status.failed_at, status.generation) == (False, 5, 1)
    assert not holder.files_valid

    holder.replace(policy, 7)
    status = holder.status()
    assert (status.files_valid, status.failed_at, status.last_error) == (True, None, None)
    assert (status.generation, status.loaded_at, holder.last_success_at) == (2, 7, 7)
    assert (status.reloads_ok, status.reloads_failed) == (1, 1)


def reload_line(tmp_path: Path, edit: Any) -> str:
    """The "policy reloaded" line of one reload after ``edit`` (run inline, no thread)."""
    holder = PolicyHolder(load_policy(tmp_path).policy, 0)
    reloader = PolicyReloader(tmp_path, holder, Clock(), InlineRunner())
    edit()
    with capturedLogs() as events:
        reloader.reload("SIGHUP")
    [line] = [formatEvent(e) for e in events if e["log_format"].startswith("policy reloaded (")]
    return line


def test_the_reload_line_names_each_file_that_changed(tmp_path: Path) -> None:
    write_policy(tmp_path, {"a": ("pw", {}), "b": ("pw", {"*": ["pull"]})}, {"repositories": []})
    users = json.loads((tmp_path / "users.json").read_text())
    users["a"]["groups"] = ["devs"]
    (tmp_path / "users.json").write_text(json.dumps(users))
    groups = {"devs": {"repositories": {"x": ["pull"]}}, "ops": {"repositories": {}}}
    (tmp_path / "groups.json").write_text(json.dumps(groups))

    def change_groups() -> None:
        groups["devs"]["repositories"]["x"] = ["pull", "push"]
        groups["qa"] = groups.pop("ops")
        (tmp_path / "groups.json").write_text(json.dumps(groups))

    assert reload_line(tmp_path, change_groups) == (
        "policy reloaded (SIGHUP): generation 2, 2 users; users.json unchanged; groups.json: "
        "added ['qa'], removed ['ops'], changed ['devs']; repositories.json unchanged"
    )

    def change_users_and_anonymous() -> None:
        users["c"] = users.pop("b")
        users["a"]["repositories"] = {"a/*": ["pull"]}
        (tmp_path / "users.json").write_text(json.dumps(users))
        (tmp_path / "repositories.json").write_text(json.dumps({"repositories": ["pub"]}))

    assert reload_line(tmp_path, change_users_and_anonymous) == (
        "policy reloaded (SIGHUP): generation 2, 2 users; users.json: added ['c'], removed "
        "['b'], changed ['a']; groups.json unchanged; repositories.json: anonymous rules changed"
    )
    assert reload_line(tmp_path, lambda: None) == (
        "policy reloaded (SIGHUP): generation 2, 2 users; users.json unchanged; groups.json "
        "unchanged; repositories.json unchanged"
    )
