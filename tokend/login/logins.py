"""Every way of logging in, behind one door: throttle, credential cache and the per-address
share of checks wrap the authenticators once (STYLE rule 14), whichever one answers.

- A name in users.json is checked against its hash, always: it is never looked up in the
  directory.
- Any other name goes to the directory when one is configured, else to the password file
  (which checks it against a dummy hash so that unknown names cost what known ones do).
- A refresh token names its account and where it came from; that source must still vouch for
  the account (its hash unchanged, or the directory still finding it).

Every refused password costs one bcrypt, whichever backend refused it (or none: an empty one),
so response time does not tell where a name lives. A client that hangs up stops only its own
waiting: the check runs to its end, holds its places until then and counts as if it stayed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from tokend.login.identity import (
    DIRECTORY,
    USERS,
    BackendUnavailable,
    EntryGate,
    Identity,
    Login,
    LoginError,
    LoginOverloaded,
    LoginRefused,
    LoginThrottled,
    UnfitName,
    directory_spelling,
    entry_name,
)
from tokend.login.in_flight import InFlight, ShareFull
from tokend.login.passwords import MAX_PASSWORD_BYTES, PasswordChecker, check_cost
from tokend.login.refresh_tokens import (
    InvalidRefreshToken,
    RefreshClaims,
    RefreshTokens,
    fingerprint,
)
from tokend.login.throttle import LoginThrottle, Refusal
from tokend.metrics.instruments import NO_METRICS, RequestMetrics
from tokend.policy.model import Policy
from tokend.threads import Overloaded, Stopped

WRONG = "invalid user name or password"


class Authenticator(Protocol):
    """One backend that turns a name and a password into a :class:`Login` (or None: wrong)."""

    @property
    def source(self) -> str: ...

    @property
    def refusals_cost_a_bcrypt(self) -> bool:
        """True when a refusal already cost one bcrypt (the password file's do, for known and
        unknown names alike); the door pays one for the others."""

    def cached(self, account: str, password: bytes, policy: Policy, now: float) -> Login | None:
        """A login the credential cache answers, with no backend round trip."""

    async def authenticate(self, account: str, password: bytes, gate: EntryGate) -> Login | None:
        """Raises :class:`BackendUnavailable` when it cannot tell, or ``Overloaded``; asks
        ``gate`` about the directory entry the name leads to, if any, before the password."""


class AccountDirectory(Authenticator, Protocol):
    """An authenticator that can also say whether an account still exists, without its
    password: a refresh token's account is re-checked that way."""

    async def lookup(self, account: str) -> Identity | None: ...


class ShareExceeded(LoginOverloaded):
    """This client's own share of the checks in flight (its address's or its network's) is
    full: a limit of the client's making, answered 429 rather than 503."""


class _Nobody:
    """The authenticator of passwords no backend is asked about (empty, or longer than the
    password file can check): it refuses them, after the bcrypt the door pays for it."""

    source = "none"
    refusals_cost_a_bcrypt = False

    def cached(self, account: str, password: bytes, policy: Policy, now: float) -> Login | None:
        return None

    async def authenticate(self, account: str, password: bytes, gate: EntryGate) -> Login | None:
        return None


_NOBODY = _Nobody()


def _overloaded(full: ShareFull, account: str) -> LoginOverloaded:
    if full == "queue":
        return LoginOverloaded("too many logins are being checked; try again shortly", account)
    return ShareExceeded(
        f"too many logins from this {full} are being checked; try again shortly", account
    )


def throttled(refusal: Refusal, account: str | None) -> LoginThrottled:
    wait = max(1, math.ceil(refusal.retry_after))
    return LoginThrottled(
        f"too many failed logins for this {refusal.reason}; try again in {wait} s",
        account,
        wait,
        by=refusal.reason,
    )


class _EntryGate:
    """The door's answer to a backend that found the directory entry a name leads to: may
    that entry try now? (:class:`tokend.login.identity.EntryGate`)"""

    def __init__(
        self, throttle: LoginThrottle, account: str, client: str, clock: Callable[[], float]
    ) -> None:
        self._throttle = throttle
        self._account = account
        self._client = client
        self._now = clock
        self.entry: str | None = None
        """The entry's throttle name once admitted: the attempt's end is counted for it too."""

    async def admit(self, dn: str) -> None:
        """First sight of the entry since this process joined Redis: Redis is asked first, as
        for a name (:meth:`LoginThrottle.consult`)."""
        asking = self._throttle.consult(entry_name(dn), self._client, self._now())
        if asking is not None:
            await asking
        self.admit_now(dn)

    def admit_now(self, dn: str) -> None:
        if self.entry is not None:
            raise RuntimeError("one entry per login attempt")
        name = entry_name(dn)
        refusal = self._throttle.admit_entry(name, self._client, self._now())
        if refusal is not None:
            raise throttled(refusal, self._account)
        self.entry = name


class Logins:
    """Password logins and refresh-token logins, answered at once when no backend needs to be
    asked (a throttle refusal, a cache hit, a refresh of a users.json account), else through
    a Deferred. Refusals are :class:`tokend.login.identity.LoginError` subclasses."""

    log = Logger()

    def __init__(
        self,
        *,
        current: Callable[[], Policy],
        password_file: Authenticator,
        passwords: PasswordChecker,
        clock: Callable[[], float],
        throttle: LoginThrottle,
        in_flight: InFlight,
        directory: AccountDirectory | None = None,
        refresh_tokens: RefreshTokens | None = None,
        metrics: RequestMetrics = NO_METRICS,
    ) -> None:
        """``passwords`` pays the bcrypt of refusals that cost none (through the same bounded
        queue as every check); ``metrics`` counts cache hits and misses and the checks
        backends run, here where they happen."""
        self._metrics = metrics
        self._current = current
        self._file = password_file
        self._passwords = passwords
        self._directory = directory
        self._now = clock
        self._throttle = throttle
        self._in_flight = in_flight
        self.refresh_tokens = refresh_tokens

    def password(self, account: str, password: bytes, client: str) -> Login | Deferred[Login]:
        """Throttling comes first (once the name is spelled as its backend knows it), before
        the cache: a throttled guess must not learn anything, not even from a cheap cache
        lookup. A password no backend is asked about (an empty one: for the directory an
        unauthenticated bind, which "succeeds"; or one longer than bcrypt reads) is refused
        like a wrong one. A cache hit is answered at once; only a real check goes through a
        Deferred, and one client network holds only a small share of the checks in flight.
        Failures count; a success clears its account.
        """
        now = self._now()
        policy = self._current()
        backend: Authenticator = self._file
        typed = account
        if self._directory is not None:
            try:
                spelled = directory_spelling(account, policy)
            except UnfitName:
                return self._unfit(account, client, now, policy)
            if spelled is not None:
                backend, account = self._directory, spelled
        asking = self._throttle.consult(account, client, now)
        if asking is not None:  # first sight since this process joined Redis: ask it first
            return asking.addCallback(lambda _: self.password(typed, password, client))
        refusal = self._throttle.admit(account, client, now)
        if refusal is not None:
            raise throttled(refusal, account)
        if not password or (backend is self._file and len(password) > MAX_PASSWORD_BYTES):
            backend = _NOBODY
        else:
            hit = backend.cached(account, password, policy, now)
            if hit is not None:
                # The entry a remembered directory login found may be locked through another
                # name meanwhile: answering the right password then would tell it from wrong.
                gate = _EntryGate(self._throttle, account, client, self._now)
                if hit.identity.entry:
                    try:
                        gate.admit_now(hit.identity.entry)
                    except LoginThrottled:
                        self._throttle.abandoned(account, client, now)
                        raise
                self._metrics.cache_lookup(True)
                self._throttle.succeeded(account, client, now, entry=gate.entry)
                return hit
        known = self._throttle.knows(account, client, now)
        full = self._in_flight.admit(client, known=known)
        if full is not None:
            self._throttle.overloaded(account, client, now)
            raise _overloaded(full, account)
        if backend is not _NOBODY:
            self._metrics.cache_lookup(False)
        check = ensureDeferred(self._checked(backend, account, password, client, policy))
        return self._detached(check)

    async def _checked(
        self, backend: Authenticator, account: str, password: bytes, client: str, policy: Policy
    ) -> Login:
        """:meth:`password` past the cache: the backend asked, a refusal that cost no bcrypt
        padded with one, the throttle told how it went, and only then the client's place
        given back. A backend that could not answer (the directory down) counts as neither."""
        login: Login | None = None
        answered = overloaded = False
        started = self._metrics.now()
        gate = _EntryGate(self._throttle, account, client, self._now)
        try:
            login = await backend.authenticate(account, password, gate)
            answered = True
            if backend is not _NOBODY:
                self._metrics.password_checked(login is not None, started)
            if login is None and not backend.refusals_cost_a_bcrypt:
                await self._passwords.pad(check_cost(policy, account))
        except Stopped:
            raise LoginOverloaded("the service is stopping; try again shortly", account) from None
        except Overloaded:
            overloaded = not answered
            raise LoginOverloaded(
                "too many logins are being checked; try again shortly", account
            ) from None
        finally:
            self._in_flight.leave(client)
            if answered:
                ended = self._throttle.failed if login is None else self._throttle.succeeded
            else:
                ended = self._throttle.overloaded if overloaded else self._throttle.abandoned
            ended(account, client, self._now(), entry=gate.entry)
        if login is None:
            raise LoginRefused(WRONG, account)
        return login

    def _detached(self, check: Deferred[Login]) -> Deferred[Login]:
        """What the web waits on for ``check``. Cancelling it (the client hung up) stops only
        the waiting: the check is never cancelled, so no backend sees a cancellation (an LDAP
        operation cut short would drop the shared connection) and the check's places and its
        verdict are kept and counted as if the client had stayed."""
        waiting: Deferred[Login] = Deferred(lambda _: None)

        def settle(result: Login | Failure) -> None:
            if not waiting.called:
                if isinstance(result, Failure):
                    waiting.errback(result)
                else:
                    waiting.callback(result)
            elif isinstance(result, Failure) and not result.check(LoginError):
                self.log.failure("a login check failed after its client left", result)

        check.addBoth(settle)
        return waiting

    def refresh(self, token: str, client: str) -> Login | Deferred[Login]:
        """The refresh_token grant: no bcrypt, one signature check at most, and the token's
        account held against its source now. A bad token counts against the address: it
        names no account that could be trusted before it was checked."""
        tokens = self.refresh_tokens
        if tokens is None:
            raise ValueError("no refresh tokens configured")
        now = self._now()
        refusal = self._throttle.admit_address(client, now)
        if refusal is not None:
            raise throttled(refusal, None)
        try:
            claims = tokens.read(token, now)
        except InvalidRefreshToken as e:
            raise self._refused(token, client, None, e.reason) from None
        policy = self._current()
        if claims.source == DIRECTORY and self._directory is not None:
            try:
                spelled = directory_spelling(claims.account, policy)
            except UnfitName:
                raise self._refused(token, client, claims.account, "not a directory name") from None
            if spelled is None:
                raise self._refused(token, client, claims.account, "account now in users.json")
            return self._detached(
                ensureDeferred(self._directory_refresh(tokens, claims, token, client))
            )
        if claims.source != USERS:
            raise self._refused(token, client, claims.account, "unknown source")
        try:
            identity = tokens.identity(claims, policy)
        except InvalidRefreshToken as e:
            raise self._refused(token, client, claims.account, e.reason) from None
        user = policy.users[identity.account]
        self._throttle.address_ended(client, now, failed=False)
        return Login(Identity(identity.account, USERS, binding=user.pass_hash), policy)

    async def _directory_refresh(
        self, tokens: RefreshTokens, claims: RefreshClaims, token: str, client: str
    ) -> Login:
        assert self._directory is not None
        try:
            found = await self._directory.lookup(claims.account)
        except BackendUnavailable:
            self._throttle.address_ended(client, self._now(), failed=False)
            raise
        if found is None:
            raise self._refused(token, client, claims.account, "no active account in the directory")
        try:
            tokens.admit_directory(claims, found)
        except InvalidRefreshToken as e:
            raise self._refused(token, client, claims.account, e.reason) from None
        self._throttle.address_ended(client, self._now(), failed=False)
        return Login(found, self._current())

    def _unfit(self, account: str, client: str, now: float, policy: Policy) -> Deferred[Login]:
        """A name the directory would read as another (a fullwidth m): the directory is never
        asked. Refused as a wrong password is, after one bcrypt, and a failure of the address;
        no account is charged, for the name is none."""
        refusal = self._throttle.admit_address(client, now)
        if refusal is not None:
            raise throttled(refusal, account)
        full = self._in_flight.admit(client, known=False)
        if full is not None:
            self._throttle.address_ended(client, now, failed=True)
            raise _overloaded(full, account)
        return self._detached(ensureDeferred(self._refuse_unfit(account, client, policy)))

    async def _refuse_unfit(self, account: str, client: str, policy: Policy) -> Login:
        try:
            await self._passwords.pad(policy.dummy_cost(account))
        except Stopped:
            raise LoginOverloaded("the service is stopping; try again shortly", account) from None
        except Overloaded:
            raise LoginOverloaded(
                "too many logins are being checked; try again shortly", account
            ) from None
        finally:
            self._in_flight.leave(client)
            self._throttle.address_ended(client, self._now(), failed=True)
        raise LoginRefused(WRONG, account)

    def _refused(self, token: str, client: str, account: str | None, reason: str) -> LoginRefused:
        self._throttle.address_ended(client, self._now(), failed=True)
        return LoginRefused(
            f"refresh token refused ({reason}); log in again with a password",
            account,
            token=fingerprint(token),
        )

    def refresh_token_for(self, login: Login, now: float) -> str | None:
        """A new refresh token for a login that just proved its password, or None when
        issuing is off or the account's tokens would be born revoked."""
        tokens = self.refresh_tokens
        if tokens is None or not tokens.issuing:
            return None
        identity = login.identity
        if identity.source == USERS:
            user = login.policy.users.get(identity.account)
            if user is None or (user.tokens_valid_after or 0) > now:
                return None  # a token issued now could never be used
        return tokens.issue(identity.account, identity.source, identity.binding, now)
