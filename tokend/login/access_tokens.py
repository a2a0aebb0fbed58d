"""Access tokens as a way in (#26): a name and a ``tkd_at_`` secret, looked up by the secret's
hash in the store, become the owner's identity with the token's cap. No bcrypt: the secret
carries 256 random bits, so its SHA-256 is compared, and its checksum refuses look-alike text
before any lookup.

Lookups are remembered for at most :data:`CACHE_TTL` (a revocation made by another process is
seen within it), so a busy CI's repeated logins cost about what an anonymous request costs.
A refresh token issued after a token login is bound to that token: revoking it revokes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from tokend.access_tokens.cap import Cap, CapError, cap_from_json
from tokend.access_tokens.record import TOUCH_INTERVAL, AccessToken
from tokend.access_tokens.secrets import PREFIX, SECRET_LENGTH, secret_hash, secret_in
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import (
    ACCESS_TOKEN_SOURCE,
    BackendUnavailable,
    EntryGate,
    Identity,
    Login,
    LoginRefused,
    TokenUse,
    UnfitName,
    directory_spelling,
)
from tokend.login.recent_answers import RecentAnswers
from tokend.login.refresh_tokens import InvalidRefreshToken, RefreshClaims, RefreshTokens
from tokend.logs.escaping import printable
from tokend.policy.model import DIRECTORY_GROUPS, OWN_ENTRY, Policy
from tokend.store.database import DatabaseUnavailable

T = TypeVar("T")

_Found = tuple[AccessToken, Cap] | None
"""A lookup's answer: the token with its compiled cap, or None (no such secret)."""

CACHE_TTL = 1.0
"""Seconds a lookup (a hit or a miss) is remembered: a revocation made elsewhere must stop the
token everywhere within 2 s, the query's own time included."""

WRONG = "invalid user name or password"
"""An unknown token, another owner's or a malformed one: one message, so none tells which."""
REFUSALS = {
    "revoked": "access token revoked",
    "expired": "access token expired",
    "owner_gone": "access token refused: its owner can no longer log in",
    "tokens_valid_after": "access token refused: its owner's tokens_valid_after is after its "
    "creation",
}


class TokenLookup(Protocol):
    """Where tokens are read (:class:`tokend.store.runner.Store`: each query on its pool)."""

    def find_by_hash(self, hashed: str) -> Deferred[AccessToken | None]: ...
    def list(self, owner: str | None = None) -> Deferred[list[AccessToken]]: ...
    def touch(self, token_id: str, now: int, address: str | None) -> Deferred[bool]: ...


class OwnerLookup(Protocol):
    """The directory's lookup of an account
    (:meth:`tokend.login.ldap.accounts.DirectoryAccounts.lookup`)."""

    async def lookup(self, account: str) -> Identity | None: ...


class AccessTokenEvents(Protocol):
    """What the metrics count of token logins."""

    def token_login(self, result: str) -> None:
        """``accepted``, or a refusal's reason (a bounded set: :data:`REASONS`)."""


REASONS = ("malformed", "unknown", "wrong_owner", "unavailable", *REFUSALS)


class _NoEvents:
    def token_login(self, result: str) -> None:
        """Nothing is counted."""


NO_EVENTS: AccessTokenEvents = _NoEvents()


class _Refused(Exception):
    """A token that does not log in, with the reason counted and logged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Owner:
    """An owner as found now: where its rights are read, and from when its tokens hold."""

    rights_from: str
    directory_groups: frozenset[str] = frozenset()
    tokens_valid_after: float | None = None


class AccessTokenAccounts:
    """Answers every name whose password is an access token's secret (``tkd_at_``…): a
    malformed one is refused as a token, never checked as a password. An authenticator, and
    the :class:`tokend.login.refreshing.Vouching` of the refresh tokens its logins get."""

    credential_types: tuple[type, ...] = (UsernamePassword,)
    source = ACCESS_TOKEN_SOURCE
    refusals_cost_a_bcrypt = False
    checks_take_a_place = False
    log = Logger()

    def __init__(
        self,
        tokens: TokenLookup,
        current: Callable[[], Policy],
        clock: Callable[[], float],
        *,
        directory: OwnerLookup | None = None,
        events: AccessTokenEvents = NO_EVENTS,
        cache_ttl: float = CACHE_TTL,
    ) -> None:
        """``directory``: owners users.json does not hold are looked up there (none: such
        an owner is gone)."""
        self._tokens = tokens
        self._current = current
        self._now = clock
        self._directory = directory
        self._events = events
        self._by_hash: RecentAnswers[_Found] = RecentAnswers(cache_ttl)
        self._by_owner: RecentAnswers[tuple[tuple[AccessToken, Cap], ...]] = RecentAnswers(
            cache_ttl
        )
        self._owners: RecentAnswers[_Owner | None] = RecentAnswers(cache_ttl)
        self._touched: RecentAnswers[None] = RecentAnswers(TOUCH_INTERVAL)
        self._outage = False
        self._refresh_after = cache_ttl / 2
        self._finding: dict[str, tuple[float, list[Deferred[_Found]]]] = {}
        self._forgot_at = -math.inf

    def answers(self, credentials: object, policy: Policy) -> object | None:
        """A password that starts like a token's secret is one; the name is spelled as the
        directory spells it when users.json does not hold it (:class:`UnfitName` passes)."""
        assert isinstance(credentials, UsernamePassword)
        if not credentials.password.startswith(PREFIX.encode("ascii")):
            return None
        if self._directory is None:
            return credentials
        spelled = directory_spelling(credentials.account, policy)
        return credentials if spelled is None else UsernamePassword(spelled, credentials.password)

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        """The login when the token (and a directory owner) were looked up within the cache's
        time; a malformed secret or a remembered refusal raises :class:`LoginRefused`.

        Only a well-formed secret's hash is ever remembered, so a password whose hash is
        need not have its form and checksum read again: a busy CI's logins skip that."""
        assert isinstance(credentials, UsernamePassword)
        password = credentials.password
        seen = None
        if len(password) == SECRET_LENGTH:
            hashed = secret_hash(password).hex()
            seen = self._by_hash.get(hashed, now)
        if seen is None:
            if secret_in(password) is None:
                raise self._refusal("malformed", None, credentials.account)
            return None
        if now - seen.asked_at >= self._refresh_after and hashed not in self._finding:
            # Asked again ahead of time: a token in steady use is always answered at once,
            # and still never from an answer older than the cache's time.
            self._find(hashed).addErrback(lambda _: None)
        token = seen.value
        owner = self._owner_at_once(credentials.account, policy, now)
        if token is not None and token[0].owner == credentials.account and owner is _UNKNOWN:
            return None
        return self._decided(token, credentials.account, owner, policy, now)

    async def authenticate(self, credentials: object, gate: EntryGate) -> Login | None:
        """The token looked up, then its owner (``gate``: a token's owner is no entry a second
        name reaches). Raises :class:`LoginRefused` (which costs no bcrypt) or
        :class:`BackendUnavailable`."""
        assert isinstance(credentials, UsernamePassword)
        account = credentials.account
        secret = secret_in(credentials.password)
        if secret is None:
            raise self._refusal("malformed", None, account)
        token = await self._asked(self._find(secret_hash(secret).hex()), account)
        policy = self._current()
        owner: _Owner | _Unknown | None = None
        if token is not None and token[0].owner == account:
            owner = await self._owner(account, policy)
        return self._decided(token, account, owner, policy, self._now())

    def vouch_at_once(
        self, claims: RefreshClaims, tokens: RefreshTokens, policy: Policy
    ) -> Login | None:
        now = self._now()
        listed = self._by_owner.get(claims.account, now)
        owner = self._owner_at_once(claims.account, policy, now)
        if listed is None or owner is _UNKNOWN:
            return None
        return self._vouched(claims, tokens, listed.value, owner, policy, now)

    async def vouch(self, claims: RefreshClaims, tokens: RefreshTokens, policy: Policy) -> Login:
        """The refresh token's access token, found among its owner's by the binding, still
        usable now; its owner still there. Raises :class:`InvalidRefreshToken`."""
        now = self._now()
        seen = self._by_owner.get(claims.account, now)
        if seen is None:
            found = await self._asked(self._tokens.list(claims.account), claims.account)
            listed = tuple((token, _compiled(token)) for token in found)
            self._by_owner.put(claims.account, listed, now)
        else:
            listed = seen.value
        owner = await self._owner(claims.account, policy)
        return self._vouched(claims, tokens, listed, owner, policy, self._now())

    def _find(self, hashed: str) -> Deferred[_Found]:
        """The token whose secret hashes to ``hashed``, with its cap compiled, remembered:
        one query per secret at a time, so the logins of a burst that arrive while it runs
        share its answer (and its failure) rather than each asking the database."""
        answer: Deferred[_Found] = Deferred()
        pending = self._finding.get(hashed)
        if pending is not None:
            pending[1].append(answer)
            return answer
        asked_at = self._now()
        waiting = [answer]
        self._finding[hashed] = (asked_at, waiting)

        def settle(result: AccessToken | Failure | None) -> None:
            del self._finding[hashed]
            found: _Found | Failure
            if isinstance(result, Failure):
                found = result
            else:
                found = None if result is None else (result, _compiled(result))
                if asked_at > self._forgot_at:  # not asked before a revocation made here
                    self._by_hash.put(hashed, found, asked_at)
            for each in waiting:
                if isinstance(found, Failure):
                    each.errback(found)
                else:
                    each.callback(found)

        try:
            query = self._tokens.find_by_hash(hashed)
        except Exception:
            settle(Failure())
        else:
            query.addBoth(settle)
        return answer

    def forget(self, token_id: str) -> None:
        """A token revoked by this process: no remembered lookup answers for it any more, nor
        one asked before now that answers later."""
        self._forgot_at = self._now()
        self._by_hash.drop(lambda seen: seen is not None and seen[0].id == token_id)
        self._by_owner.drop(lambda listed: any(token.id == token_id for token, _ in listed))

    def used(self, login: Login, client: str, now: float) -> None:
        """After a successful login: a token's last use recorded (at most one write a minute,
        sent from here at most once a minute too). A failure is logged, never raised."""
        use = login.identity.access_token
        if use is None:
            return
        if self._touched.get(use.id, now) is not None:
            return
        self._touched.put(use.id, None, now)
        try:
            touching = self._tokens.touch(use.id, int(now), client)
        except Exception:
            self._touch_failed(Failure(), use)
            return
        touching.addErrback(self._touch_failed, use)

    def _touch_failed(self, failure: Failure, use: TokenUse) -> None:
        self._touched.discard(use.id)  # not recorded: the next use tries again
        if failure.check(DatabaseUnavailable):
            self.log.warn(
                "last use of access token {token_id} ({token_name}) not recorded: {reason}",
                token_id=use.id,
                token_name=use.name,
                reason=failure.getErrorMessage(),
            )
        else:
            self.log.failure(
                "last use of access token {token_id} ({token_name}) not recorded",
                failure,
                token_id=use.id,
                token_name=use.name,
            )

    async def _asked(self, query: Deferred[T], account: str) -> T:
        """A query's answer; the database not answering is a 503, logged once an outage."""
        try:
            answer = await query
        except DatabaseUnavailable as e:
            if not self._outage:
                self._outage = True
                self.log.warn(
                    "access token logins unavailable: {reason}; logged once until it answers",
                    reason=e.message,
                )
            self._events.token_login("unavailable")
            raise BackendUnavailable(
                "access tokens cannot be checked now; try again shortly",
                account,
                max(1, math.ceil(e.retry_after)),
            ) from None
        if self._outage:
            self._outage = False
            self.log.info("access token logins: the database answers again")
        return answer

    def _owner_at_once(self, account: str, policy: Policy, now: float) -> _Owner | _Unknown | None:
        """The owner as found now, or :data:`_UNKNOWN` when the directory must be asked."""
        user = policy.users.get(account)
        if user is not None:
            return _Owner(OWN_ENTRY, tokens_valid_after=user.tokens_valid_after)
        if self._directory is None:
            return None
        seen = self._owners.get(account, now)
        return _UNKNOWN if seen is None else seen.value

    async def _owner(self, account: str, policy: Policy) -> _Owner | None:
        known = self._owner_at_once(account, policy, self._now())
        if not isinstance(known, _Unknown):
            return known
        assert self._directory is not None
        try:
            spelled = directory_spelling(account, policy)
        except UnfitName:
            return None
        if spelled is None:
            return None
        asked_at = self._now()
        found = await self._directory.lookup(spelled)
        owner = None if found is None else _Owner(DIRECTORY_GROUPS, found.directory_groups)
        self._owners.put(account, owner, asked_at)
        return owner

    def _decided(
        self,
        token: tuple[AccessToken, Cap] | None,
        account: str,
        owner: _Owner | _Unknown | None,
        policy: Policy,
        now: float,
    ) -> Login:
        """The login a token gives ``account`` now, or :class:`LoginRefused`."""
        if token is None:
            raise self._refusal("unknown", None, account)
        found, cap = token
        try:
            if found.owner != account:
                raise _Refused("wrong_owner")
            assert not isinstance(owner, _Unknown)
            usable = self._usable(found, owner, now)
        except _Refused as e:
            raise self._refusal(e.reason, found, account) from None
        self._events.token_login("accepted")
        return Login(_identity(found, cap, usable), policy)

    def _usable(self, token: AccessToken, owner: _Owner | None, now: float) -> _Owner:
        """``owner`` when ``token`` may be used now; raises :class:`_Refused`."""
        if token.revoked_at is not None:
            raise _Refused("revoked")
        if now >= token.expires_at:
            raise _Refused("expired")
        if owner is None:
            raise _Refused("owner_gone")
        after = owner.tokens_valid_after
        if after is not None and token.created_at < after:
            raise _Refused("tokens_valid_after")
        return owner

    def _vouched(
        self,
        claims: RefreshClaims,
        tokens: RefreshTokens,
        listed: tuple[tuple[AccessToken, Cap], ...],
        owner: _Owner | _Unknown | None,
        policy: Policy,
        now: float,
    ) -> Login:
        assert not isinstance(owner, _Unknown)
        valid_after = None if owner is None else owner.tokens_valid_after
        for token, cap in listed:
            try:
                tokens.admit(claims, token.id.encode("ascii"), valid_after)
            except InvalidRefreshToken:
                continue
            try:
                usable = self._usable(token, owner, now)
            except _Refused as e:
                self._logged(e.reason, token, claims.account, "its refresh token")
                raise InvalidRefreshToken(f"revoked: access token {e.reason}") from None
            return Login(_identity(token, cap, usable), policy)
        raise InvalidRefreshToken("revoked: access token gone")

    def _refusal(self, reason: str, token: AccessToken | None, account: str) -> LoginRefused:
        self._events.token_login(reason)
        if token is not None:
            self._logged(reason, token, account, "a login")
        return LoginRefused(REFUSALS.get(reason, WRONG), account)

    def _logged(self, reason: str, token: AccessToken, account: str, what: str) -> None:
        self.log.info(
            "access token {token_id} ({token_name}) of {owner} refused for {what} as "
            "{account}: {reason}",
            token_id=token.id,
            token_name=token.name,
            owner=token.owner,
            account=printable(account),
            what=what,
            reason=reason,
        )


class _Unknown:
    """An owner the directory must be asked about."""


_UNKNOWN = _Unknown()


_GRANTS_NOTHING = cap_from_json({"*": []})


def _compiled(token: AccessToken) -> Cap:
    """The token's cap, compiled once per lookup; one the store holds yet cannot be read is
    an empty cap (the token grants nothing), logged."""
    try:
        return cap_from_json({pattern: list(actions) for pattern, actions in token.cap.items()})
    except CapError as e:
        AccessTokenAccounts.log.error(
            "access token {token_id} ({token_name}): its stored cap is unusable ({reason}); "
            "it grants nothing",
            token_id=token.id,
            token_name=token.name,
            reason=str(e),
        )
        return _GRANTS_NOTHING


def _identity(token: AccessToken, cap: Cap, owner: _Owner) -> Identity:
    return Identity(
        token.owner,
        ACCESS_TOKEN_SOURCE,
        owner.directory_groups,
        binding=token.id.encode("ascii"),
        rights_from=owner.rights_from,
        tokens_valid_after=owner.tokens_valid_after,
        access_token=TokenUse(token.id, token.name, cap),
    )
