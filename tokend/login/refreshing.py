"""Refresh tokens as a way in: an authenticator of :class:`RefreshToken` credentials, and the
issuing of new ones after a login.

A refresh token names its account and the authenticator that vouched for it (its ``source``);
that authenticator is asked again whether it still does (:class:`Vouching`), so a password
changed, an account removed or a directory entry gone revokes the token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from tokend.login.credentials import RefreshToken
from tokend.login.identity import OPEN_GATE, EntryGate, Login, LoginRefused
from tokend.login.refresh_tokens import (
    InvalidRefreshToken,
    RefreshClaims,
    RefreshTokens,
    fingerprint,
)
from tokend.policy.model import Policy


class Vouching(Protocol):
    """An authenticator whose identities may hold refresh tokens: asked, without a password,
    whether a token's account still is who the token says."""

    @property
    def source(self) -> str:
        """The ``src`` its identities' tokens carry."""

    def vouch_at_once(
        self, claims: RefreshClaims, tokens: RefreshTokens, policy: Policy
    ) -> Login | None:
        """The login the token's account holds now, when known without a round trip; None:
        ask :meth:`vouch`. Raises :class:`InvalidRefreshToken` when it no longer vouches."""

    async def vouch(self, claims: RefreshClaims, tokens: RefreshTokens, policy: Policy) -> Login:
        """:meth:`vouch_at_once` past its None: raises :class:`InvalidRefreshToken`, or
        :class:`tokend.login.identity.BackendUnavailable` when it cannot tell."""


class RefreshTokenLogins:
    """Accepts this service's refresh tokens: no bcrypt, one signature check at most, and the
    token's account held against its source now. Every refusal says to log in again."""

    credential_types: tuple[type, ...] = (RefreshToken,)
    source = "refresh token"
    refusals_cost_a_bcrypt = False
    checks_take_a_place = True

    def __init__(
        self,
        tokens: RefreshTokens,
        sources: Sequence[Vouching],
        current: Callable[[], Policy],
        clock: Callable[[], float],
    ) -> None:
        """``sources``: the authenticators whose identities are issued refresh tokens."""
        self.tokens = tokens
        self._sources = {source.source: source for source in sources}
        self._current = current
        self._now = clock

    def answers(self, credentials: object, policy: Policy) -> object | None:
        return credentials if isinstance(credentials, RefreshToken) else None

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        assert isinstance(credentials, RefreshToken)
        claims, source = self._read(credentials.token, now)
        try:
            return source.vouch_at_once(claims, self.tokens, policy)
        except InvalidRefreshToken as e:
            raise _refused(credentials.token, claims.account, e.reason) from None

    async def authenticate(self, credentials: object, gate: EntryGate = OPEN_GATE) -> Login | None:
        assert isinstance(credentials, RefreshToken)
        claims, source = self._read(credentials.token, self._now())
        try:
            return await source.vouch(claims, self.tokens, self._current())
        except InvalidRefreshToken as e:
            raise _refused(credentials.token, claims.account, e.reason) from None

    def _read(self, token: str, now: float) -> tuple[RefreshClaims, Vouching]:
        try:
            claims = self.tokens.read(token, now)
        except InvalidRefreshToken as e:
            raise _refused(token, None, e.reason) from None
        source = self._sources.get(claims.source)
        if source is None:
            raise _refused(token, claims.account, "unknown source")
        return claims, source

    def refresh_token_for(self, login: Login, now: float) -> str | None:
        """A new refresh token for a login that just proved its password, or None when
        issuing is off, no source here can vouch for the account later (the authentication
        program: it needs the password), or the account's tokens would be born revoked."""
        identity = login.identity
        if not self.tokens.issuing or identity.source not in self._sources:
            return None
        if (identity.tokens_valid_after or 0) > now:
            return None  # a token issued now could never be used
        return self.tokens.issue(identity.account, identity.source, identity.binding, now)


def _refused(token: str, account: str | None, reason: str) -> LoginRefused:
    return LoginRefused(
        f"refresh token refused ({reason}); log in again with a password",
        account,
        token=fingerprint(token),
    )
