"""The users.json authenticator alone, in memory: which names it answers, bcrypt against the
stored hash (real bcrypt, inline, at cost 4), the credential cache, and whether it still
vouches for a refresh token's account."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from policies import NOW, holder_in, policy_in
from realms import CountingWorkers
from support import hash_password, settled, write_key_pair
from twisted.internet.defer import Deferred, ensureDeferred

from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import USERS, Identity, Login
from tokend.login.password_file import PasswordFile, UnknownNames
from tokend.login.passwords import PasswordChecker
from tokend.login.refresh_tokens import InvalidRefreshToken, RefreshTokens
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.signing.keys import load_signing_key
from tokend.threads import InlineRunner

USERS_JSON = {"alice": ("alice-pw", {"alice/*": ["pull"]})}


def password_file(holder: PolicyHolder, workers: Any = None) -> PasswordFile:
    passwords = PasswordChecker(workers or InlineRunner())
    return PasswordFile(lambda: holder.current, passwords, CredentialCache(ttl=60), lambda: NOW)


def checked(file: PasswordFile | UnknownNames, account: str, password: bytes) -> Login | None:
    login: Login | None = settled(
        ensureDeferred(file.authenticate(UsernamePassword(account, password)))
    )
    return login


def test_it_answers_the_names_users_json_holds_as_typed(tmp_path: Path) -> None:
    holder = holder_in(tmp_path, USERS_JSON)
    file = password_file(holder)
    alice = UsernamePassword("alice", b"x")
    assert file.answers(alice, holder.current) == alice
    assert file.answers(UsernamePassword("Alice", b"x"), holder.current) is None
    assert UnknownNames(file).answers(UsernamePassword("Alice", b"x"), holder.current)


def test_the_right_password_logs_in_with_the_hash_it_matched(tmp_path: Path) -> None:
    holder = holder_in(tmp_path, USERS_JSON)
    login = checked(password_file(holder), "alice", b"alice-pw")
    assert login is not None and login.policy is holder.current
    stored = holder.current.users["alice"].pass_hash
    assert login.identity == Identity("alice", USERS, binding=stored)
    assert holder.current.rights(login.identity) is holder.current.users["alice"]


def test_a_wrong_password_or_an_unknown_name_costs_one_bcrypt(tmp_path: Path) -> None:
    holder = holder_in(tmp_path, USERS_JSON)
    workers = CountingWorkers()
    file = password_file(holder, workers)
    assert checked(file, "alice", b"wrong") is None
    assert checked(UnknownNames(file), "nobody", b"alice-pw") is None
    assert workers.calls == 2


def test_a_checked_password_is_answered_from_the_cache_until_the_hash_changes(
    tmp_path: Path,
) -> None:
    holder = holder_in(tmp_path, USERS_JSON)
    file = password_file(holder)
    right = UsernamePassword("alice", b"alice-pw")
    assert file.at_once(right, holder.current, NOW) is None
    assert checked(file, "alice", b"alice-pw") is not None
    hit = file.at_once(right, holder.current, NOW)
    assert hit is not None and hit.identity.account == "alice"
    assert file.at_once(UsernamePassword("alice", b"wrong"), holder.current, NOW) is None
    holder.replace(policy_in(tmp_path / "new", {"alice": ("new-pw", {})}), NOW)
    assert file.at_once(right, holder.current, NOW) is None


def test_a_hash_replaced_during_the_check_is_checked_again(tmp_path: Path) -> None:
    """An old password must never earn the new policy's rights."""
    holder = holder_in(tmp_path, USERS_JSON)
    new = policy_in(tmp_path / "new", {"alice": ("new-pw", {"alice/*": ["pull", "push"]})})

    class Reloading(CountingWorkers):
        def run(self, function: Any, *args: Any) -> Deferred[Any]:
            if self.calls == 0:
                holder.replace(new, NOW)
            return super().run(function, *args)

    workers = Reloading()
    assert checked(password_file(holder, workers), "alice", b"alice-pw") is None
    assert workers.calls == 2, "checked against the old hash, then the new one"


def test_it_vouches_for_a_refresh_token_while_hash_and_tokens_valid_after_allow(
    tmp_path: Path,
) -> None:
    tokens = RefreshTokens(load_signing_key(*write_key_pair(tmp_path)), "tokend-test")
    config = tmp_path / "config"
    holder = holder_in(config, USERS_JSON)
    file = password_file(holder)
    stored = holder.current.users["alice"].pass_hash
    token = tokens.issue("alice", USERS, stored, NOW - 60)
    login = file.vouch_at_once(tokens.read(token, NOW), tokens, holder.current)
    assert login is not None and login.identity == Identity("alice", USERS, binding=stored)

    users = json.loads((config / "users.json").read_text())
    users["alice"]["tokens_valid_after"] = "2027-01-15T08:00:00Z"  # NOW
    (config / "users.json").write_text(json.dumps(users))
    holder.replace(load_policy(config).policy, NOW)
    with pytest.raises(InvalidRefreshToken, match="tokens_valid_after"):
        file.vouch_at_once(tokens.read(token, NOW), tokens, holder.current)
    login = checked(file, "alice", b"alice-pw")
    assert login is not None and login.identity.tokens_valid_after == NOW

    users["alice"]["pass_hash"] = hash_password("changed")
    (config / "users.json").write_text(json.dumps(users))
    holder.replace(load_policy(config).policy, NOW)
    fresh = tokens.issue("alice", USERS, stored, NOW + 1)
    with pytest.raises(InvalidRefreshToken, match="password changed"):
        file.vouch_at_once(tokens.read(fresh, NOW + 1), tokens, holder.current)
