"""Locked, disabled, reset and re-created directory accounts, against a real slapd with the
password policy overlay (ppolicy) loaded: refresh tokens follow the entry, not only its DN;
and what ``check-config`` says about the directory's lockout policy and the active filter.

The module's slapd is its own (tests/ldap_server.py, ``ppolicy=True``); each test adds the
people it changes, so the tests do not depend on one another.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from ldap_server import (
    PASSWORD,
    POLICY,
    POLICY_INTERVAL,
    POLICY_MAX_FAILURE,
    Slapd,
    dn,
    start_slapd,
)
from realms import Realm
from support import write_policy
from test_cli_directory import ldap_options, tool
from test_directory import config_for
from test_directory_logins import directory_realm, get, granted, refresh
from twisted.internet import reactor

from tokend.login.identity import DIRECTORY
from tokend.login.ldap.client import Directory
from tokend.login.ldap.entries import legacy_binding, moment
from tokend.login.ldap.report import DirectoryReport

pytestmark = pytest.mark.filterwarnings("ignore:'parseString' deprecated")


@pytest.fixture(scope="module")
def policed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = start_slapd(tmp_path_factory.mktemp("ppolicy"), ppolicy=True)
    try:
        yield server
    finally:
        server.stop()


def add_person(slapd: Slapd, uid: str, password: str = PASSWORD) -> None:
    slapd.modify(
        f"dn: {dn(uid)}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n"
        f"sn: {uid}\nuserPassword: {password}\n"
    )


def remove_person(slapd: Slapd, uid: str) -> None:
    slapd.modify(f"dn: {dn(uid)}\nchangetype: delete\n")


def replace(slapd: Slapd, uid: str, attribute: str, value: str | None) -> None:
    change = f"replace: {attribute}\n{attribute}: {value}\n" if value else f"delete: {attribute}\n"
    slapd.modify(f"dn: {dn(uid)}\nchangetype: modify\n{change}")


def wait_for_the_second_after(stamp: str) -> None:
    """Directory time stamps have whole seconds: wait (on the clock, with a deadline) until
    the second after ``stamp`` has begun, so that a change now gets a later stamp."""
    second = moment(stamp)
    assert second is not None, stamp
    deadline = time.monotonic() + 5
    while time.time() < second + 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    write_policy(tmp_path / "config", {"bach": ("pw", {"bach/*": ["pull"]})})
    return tmp_path / "config"


@pytest.fixture
def realm(tmp_path: Path, policed: Slapd) -> Iterator[Realm]:
    """No credential cache: every refresh asks the directory (the cache's ttl is the delay
    documented for changes in the directory)."""
    made = directory_realm(tmp_path, policed, cache_ttl=0)
    yield made
    made.close()


async def login(realm: Realm, uid: str, password: str = PASSWORD) -> str:
    status, _, body = await get(realm, uid, password=password, scope="lobby/a:pull")
    assert status == 200, body
    assert granted(realm, body)[0] == uid
    token: str = body["refresh_token"]
    return token


async def refused(realm: Realm, token: str) -> str:
    status, _, body = await refresh(realm, token, "lobby/a:pull")
    assert status == 400, body
    assert body["error"] == "invalid_grant"
    description: str = body["error_description"]
    return description


async def refreshes(realm: Realm, token: str, uid: str) -> None:
    status, _, body = await refresh(realm, token, "lobby/a:pull")
    assert status == 200, body
    assert granted(realm, body) == (
        uid,
        [{"type": "repository", "name": "lobby/a", "actions": ["pull"]}],
    )


@pytest_twisted.ensureDeferred
async def test_a_locked_account_neither_refreshes_nor_logs_in(realm: Realm, policed: Slapd) -> None:
    add_person(policed, "haydn")
    try:
        token = await login(realm, "haydn")
        await refreshes(realm, token, "haydn")
        replace(policed, "haydn", "pwdAccountLockedTime", "000001010000Z")  # as the root DN
        assert "no active account in the directory" in await refused(realm, token)
        binds = policed.log_text().count('BIND dn="uid=haydn')
        status, _, body = await get(realm, "haydn", scope="lobby/a:pull")
        assert status == 401, body
        assert policed.log_text().count('BIND dn="uid=haydn') == binds, "refused before a bind"
        replace(policed, "haydn", "pwdAccountLockedTime", None)
        await refreshes(realm, token, "haydn")  # the lock, not the token, was the reason
    finally:
        remove_person(policed, "haydn")


@pytest_twisted.ensureDeferred
async def test_a_reset_password_ends_old_refresh_tokens(realm: Realm, policed: Slapd) -> None:
    add_person(policed, "handel")
    try:
        token = await login(realm, "handel")
        changed = policed.attribute(dn("handel"), "pwdChangedTime")  # None: not set by an add
        if changed is not None:
            wait_for_the_second_after(changed)
        policed.set_password(dn("handel"), "a new password")
        assert policed.attribute(dn("handel"), "pwdChangedTime") not in (None, changed)
        assert "the entry or its password changed" in await refused(realm, token)
        new_token = await login(realm, "handel", "a new password")
        await refreshes(realm, new_token, "handel")
    finally:
        remove_person(policed, "handel")


@pytest_twisted.ensureDeferred
async def test_an_entry_added_again_under_the_same_dn_ends_old_tokens(
    realm: Realm, policed: Slapd
) -> None:
    add_person(policed, "telemann")
    try:
        token = await login(realm, "telemann")
        uuid = policed.attribute(dn("telemann"), "entryUUID")
        remove_person(policed, "telemann")
        add_person(policed, "telemann")  # same DN, same password, another person
        assert policed.attribute(dn("telemann"), "entryUUID") != uuid
        assert "the entry or its password changed" in await refused(realm, token)
    finally:
        remove_person(policed, "telemann")


@pytest_twisted.ensureDeferred
async def test_the_active_filter_applies_to_logins_and_refreshes(
    tmp_path: Path, policed: Slapd
) -> None:
    add_person(policed, "gluck")
    made = directory_realm(tmp_path, policed, cache_ttl=0, active_filter="(!(description=retired))")
    try:
        token = await login(made, "gluck")
        replace(policed, "gluck", "description", "retired")
        status, _, body = await get(made, "gluck", scope="lobby/a:pull")
        assert status == 401, body
        await refused(made, token)
        replace(policed, "gluck", "description", None)
        await refreshes(made, token, "gluck")
    finally:
        made.close()
        remove_person(policed, "gluck")


@pytest_twisted.ensureDeferred
async def test_tokens_bound_to_the_dn_alone_last_until_the_entry_changes(
    realm: Realm, policed: Slapd
) -> None:
    """Refresh tokens issued before this version are bound to the DN alone: honoured while
    the entry is the one that existed, with the password it had, when they were issued."""
    add_person(policed, "salieri")
    try:
        stamp = policed.attribute(dn("salieri"), "createTimestamp") or ""
        created = moment(stamp)
        assert created is not None, stamp
        binding = legacy_binding(dn("salieri"))
        issue = realm.refresh_tokens.issue
        old = issue("salieri", DIRECTORY, binding, created + 1)
        before_the_entry = issue("salieri", DIRECTORY, binding, created - 60)
        await refreshes(realm, old, "salieri")
        await refused(realm, before_the_entry)  # the DN's former holder, as far as we know
        wait_for_the_second_after(stamp)  # the new password's stamp: the token's second or later
        policed.set_password(dn("salieri"), "a new password")
        assert "the entry or its password changed" in await refused(realm, old)
    finally:
        remove_person(policed, "salieri")


def test_check_config_warns_when_tokends_limit_lets_the_directory_lock_people(
    policed: Slapd, config_dir: Path
) -> None:
    code, out, err = tool("check-config", "--config-dir", str(config_dir), *ldap_options(policed))
    assert (code, err) == (0, ""), err
    windows = POLICY_INTERVAL // 300 + 1  # tokend's default window is 300 s, its limit 10
    assert (
        f"warning: directory: the password policy {POLICY} locks an account after "
        f"{POLICY_MAX_FAILURE} failed binds within {POLICY_INTERVAL} s, and tokend lets "
        f"{10 * windows} failures through in that time: an attacker can lock a person out of "
        "every service using the directory; set --max-failures-per-account to "
        f"{(POLICY_MAX_FAILURE - 1) // windows} or less, or --failure-window above "
        f"{POLICY_INTERVAL} s with --max-failures-per-account below {POLICY_MAX_FAILURE}"
    ) in out


async def report(slapd: Slapd, **overrides: Any) -> DirectoryReport:
    """What check-config's directory lines come from, asked in this process."""
    directory = Directory(config_for(slapd, **overrides), reactor)
    try:
        return await directory.check()
    finally:
        directory.close()


@pytest_twisted.ensureDeferred
async def test_a_limit_below_the_lockout_policy_is_reported_as_such(policed: Slapd) -> None:
    lines = (await report(policed)).lines(1, 300)
    assert not [line for line in lines if line.startswith("warning")], lines
    assert (
        f"directory: the password policy {POLICY} locks an account after {POLICY_MAX_FAILURE} "
        "failed binds; tokend's --max-failures-per-account 1 refuses first"
    ) in lines


@pytest.mark.parametrize("ppolicy", [False, True])
@pytest_twisted.ensureDeferred
async def test_an_active_filter_on_an_attribute_the_directory_does_not_know_matches_nobody(
    slapd: Slapd, policed: Slapd, ppolicy: bool
) -> None:
    """Why --ldap-active-filter has no default: (!(pwdAccountLockedTime=*)) matches every
    account where ppolicy is loaded, and none where its schema is not (an unknown attribute
    type is Undefined, and NOT Undefined is Undefined)."""
    server = policed if ppolicy else slapd
    found = await report(server, active_filter="(!(pwdAccountLockedTime=*))")
    assert found.accounts > 0
    assert found.active == (found.accounts if ppolicy else 0)
    lines = found.lines(10, 300)
    assert (
        f"directory: {found.active} of them match the active filter (!(pwdAccountLockedTime=*))"
    ) in lines
    assert any("matches no account, so nobody can log in" in line for line in lines) is not ppolicy
