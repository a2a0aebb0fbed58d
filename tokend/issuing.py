"""Issuing a token for an identity (or nobody): the scopes asked ∩ the rights its policy gives
it, signed, plus a refresh token when a login asked for one. No HTTP here: the realm parses the
request, calls :meth:`Issuing.issue`, and writes the answer and its log line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tokend.client_address import IPAddress
from tokend.login.identity import Login
from tokend.login.logins import Logins
from tokend.policy.holder import PolicyHolder
from tokend.scope import ResourceScope
from tokend.signing.tokens import IssuedToken, TokenIssuer


@dataclass(frozen=True, slots=True)
class Issued:
    """One answer: the signed token, every asked scope with the actions granted (none: refused),
    and the refresh token to hand back, if any."""

    token: IssuedToken
    granted: tuple[ResourceScope, ...]
    refresh_token: str | None


class Issuing:
    def __init__(
        self,
        *,
        policy: PolicyHolder,
        tokens: TokenIssuer,
        logins: Logins,
        clock: Callable[[], float],
    ) -> None:
        """``policy`` answers for anonymous requests (a login carries the policy it was checked
        against); ``logins`` makes the refresh tokens."""
        self._policy = policy
        self._tokens = tokens
        self._logins = logins
        self._clock = clock

    @property
    def issuer(self) -> str:
        return self._tokens.issuer

    def issue(
        self,
        login: Login | None,
        service: str,
        asked: Sequence[ResourceScope],
        *,
        offline: bool = False,
        presented: str | None = None,
        address: IPAddress | None = None,
    ) -> Issued:
        """The token for ``login`` (None: anonymous). ``offline``: a refresh token is asked for
        too (never given anonymously); ``presented``: the refresh token the login came with,
        answered back rather than replaced; ``address``: this request's client, which rules
        with ``from`` are checked against (None: none of them applies). A login, cached or
        refreshed, carries an identity, never rights: they are decided here, per request."""
        policy = self._policy.current if login is None else login.policy
        account = None if login is None else login.identity.account
        member = None if login is None else policy.rights(login.identity)
        granted = tuple(
            ResourceScope(scope.type, scope.name, policy.grant(account, scope, member, address))
            for scope in asked
        )
        now = self._clock()
        token = self._tokens.issue(account or "", service, granted, now)
        refresh_token = presented
        if refresh_token is None and offline and login is not None:
            refresh_token = self._logins.refresh_token_for(login, now)
        return Issued(token, granted, refresh_token)
