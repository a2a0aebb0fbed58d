"""The directory authenticator alone, over an in-memory directory client (the real client
against slapd is covered by tests/login/ldap/test_directory*.py): which names it answers, the
identity it makes, a directory that cannot answer, the cache, and its refresh tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from policies import NOW, holder_in
from support import settled, write_key_pair
from twisted.internet.defer import ensureDeferred

from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import (
    DIRECTORY,
    OPEN_GATE,
    BackendUnavailable,
    EntryGate,
    Login,
    UnfitName,
)
from tokend.login.ldap.accounts import DirectoryAccounts
from tokend.login.ldap.client import DirectoryAccount
from tokend.login.ldap.connections import DirectoryUnavailable
from tokend.login.ldap.entries import EntryState
from tokend.login.refresh_tokens import InvalidRefreshToken, RefreshTokens
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import DIRECTORY_GROUPS
from tokend.scope import ResourceScope
from tokend.signing.keys import load_signing_key

DN = "uid=mozart,ou=people,dc=example,dc=com"
COMPOSERS = "cn=composers,ou=groups,dc=example,dc=com"
STATE = EntryState(stable_id="e-1", password_changed="20270101000000Z", created="20260101000000Z")


class InMemoryDirectory:
    """The directory client's two questions, answered from a dict: name -> (password,
    account); ``down`` makes it fail as an unreachable server does."""

    def __init__(self) -> None:
        self.accounts = {"mozart": (b"right", DirectoryAccount(DN, frozenset({COMPOSERS}), STATE))}
        self.down = False
        self.asked: list[str] = []
        self.gated: list[str] = []

    async def authenticate(
        self, account: str, password: bytes, gate: EntryGate = OPEN_GATE
    ) -> DirectoryAccount | None:
        self.asked.append(account)
        if self.down:
            raise DirectoryUnavailable("no server answered")
        known = self.accounts.get(account)
        if known is None:
            return None
        self.gated.append(known[1].dn)
        await gate.admit(known[1].dn)
        return known[1] if known[0] == password else None

    async def lookup(self, account: str) -> DirectoryAccount | None:
        self.asked.append(account)
        if self.down:
            raise DirectoryUnavailable("no server answered")
        known = self.accounts.get(account)
        return None if known is None else known[1]


def accounts_in(tmp_path: Path) -> tuple[DirectoryAccounts, InMemoryDirectory, PolicyHolder]:
    holder = holder_in(
        tmp_path,
        {"bach": ("pw", {})},
        groups={"composers": {"ldap_groups": [COMPOSERS], "repositories": {"music/*": ["pull"]}}},
    )
    directory = InMemoryDirectory()
    return accounts_over(directory, holder, cache_ttl=60, retry_after=2.5), directory, holder


def accounts_over(
    directory: InMemoryDirectory, holder: PolicyHolder, cache_ttl: int, retry_after: float
) -> DirectoryAccounts:
    return DirectoryAccounts(
        directory,  # type: ignore[arg-type]
        lambda: holder.current,
        CredentialCache(ttl=cache_ttl),
        lambda: NOW,
        retry_after=retry_after,
    )


def logged_in(accounts: DirectoryAccounts, account: str, password: bytes) -> Any:
    return settled(ensureDeferred(accounts.authenticate(UsernamePassword(account, password))))


def test_it_answers_the_names_users_json_does_not_decide(tmp_path: Path) -> None:
    accounts, _, holder = accounts_in(tmp_path)
    policy = holder.current
    assert accounts.answers(UsernamePassword("Mozart", b"x"), policy) == UsernamePassword(
        "mozart", b"x"
    )
    assert accounts.answers(UsernamePassword("BACH", b"x"), policy) is None
    with pytest.raises(UnfitName):
        accounts.answers(UsernamePassword("\N{FULLWIDTH LATIN SMALL LETTER M}ozart", b"x"), policy)


def test_a_login_is_a_group_members_identity_bound_to_the_entry(tmp_path: Path) -> None:
    accounts, directory, _ = accounts_in(tmp_path)
    login = logged_in(accounts, "mozart", b"right")
    identity = login.identity
    assert (identity.account, identity.source, identity.entry) == ("mozart", DIRECTORY, DN)
    assert identity.rights_from == DIRECTORY_GROUPS
    assert identity.directory_groups == frozenset({COMPOSERS})
    assert identity.binding == STATE.binding(DN)
    assert directory.gated == [DN], "the door's gate was asked about the entry"
    policy = login.policy
    scope = ResourceScope("repository", "music/requiem", ("pull", "push"))
    assert policy.grant("mozart", scope, policy.rights(identity)) == ("pull",)
    assert logged_in(accounts, "mozart", b"wrong") is None


def test_a_directory_that_cannot_answer_asks_the_client_to_come_back(tmp_path: Path) -> None:
    accounts, directory, _ = accounts_in(tmp_path)
    directory.down = True
    with pytest.raises(BackendUnavailable) as refused:
        logged_in(accounts, "mozart", b"right")
    assert refused.value.retry_after == 3


def test_a_login_is_remembered_for_the_same_password(tmp_path: Path) -> None:
    accounts, directory, holder = accounts_in(tmp_path)
    right = UsernamePassword("mozart", b"right")
    assert accounts.at_once(right, holder.current, NOW) is None
    first = logged_in(accounts, "mozart", b"right")
    hit = accounts.at_once(right, holder.current, NOW)
    assert isinstance(hit, Login) and hit.identity == first.identity
    assert accounts.at_once(UsernamePassword("mozart", b"wrong"), holder.current, NOW) is None
    assert directory.asked == ["mozart"]


def test_it_vouches_for_a_refresh_token_while_the_entry_is_unchanged(tmp_path: Path) -> None:
    accounts, directory, holder = accounts_in(tmp_path / "config")
    tokens = RefreshTokens(load_signing_key(*write_key_pair(tmp_path)), "tokend-test")
    policy = holder.current
    token = tokens.issue("mozart", DIRECTORY, STATE.binding(DN), NOW - 60)
    claims = tokens.read(token, NOW)
    assert accounts.vouch_at_once(claims, tokens, policy) is None, "the directory is asked"
    login = settled(ensureDeferred(accounts.vouch(claims, tokens, policy)))
    assert login.identity.entry == DN

    moved = DirectoryAccount(DN, frozenset(), EntryState(stable_id="e-2", created="20270101Z"))
    directory.accounts["mozart"] = (b"right", moved)
    fresh = accounts_over(directory, holder, cache_ttl=0, retry_after=1)
    with pytest.raises(InvalidRefreshToken, match="changed"):
        settled(ensureDeferred(fresh.vouch(claims, tokens, policy)))
    del directory.accounts["mozart"]
    with pytest.raises(InvalidRefreshToken, match="no active account"):
        settled(ensureDeferred(fresh.vouch(claims, tokens, policy)))


def test_it_no_longer_vouches_for_a_name_users_json_now_holds(tmp_path: Path) -> None:
    accounts, _, holder = accounts_in(tmp_path / "config")
    tokens = RefreshTokens(load_signing_key(*write_key_pair(tmp_path)), "tokend-test")
    claims = tokens.read(tokens.issue("bach", DIRECTORY, b"x", NOW), NOW)
    with pytest.raises(InvalidRefreshToken, match=r"now in users\.json"):
        accounts.vouch_at_once(claims, tokens, holder.current)
    odd = tokens.read(tokens.issue("Mozart ", DIRECTORY, b"x", NOW), NOW)
    with pytest.raises(InvalidRefreshToken, match="not a directory name"):
        accounts.vouch_at_once(odd, tokens, holder.current)
