"""Live reload with the real watchdog observer on real files, checked through real HTTP requests.

Each test edits the policy the way operators do and looks at what the token service answers
before and after; none sleeps for a fixed time to make an assertion true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import pytest_twisted
import treq
from realms import realm_api
from support import load_certificate, verify_jwt, write_key_pair, write_policy
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, capturedLogs
from twisted.web.server import Site

from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.reload import PolicyReloader
from tokend.policy.watcher import DEFAULT_DEBOUNCE_SECONDS, PolicyWatchService
from tokend.threads import ThreadPoolService

PULL = {"*": ["pull"]}
PUSH = {"*": ["pull", "push"]}
ANONYMOUS = {"repositories": ["pub"]}
SLOW_COST = 12
"""Slow enough that a reload fits inside one password check."""


class Live:
    """A token service on 127.0.0.1 whose policy follows the files in ``config``."""

    def __init__(
        self,
        tmp_path: Path,
        poll: bool = False,
        config: Path | None = None,
        debounce: float = DEFAULT_DEBOUNCE_SECONDS,
    ) -> None:
        self.config = config or tmp_path / "config"
        if config is None:
            write_policy(self.config, {"foo": ("foo", PULL), "bar": ("bar", PUSH)}, ANONYMOUS)
        key_path, cert_path = write_key_pair(tmp_path)
        self.certificate = load_certificate(cert_path)
        self.holder = PolicyHolder(load_policy(self.config).policy, reactor.seconds())
        self.bcrypt = ThreadPoolService(reactor, 2, "test-bcrypt")
        self.reload_pool = ThreadPoolService(reactor, 1, "test-reload")
        self.reloader = PolicyReloader(self.config, self.holder, reactor, self.reload_pool)
        self.watcher = PolicyWatchService(
            self.config, self.reloader.reload, reactor, poll=poll, debounce=debounce
        )
        self.api = realm_api(
            self.holder,
            (key_path, cert_path),
            clock=reactor,
            workers=self.bcrypt,
            issuer="iss",
            services=["svc"],
        ).api
        self.base = ""
        self._port: Any = None

    async def start(self) -> None:
        self.bcrypt.startService()
        self.reload_pool.startService()
        self.watcher.startService()
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        self._port = await endpoint.listen(Site(self.api.resource()))
        self.base = f"http://127.0.0.1:{self._port.getHost().port}"

    async def stop(self) -> None:
        self.watcher.stopService()
        await self._port.stopListening()
        self.bcrypt.stopService()
        self.reload_pool.stopService()

    async def request(self, user: str | None, password: str | None, scope: str) -> Any:
        auth = (user, password) if user is not None else None
        response = await treq.get(
            f"{self.base}/v2/token", params={"service": "svc", "scope": scope}, auth=auth
        )
        body = await response.json()
        if response.code != 200:
            return response.code
        _, claims = verify_jwt(body["token"], self.certificate)
        return claims["access"]

    async def actions(self, user: str | None, password: str | None, name: str = "x") -> Any:
        """The actions granted on repository ``name`` for pull,push, or the HTTP status."""
        access = await self.request(user, password, f"repository:{name}:pull,push")
        if isinstance(access, int):
            return access
        return access[0]["actions"] if access else []

    async def eventually(
        self, probe: Callable[[], Any], expected: Any, timeout: float = 10
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            value = await probe()
            if value == expected:
                return
            assert time.monotonic() < deadline, f"still {value!r}, expected {expected!r}"
            await deferLater(reactor, 0.02)

    async def reloaded_past(self, generation: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.holder.generation <= generation:
            assert time.monotonic() < deadline, "no reload happened"
            await deferLater(reactor, 0.02)

    async def failed_since(self, moment: float, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while (self.holder.failed_at or 0) < moment:
            assert time.monotonic() < deadline, "no failed reload was recorded"
            await deferLater(reactor, 0.02)


def users_document(config: Path, **rules: dict[str, list[str]]) -> dict[str, Any]:
    """users.json with foo's rules replaced, hashes kept."""
    document: dict[str, Any] = json.loads((config / "users.json").read_text())
    for name, user_rules in rules.items():
        document[name]["repositories"] = user_rules
    return document


async def live_service(
    tmp_path: Path,
    poll: bool = False,
    config: Path | None = None,
    debounce: float = DEFAULT_DEBOUNCE_SECONDS,
) -> Live:
    live = Live(tmp_path, poll=poll, config=config, debounce=debounce)
    await live.start()
    assert await live.actions("foo", "foo") == ["pull"]
    return live


def write_in_place(path: Path, document: Any) -> None:
    with open(path, "w") as f:
        json.dump(document, f)


def write_replace(path: Path, document: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document))
    os.replace(temporary, path)


def write_vim_style(path: Path, document: Any) -> None:
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    path.write_text(json.dumps(document))
    backup.unlink()


def write_sed_style(path: Path, document: Any) -> None:
    temporary = path.with_name("sedAb12Cd")
    temporary.write_text(json.dumps(document))
    os.rename(temporary, path)


EDITORS: dict[str, Callable[[Path, Any], None]] = {
    "in place": write_in_place,
    "temp then os.replace": write_replace,
    "vim": write_vim_style,
    "sed -i": write_sed_style,
}


@pytest_twisted.ensureDeferred
async def test_every_editing_style_is_picked_up(tmp_path: Path) -> None:
    live = await live_service(tmp_path)
    try:
        expected = ["pull"]
        for name, edit in EDITORS.items():
            expected = ["pull", "push"] if expected == ["pull"] else ["pull"]
            rules = PUSH if expected == ["pull", "push"] else PULL
            edit(live.config / "users.json", users_document(live.config, foo=rules))
            await live.eventually(lambda: live.actions("foo", "foo"), expected)
            assert live.holder.last_error is None, name
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_kubernetes_configmap_swap(tmp_path: Path) -> None:
    config = tmp_path / "config"
    first = config / "..2026_11_22_10_00_00.000000001"
    write_policy(first, {"foo": ("foo", PULL)}, ANONYMOUS)
    (config / "..data").symlink_to(first.name)
    for name in ("users.json", "repositories.json"):
        (config / name).symlink_to(f"..data/{name}")
    live = await live_service(tmp_path, config=config)
    try:
        assert await live.actions(None, None) == []
        second = config / "..2026_11_22_10_05_00.000000002"
        second.mkdir()
        document = users_document(first, foo=PUSH)
        (second / "users.json").write_text(json.dumps(document))
        (second / "repositories.json").write_text(json.dumps({"repositories": ["pub", "x"]}))
        (config / "..data_tmp").symlink_to(second.name)
        os.replace(config / "..data_tmp", config / "..data")
        shutil.rmtree(first)

        await live.eventually(lambda: live.actions("foo", "foo"), ["pull", "push"])
        assert await live.actions(None, None) == ["pull"]
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_a_broken_edit_keeps_the_old_policy_and_says_where(tmp_path: Path) -> None:
    live = await live_service(tmp_path)
    try:
        users = live.config / "users.json"
        good = users_document(live.config, foo=PUSH)
        started = time.time()
        with capturedLogs() as events:
            users.write_text(json.dumps(good, indent=2)[:-40])
            await live.failed_since(started)
        errors: list[LogEvent] = [e for e in events if e["log_level"].name == "error"]
        assert errors, "the failed reload was not logged"
        error = errors[-1]
        assert error["file"] == str(users)
        assert isinstance(error["line"], int) and isinstance(error["column"], int)
        assert error["why"]
        assert error["error"].startswith(f"{users}: line {error['line']} column")
        assert error["error"].endswith(error["why"])
        assert all(e["file"] == str(users) for e in errors)
        assert await live.actions("foo", "foo") == ["pull"]
        assert (await live.request(None, None, "repository:pub:pull"))[0]["actions"] == ["pull"]

        code, health = await get_json(f"{live.base}/healthz")
        assert (code, health) == (200, {"status": "degraded"})
        assert "users.json" in (live.holder.last_error or "")
        assert live.holder.failed_at is not None and not live.holder.files_valid

        write_replace(users, good)
        await live.eventually(lambda: live.actions("foo", "foo"), ["pull", "push"])
        code, health = await get_json(f"{live.base}/healthz?strict=1")
        assert (code, health) == (200, {"status": "ok"})
        assert live.holder.last_error is None and live.holder.failed_at is None
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_invalid_policy_semantics_are_refused_too(tmp_path: Path) -> None:
    live = await live_service(tmp_path)
    try:
        generation = live.holder.generation
        started = time.time()
        push_only = users_document(live.config, foo={"*": ["push"]})
        with capturedLogs() as events:
            write_replace(live.config / "users.json", push_only)
            await live.failed_since(started)
        errors = [e for e in events if e["log_level"].name == "error"]
        assert [(e["path"], e["why"]) for e in errors][-1:] == [
            ('foo.repositories["*"]', "push requires pull")
        ]
        assert "push requires pull" in str(live.holder.last_error)
        assert live.holder.generation == generation
        assert await live.actions("foo", "foo") == ["pull"]
    finally:
        await live.stop()


async def get_json(url: str) -> tuple[int, Any]:
    response = await treq.get(url)
    return response.code, await response.json()


@pytest_twisted.ensureDeferred
async def test_delete_then_recreate(tmp_path: Path) -> None:
    live = await live_service(tmp_path)
    try:
        users = live.config / "users.json"
        document = users_document(live.config, foo=PUSH)
        started = time.time()
        users.unlink()
        await live.failed_since(started)
        assert "file not found" in str(live.holder.last_error)
        assert await live.actions("foo", "foo") == ["pull"]

        users.write_text(json.dumps(document))
        await live.eventually(lambda: live.actions("foo", "foo"), ["pull", "push"])
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_what_the_watcher_cannot_see(tmp_path: Path) -> None:
    """An edit made before the watcher started makes no event: SIGHUP is what reloads it. The
    handler that was installed before is chained while the service runs and restored when it
    stops.
    """
    chained: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        chained.append(signum)

    original = signal.signal(signal.SIGHUP, previous)
    try:
        live = Live(tmp_path)
        write_in_place(live.config / "users.json", users_document(live.config, foo=PUSH))
        await live.start()
        try:
            generation = live.holder.generation
            assert await live.actions("foo", "foo") == ["pull"]

            os.kill(os.getpid(), signal.SIGHUP)
            await live.eventually(lambda: live.actions("foo", "foo"), ["pull", "push"])
            assert live.holder.generation == generation + 1
            assert chained == [signal.SIGHUP]
        finally:
            await live.stop()
        assert signal.getsignal(signal.SIGHUP) is previous
    finally:
        signal.signal(signal.SIGHUP, original)


def link_users_to(config: Path, target: Path, link: str | Path | None = None) -> None:
    """Make config/users.json a symlink to ``target`` (``link`` is the text the link holds),
    swapped in atomically as ``ln -sfn`` would not but deploy tools do."""
    temporary = config / ".users.json.link"
    temporary.symlink_to(link if link is not None else target)
    os.replace(temporary, config / "users.json")


def move_users_out(tmp_path: Path, directory: str, link: str | None = None) -> Path:
    """Move the live config's users.json to another directory and leave a symlink behind."""
    config = tmp_path / "config"
    write_policy(config, {"foo": ("foo", PULL), "bar": ("bar", PUSH)}, ANONYMOUS)
    target = tmp_path / directory / "users.json"
    target.parent.mkdir()
    os.replace(config / "users.json", target)
    link_users_to(config, target, link)
    return target


@pytest_twisted.ensureDeferred
async def test_a_link_to_another_directory_is_followed_and_retargeted(tmp_path: Path) -> None:
    """users.json -> secrets/users.json: edits there (in place, by rename-over) reload within
    the usual latency; once the link points to a third directory, that one is watched and the
    old target no longer is."""
    target = move_users_out(tmp_path, "secrets")
    live = await live_service(tmp_path, config=tmp_path / "config")
    try:
        assert str(target.parent) in live.watcher.watched()
        write_in_place(target, users_document(target.parent, foo=PUSH))
        await live.eventually(lambda: live.actions("foo", "foo"), ["pull", "push"], timeout=2)
        write_replace(target, users_document(target.parent, foo=PULL))
        await live.eventually(lambda: live.actions("foo", "foo"), ["pull"], timeout=2)

        third = tmp_path / "third" / "users.json"
        third.parent.mkdir()
        third.write_text(json.dumps(users_document(target.parent, foo={"*": ["pull", "delete"]})))
        link_users_to(live.config, third)
        delete = [{"type": "repository", "name": "x", "actions": ["delete"]}]
        await live.eventually(
            lambda: live.request("foo", "foo", "repository:x:delete"), delete, timeout=2
        )
        assert str(third.parent) in live.watcher.watched()
        assert str(target.parent) not in live.watcher.watched()

        write_replace(target, users_document(target.parent, foo={}))
        write_in_place(third, users_document(third.parent, foo=PUSH))
        await live.eventually(lambda: live.actions("foo", "foo"), ["pull", "push"], timeout=2)
        assert live.holder.last_error is None
    finally:
        await live.stop()
    assert live.watcher.watched() == []


@pytest_twisted.ensureDeferred
async def test_removing_a_user_from_a_relative_link_target_revokes_at_once(
    tmp_path: Path,
) -> None:
    target = move_users_out(tmp_path, "shared", link="../shared/users.json")
    live = await live_service(tmp_path, config=tmp_path / "config")
    try:
        assert await live.actions("bar", "bar") == ["pull", "push"]
        document = users_document(target.parent)
        del document["bar"]
        generation = live.holder.generation
        started = time.monotonic()
        write_replace(target, document)
        await live.reloaded_past(generation, timeout=2)
        assert time.monotonic() - started < 1
        assert await live.actions("bar", "bar") == 401
        assert await live.actions("foo", "foo") == ["pull"]
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_a_configmap_mounted_elsewhere_is_followed_across_swaps(tmp_path: Path) -> None:
    """config/users.json -> mount/users.json -> mount/..data/users.json, ..data swapped."""
    mount = tmp_path / "mount"
    first = mount / "..2026_11_22_10_00_00.000000001"
    write_policy(first, {"foo": ("foo", PULL)}, ANONYMOUS)
    (mount / "..data").symlink_to(first.name)
    (mount / "users.json").symlink_to("..data/users.json")
    config = tmp_path / "config"
    write_policy(config, {}, ANONYMOUS)
    link_users_to(config, mount / "users.json")
    live = await live_service(tmp_path, config=config)
    try:
        for serial, rules in enumerate((PUSH, PULL, PUSH), start=2):
            version = mount / f"..2026_11_22_10_00_0{serial}.00000000{serial}"
            version.mkdir()
            (version / "users.json").write_text(json.dumps(users_document(first, foo=rules)))
            (mount / "..data_tmp").symlink_to(version.name)
            os.replace(mount / "..data_tmp", mount / "..data")
            expected = rules["*"]
            await live.eventually(lambda: live.actions("foo", "foo"), expected, timeout=2)
            assert str(version) in live.watcher.watched()
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_polling_follows_a_link_to_another_directory(tmp_path: Path) -> None:
    target = move_users_out(tmp_path, "secrets")
    live = await live_service(tmp_path, poll=True, config=tmp_path / "config")
    try:
        write_replace(target, users_document(target.parent, foo=PUSH))
        await live.eventually(lambda: live.actions("foo", "foo"), ["pull", "push"])
        third = tmp_path / "third" / "users.json"
        third.parent.mkdir()
        third.write_text(json.dumps(users_document(target.parent, foo=PULL)))
        link_users_to(live.config, third)
        await live.eventually(lambda: live.actions("foo", "foo"), ["pull"])
        assert str(target.parent) not in live.watcher.watched()
        write_replace(third, users_document(third.parent, foo=PUSH))
        await live.eventually(lambda: live.actions("foo", "foo"), ["pull", "push"])
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_polling_observer(tmp_path: Path) -> None:
    live = await live_service(tmp_path, poll=True)
    try:
        write_replace(live.config / "users.json", users_document(live.config, foo=PUSH))
        await live.eventually(lambda: live.actions("foo", "foo"), ["pull", "push"])
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_removed_user_and_changed_password_take_effect_at_once(tmp_path: Path) -> None:
    live = await live_service(tmp_path)
    try:
        assert await live.actions("bar", "bar") == ["pull", "push"]
        rehashed = tmp_path / "rehash"
        write_policy(rehashed, {"foo": ("new-secret", PULL)})
        document = users_document(live.config)
        document["foo"]["pass_hash"] = json.loads((rehashed / "users.json").read_text())["foo"][
            "pass_hash"
        ]
        del document["bar"]
        generation = live.holder.generation
        write_replace(live.config / "users.json", document)
        await live.reloaded_past(generation)

        assert await live.actions("foo", "foo") == 401
        assert await live.actions("bar", "bar") == 401
        assert await live.actions("foo", "new-secret") == ["pull"]
    finally:
        await live.stop()


CLIENTS = 30
BOTH = "repository:a:pull,push repository:b:pull,push"


async def while_running(work: Deferred[None], ask: Callable[[], Any], minimum: int) -> list[Any]:
    """``CLIENTS`` clients asking back to back until ``work`` is done and ``minimum`` answers are
    in, so the requests overlap every edit ``work`` makes."""
    answers: list[Any] = []

    async def client() -> None:
        while not work.called or len(answers) < minimum:
            answers.append(await ask())

    await gatherResults([ensureDeferred(client()) for _ in range(CLIENTS)])
    await work
    return answers


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_see_one_policy_or_the_other(tmp_path: Path) -> None:
    """Hundreds of requests while users.json flips between two policies a hundred times.

    A short debounce, so that reloads land between the requests rather than after the burst.
    """
    live = await live_service(tmp_path, debounce=0.005)
    policy_a = users_document(live.config, foo={"a": ["pull"], "b": []})
    policy_b = users_document(live.config, foo={"a": [], "b": ["pull", "push"]})
    answer_a = [{"type": "repository", "name": "a", "actions": ["pull"]}]
    answer_b = [{"type": "repository", "name": "b", "actions": ["pull", "push"]}]
    users = live.config / "users.json"
    generations: set[int] = set()

    async def flip() -> None:
        for i in range(100):
            edit = write_in_place if i % 3 == 0 else write_replace
            edit(users, policy_b if i % 2 == 0 else policy_a)
            await deferLater(reactor, 0.02)

    async def ask() -> Any:
        answer = await live.request("foo", "foo", BOTH)
        generations.add(live.holder.generation)
        return answer

    try:
        write_replace(users, policy_a)
        await live.eventually(lambda: live.request("foo", "foo", BOTH), answer_a)
        answers = await while_running(ensureDeferred(flip()), ask, minimum=300)
    finally:
        await live.stop()

    assert len(answers) >= 300
    unexpected = [answer for answer in answers if answer not in (answer_a, answer_b)]
    assert not unexpected, unexpected[:3]
    assert answer_a in answers and answer_b in answers
    assert len(generations) > 10, "the requests did not overlap the reloads"


@pytest_twisted.ensureDeferred
async def test_configmap_swaps_change_both_files_together(tmp_path: Path) -> None:
    """A hundred ``..data`` swaps, each to a fresh directory (the old one deleted, as
    Kubernetes does), alternating two versions that differ in both files. No policy swapped in
    mixes users.json of one version with repositories.json of the other, no reload fails, and
    every token, for foo or anonymous, is one of the two versions' answers.
    """
    config = tmp_path / "config"
    texts: dict[str, tuple[str, str]] = {}
    for version, rules in (("a", {"a": ["pull"]}), ("b", {"b": ["pull", "push"]})):
        write_policy(tmp_path / version, {"foo": ("foo", rules)}, {"repositories": [version]})
        directory = tmp_path / version
        texts[version] = (
            (directory / "users.json").read_text(),
            (directory / "repositories.json").read_text(),
        )
    # As in a real ConfigMap, the password hash text stays the same across versions: only the
    # rights move. (A hash replaced during bcrypt: see test_a_password_checked_against_a_
    # replaced_hash_gains_no_new_rights.)
    same_hash = json.loads(texts["a"][0])["foo"]["pass_hash"]
    users_b = json.loads(texts["b"][0])
    users_b["foo"]["pass_hash"] = same_hash
    texts["b"] = (json.dumps(users_b), texts["b"][1])

    def publish(serial: int, version: str) -> Path:
        directory = config / f"..2026_11_22_10_00_{serial:02d}.{serial:09d}"
        directory.mkdir(parents=True)
        for name, text in zip(("users.json", "repositories.json"), texts[version], strict=True):
            (directory / name).write_text(text)
        (config / "..data_tmp").symlink_to(directory.name)
        os.replace(config / "..data_tmp", config / "..data")
        return directory

    current = publish(0, "a")
    for name in ("users.json", "repositories.json"):
        (config / name).symlink_to(f"..data/{name}")
    live = Live(tmp_path, config=config, debounce=0.005)
    applied: list[tuple[frozenset[str], frozenset[str]]] = []
    live.holder.on_replace(
        lambda old, new: applied.append(
            (frozenset(new.users["foo"].repositories), new.anonymous.repositories)
        )
    )
    await live.start()
    foo_answers = {
        "a": [{"type": "repository", "name": "a", "actions": ["pull"]}],
        "b": [{"type": "repository", "name": "b", "actions": ["pull", "push"]}],
    }
    anonymous_answers = {
        "a": [{"type": "repository", "name": "a", "actions": ["pull"]}],
        "b": [{"type": "repository", "name": "b", "actions": ["pull"]}],
    }

    async def swap() -> None:
        nonlocal current
        for serial in range(1, 101):
            previous, current = current, publish(serial, "b" if serial % 2 else "a")
            shutil.rmtree(previous)
            await deferLater(reactor, 0.02)

    asked = 0

    async def ask() -> Any:
        nonlocal asked
        asked += 1
        if asked % 2:
            return "foo", await live.request("foo", "foo", BOTH)
        return "anonymous", await live.request(None, None, "repository:a:pull repository:b:pull")

    try:
        assert await live.request("foo", "foo", BOTH) == foo_answers["a"]
        answers = await while_running(ensureDeferred(swap()), ask, minimum=300)
        await live.eventually(lambda: live.request("foo", "foo", BOTH), foo_answers["a"])
    finally:
        await live.stop()

    mixed = [(users, anonymous) for users, anonymous in applied if users != anonymous]
    assert not mixed, mixed[:3]
    assert len(applied) > 10
    assert live.holder.last_error is None
    expected = {"foo": foo_answers.values(), "anonymous": anonymous_answers.values()}
    unexpected = [(who, answer) for who, answer in answers if answer not in expected[who]]
    assert not unexpected, unexpected[:3]


@pytest_twisted.ensureDeferred
async def test_a_password_checked_against_a_replaced_hash_gains_no_new_rights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password changes (and the rights grow) while a login with the old one is in bcrypt:
    that login gets the old policy's answer or a refusal, never old password plus new rights."""
    config = tmp_path / "config"
    write_policy(config, {"foo": ("old", PULL)}, ANONYMOUS, cost=SLOW_COST)
    write_policy(tmp_path / "new", {"foo": ("new", PUSH)}, ANONYMOUS)
    new_users = json.loads((tmp_path / "new" / "users.json").read_text())
    live = Live(tmp_path, config=config)
    await live.start()
    try:
        assert await live.actions("foo", "old") == ["pull"]
        in_bcrypt: Deferred[None] = Deferred()
        run = live.bcrypt.run

        def noting_run(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
            if not in_bcrypt.called:
                in_bcrypt.callback(None)
            return run(function, *args)

        monkeypatch.setattr(live.bcrypt, "run", noting_run)
        generation = live.holder.generation
        login = ensureDeferred(live.actions("foo", "old"))
        await in_bcrypt
        write_replace(config / "users.json", new_users)
        await live.reloaded_past(generation)
        if login.called:
            pytest.skip("the login finished before the reload; bcrypt too fast here")

        assert await login in (["pull"], 401)
        assert await live.actions("foo", "old") == 401
        assert await live.actions("foo", "new") == ["pull", "push"]
    finally:
        await live.stop()
