"""Refresh tokens as a way in, in memory: the authenticator named by a token's source is asked
whether it still vouches, and the door counts every refusal against the address."""

from __future__ import annotations

from pathlib import Path

import pytest
from policies import NOW, policy_in
from support import settled, write_key_pair
from twisted.internet.defer import Deferred

from tokend.login.credentials import RefreshToken
from tokend.login.identity import Identity, Login, LoginRefused, LoginThrottled
from tokend.login.in_flight import InFlight
from tokend.login.logins import Logins
from tokend.login.passwords import PasswordChecker
from tokend.login.refresh_tokens import InvalidRefreshToken, RefreshClaims, RefreshTokens
from tokend.login.refreshing import RefreshTokenLogins
from tokend.login.throttle import LoginThrottle
from tokend.policy.model import Policy
from tokend.signing.keys import load_signing_key
from tokend.threads import InlineRunner

HERE = "192.0.2.10"


class Source:
    """Vouches for the accounts in ``still``; at once, or (``later``) after a round trip the
    test completes."""

    def __init__(self, source: str, still: set[str], *, later: bool = False) -> None:
        self.source = source
        self.still = still
        self.later = later
        self.asked: list[str] = []
        self.waiting: list[Deferred[None]] = []

    def _login(self, claims: RefreshClaims, policy: Policy) -> Login:
        self.asked.append(claims.account)
        if claims.account not in self.still:
            raise InvalidRefreshToken("gone")
        return Login(Identity(claims.account, self.source), policy)

    def vouch_at_once(
        self, claims: RefreshClaims, tokens: RefreshTokens, policy: Policy
    ) -> Login | None:
        return None if self.later else self._login(claims, policy)

    async def vouch(self, claims: RefreshClaims, tokens: RefreshTokens, policy: Policy) -> Login:
        waiting: Deferred[None] = Deferred()
        self.waiting.append(waiting)
        await waiting
        return self._login(claims, policy)


def door(tmp_path: Path, *sources: Source, per_address: int = 100) -> tuple[Logins, RefreshTokens]:
    policy = policy_in(tmp_path / "config", {"alice": ("pw", {})})
    tokens = RefreshTokens(load_signing_key(*write_key_pair(tmp_path)), "tokend-test")
    refreshing = RefreshTokenLogins(tokens, sources, lambda: policy, lambda: NOW)
    logins = Logins(
        current=lambda: policy,
        authenticators=[refreshing],
        passwords=PasswordChecker(InlineRunner()),
        clock=lambda: NOW,
        throttle=LoginThrottle(per_account=100, per_address=per_address, window=300),
        in_flight=InFlight(0),
        renewal=refreshing,
    )
    return logins, tokens


def test_the_source_a_token_names_is_asked_whether_it_still_vouches(tmp_path: Path) -> None:
    users, directory = Source("users", {"alice"}), Source("ldap", {"mozart"}, later=True)
    logins, tokens = door(tmp_path, users, directory)
    login = logins.login(RefreshToken(tokens.issue("alice", "users", b"h", NOW)), HERE)
    assert isinstance(login, Login), "answered at once"
    assert login.identity == Identity("alice", "users")
    waiting = logins.login(RefreshToken(tokens.issue("mozart", "ldap", b"h", NOW)), HERE)
    assert isinstance(waiting, Deferred)
    directory.waiting.pop().callback(None)
    assert settled(waiting).identity == Identity("mozart", "ldap")
    assert (users.asked, directory.asked) == (["alice"], ["mozart"])


def test_every_refusal_says_why_and_counts_against_the_address(tmp_path: Path) -> None:
    users = Source("users", set())
    logins, tokens = door(tmp_path, users, per_address=3)
    for token, reason in [
        ("not.a.token", "malformed"),
        (tokens.issue("alice", "users", b"h", NOW), "gone"),
        (tokens.issue("alice", "elsewhere", b"h", NOW), "unknown source"),
    ]:
        with pytest.raises(LoginRefused, match=rf"refresh token refused \({reason}\)"):
            logins.login(RefreshToken(token), HERE)
    assert users.asked == ["alice"], "no source is asked about a token naming another"
    with pytest.raises(LoginThrottled) as refused:
        logins.login(RefreshToken("not.a.token"), HERE)
    assert refused.value.by == "address"


def test_no_refresh_token_is_issued_that_would_be_born_revoked(tmp_path: Path) -> None:
    logins, tokens = door(tmp_path, Source("users", {"alice"}))
    policy = policy_in(tmp_path / "other", {"bob": ("pw", {})})
    fine = Login(Identity("alice", "users", binding=b"h"), policy)
    revoked = Login(Identity("alice", "users", tokens_valid_after=NOW + 1), policy)
    token = logins.refresh_token_for(fine, NOW)
    assert token is not None and tokens.read(token, NOW).source == "users"
    assert logins.refresh_token_for(revoked, NOW) is None
