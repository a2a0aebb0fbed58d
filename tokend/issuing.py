"""Issuing a token for an identity (or nobody): the scopes asked ∩ the rights its policy gives
it (and, when one is configured, what the authorization program says of each), within the cap
of the access token it logged in with, if any, signed, plus a refresh token when a login asked
for one. No HTTP here: the realm parses the request, calls
:meth:`Issuing.issue`, and writes the answer and its log line."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, FirstError, gatherResults

from tokend.access_tokens.cap import capped
from tokend.client_address import ClientAddress
from tokend.login.identity import Login, TokenUse
from tokend.login.logins import Logins
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import ACTIONS, ALL_ACTIONS
from tokend.programs.authorization import AuthorizationProgram, Question
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
        authorization: AuthorizationProgram | None = None,
    ) -> None:
        """``policy`` answers for anonymous requests (a login carries the policy it was checked
        against); ``logins`` makes the refresh tokens; ``authorization``, the external
        authorization program, is asked about each scope (then issuing waits for it)."""
        self._policy = policy
        self._tokens = tokens
        self._logins = logins
        self._clock = clock
        self._authorization = authorization

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
        client: ClientAddress | None = None,
    ) -> Issued | Deferred[Issued]:
        """The token for ``login`` (None: anonymous) asked by ``client``. ``offline``: a refresh
        token is asked for too (never given anonymously); ``presented``: the refresh token the
        login came with, answered back rather than replaced. A login's rules with ``from`` are
        checked against the client's address (only a login's: anonymous rules take none, so an
        anonymous request does not parse it; without one, none of them applies). A login,
        cached or refreshed, carries an identity, never rights: they are decided here, per
        request. At once without an authorization program; with one, once it has answered (a
        Deferred that fails with
        :class:`tokend.programs.authorization.AuthorizationUnavailable`)."""
        policy = self._policy.current if login is None else login.policy
        account = None if login is None else login.identity.account
        member = None if login is None else policy.rights(login.identity)
        address = None if login is None or client is None else client.ip()
        granted = tuple(
            ResourceScope(scope.type, scope.name, policy.grant(account, scope, member, address))
            for scope in asked
        )
        use = None if login is None else login.identity.access_token
        if use is not None:
            granted = tuple(_within_cap(use, scope) for scope in granted)
        if self._authorization is None:
            return self._signed(login, service, granted, offline, presented)
        if use is not None:  # the program is asked about no more than the cap allows
            asked = tuple(_within_cap(use, scope) for scope in asked)
        shown = "" if client is None else client.address
        authorized = self._authorized(self._authorization, login, service, asked, granted, shown)
        return Deferred.fromCoroutine(authorized).addCallback(
            lambda granted: self._signed(login, service, granted, offline, presented)
        )

    async def _authorized(
        self,
        program: AuthorizationProgram,
        login: Login | None,
        service: str,
        asked: Sequence[ResourceScope],
        granted: tuple[ResourceScope, ...],
        client: str,
    ) -> tuple[ResourceScope, ...]:
        """Each scope after the program's word, asked about every scope at once: what the
        policy grants, kept or dropped; or with ``decides`` (a login), what was asked."""
        decides = program.decides and login is not None
        labels = None
        if login is not None and login.identity.labels:
            labels = {label: list(values) for label, values in login.identity.labels}
        account = "" if login is None else login.identity.account

        async def answered(put: ResourceScope, kept: ResourceScope) -> ResourceScope:
            if not put.actions:
                return kept
            question = Question(account, put, service, client, labels)
            return put if await program.grants(question) else ResourceScope(put.type, put.name, ())

        answers = [
            Deferred.fromCoroutine(answered(put if decides else kept, kept))
            for put, kept in zip(asked, granted, strict=True)
        ]
        try:
            return tuple(await gatherResults(answers, consumeErrors=True))
        except FirstError as e:
            e.subFailure.raiseException()
            raise

    def _signed(
        self,
        login: Login | None,
        service: str,
        granted: tuple[ResourceScope, ...],
        offline: bool,
        presented: str | None,
    ) -> Issued:
        account = None if login is None else login.identity.account
        now = self._clock()
        ttl = None if login is None else _lifetime(login, now)
        token = self._tokens.issue(account or "", service, granted, now, ttl)
        refresh_token = presented
        if refresh_token is None and offline and login is not None:
            refresh_token = self._logins.refresh_token_for(login, now)
        return Issued(token, granted, refresh_token)


def _within_cap(use: TokenUse, scope: ResourceScope) -> ResourceScope:
    """``scope`` within the cap of the access token a login was made with (``use``):
    repositories only (the catalog would list every repository, whatever the cap), ``*`` read
    as every action, so a deciding authorization program is asked about no more than the cap
    allows."""
    if scope.type != "repository":
        return ResourceScope(scope.type, scope.name, ())
    actions = ACTIONS if ALL_ACTIONS in scope.actions else scope.actions
    return ResourceScope(scope.type, scope.name, capped(actions, use.cap, scope.name))


def _lifetime(login: Login, now: float) -> int | None:
    """A cap on the access token's lifetime for ``login``, or None (the configured one): a
    federated identity's token ends with its JWT (whole seconds, never after it), and within
    its trust's ``token_ttl`` when the trust sets one."""
    identity = login.identity
    caps = []
    if identity.expires_at is not None:
        caps.append(math.floor(identity.expires_at) - int(now))
    trust = login.policy.trusts.get(identity.trust) if identity.trust else None
    if trust is not None and trust.token_ttl is not None:
        caps.append(trust.token_ttl)
    return min(caps, default=None)
