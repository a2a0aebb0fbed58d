"""Every way of logging in, behind one door: throttle, credential cache and the per-address
share of checks wrap the authenticators once (STYLE rule 14), whichever one answers. Which
authenticators there are, and in which order they are asked, is :mod:`tokend.login.assembly`'s
business; nothing here names one.

Every refused password costs one bcrypt, whichever backend refused it (or none: an empty one),
so response time does not tell where a name lives. A client that hangs up stops only its own
waiting: the check runs to its end, holds its places until then and counts as if it stayed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from tokend.login.credentials import Authenticator, UsernamePassword
from tokend.login.identity import (
    OPEN_GATE,
    BackendUnavailable,
    EntryGate,
    Login,
    LoginError,
    LoginOverloaded,
    LoginRefused,
    LoginThrottled,
    NotMine,
    UnfitName,
    entry_name,
)
from tokend.login.in_flight import InFlight, ShareFull
from tokend.login.passwords import MAX_PASSWORD_BYTES, PasswordChecker, check_cost
from tokend.login.throttle import LoginThrottle, Refusal
from tokend.metrics.instruments import NO_METRICS, RequestMetrics
from tokend.policy.model import Policy
from tokend.threads import Overloaded, Stopped

WRONG = "invalid user name or password"


class ShareExceeded(LoginOverloaded):
    """This client's own share of the checks in flight (its address's or its network's) is
    full: a limit of the client's making, answered 429 rather than 503."""


class Renewal(Protocol):
    """What issues a refresh token after a login
    (:class:`tokend.login.refreshing.RefreshTokenLogins`)."""

    def refresh_token_for(self, login: Login, now: float) -> str | None: ...


LoginHook = Callable[[Login, str, float], None]
"""Told ``(login, client, now)`` after each successful login (an access token's last use)."""


class _Nobody:
    """The authenticator of passwords no backend is asked about (empty, longer than bcrypt
    reads for one that checks with bcrypt, or a name none answers): it refuses them, after
    the bcrypt the door pays for it."""

    credential_types: tuple[type, ...] = (UsernamePassword,)
    source = "none"
    refusals_cost_a_bcrypt = False
    checks_take_a_place = True

    def answers(self, credentials: object, policy: Policy) -> object | None:
        return credentials

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        return None

    async def authenticate(self, credentials: object, gate: EntryGate) -> Login | None:
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
    """One door: ``login(credentials, client)`` asks the authenticators in order, the first
    that answers the credentials decides, and the door applies the throttle, the credential
    cache's bookkeeping, the per-address share of checks and the metrics around it, whichever
    one it is. Answered at once when no backend needs to be asked (a throttle refusal, a cache
    hit, a refresh of a users.json account), else through a Deferred. Refusals are
    :class:`tokend.login.identity.LoginError` subclasses."""

    log = Logger()

    def __init__(
        self,
        *,
        current: Callable[[], Policy],
        authenticators: Sequence[Authenticator],
        passwords: PasswordChecker,
        clock: Callable[[], float],
        throttle: LoginThrottle,
        in_flight: InFlight,
        renewal: Renewal | None = None,
        metrics: RequestMetrics = NO_METRICS,
        on_success: Sequence[LoginHook] = (),
    ) -> None:
        """``authenticators`` in the order they are asked; ``passwords`` pays the bcrypt of
        refusals that cost none (through the same bounded queue as every check); ``renewal``
        issues refresh tokens; ``metrics`` counts cache hits and misses and the checks
        backends run, here where they happen; ``on_success`` are told of every login."""
        self._on_success = tuple(on_success)
        self._metrics = metrics
        self._current = current
        self._authenticators = tuple(authenticators)
        self._passwords = passwords
        self._now = clock
        self._throttle = throttle
        self._in_flight = in_flight
        self._renewal = renewal

    def accepts(self, kind: type) -> bool:
        """Whether some authenticator takes credentials of this type."""
        return any(kind in a.credential_types for a in self._authenticators)

    def login(self, credentials: object, client: str) -> Login | Deferred[Login]:
        """The login ``credentials`` prove, from ``client`` (its address)."""
        if isinstance(credentials, UsernamePassword):
            return self._password(credentials, client)
        return self._bearer(credentials, client)

    def _first(
        self, credentials: object, policy: Policy, after: Authenticator | None = None
    ) -> tuple[Authenticator, object] | None:
        """The authenticator that decides ``credentials`` (of those after ``after``), and the
        credentials as it reads them; None when none does. :class:`UnfitName` passes through."""
        authenticators = self._authenticators
        if after is not None:
            authenticators = authenticators[authenticators.index(after) + 1 :]
        for authenticator in authenticators:
            if isinstance(credentials, authenticator.credential_types):
                answered = authenticator.answers(credentials, policy)
                if answered is not None:
                    return authenticator, answered
        return None

    def _password(self, typed: UsernamePassword, client: str) -> Login | Deferred[Login]:
        """Throttling comes first (once the name is spelled as its authenticator knows it),
        before the cache: a throttled guess must not learn anything, not even from a cheap
        cache lookup. A password no backend is asked about (an empty one: for the directory an
        unauthenticated bind, which "succeeds"; one longer than bcrypt reads, for an
        authenticator that checks with bcrypt; or a name no authenticator answers) is refused
        like a wrong one. A cache hit is answered at once; only a real check goes through a
        Deferred, and one client network holds only a small share of the checks in flight.
        Failures count; a success clears its account.
        """
        now = self._now()
        policy = self._current()
        try:
            first = self._first(typed, policy)
        except UnfitName:
            return self._unfit(typed.account, client, now, policy)
        backend, credentials = first if first is not None else (_NOBODY, typed)
        if not isinstance(credentials, UsernamePassword):
            # A name that is no account's but stands for a bearer credential (a trust's name
            # and its platform JWT): throttled by the address alone, as such credentials are.
            return self._bearer_answered(backend, credentials, client, now, policy)
        account, password = credentials.account, credentials.password
        asking = self._throttle.consult(account, client, now)
        if asking is not None:  # first sight since this process joined Redis: ask it first
            return asking.addCallback(lambda _: self._password(typed, client))
        refusal = self._throttle.admit(account, client, now)
        if refusal is not None:
            raise throttled(refusal, account)
        if not password or (backend.refusals_cost_a_bcrypt and len(password) > MAX_PASSWORD_BYTES):
            backend = _NOBODY
        else:
            try:
                hit = backend.at_once(credentials, policy, now)
            except LoginRefused:
                self._throttle.failed(account, client, now)
                raise
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
                return self._succeeded(hit, client, now)
        placed = backend.checks_take_a_place
        if placed:
            known = self._throttle.knows(account, client, now)
            full = self._in_flight.admit(client, known=known)
            if full is not None:
                self._throttle.overloaded(account, client, now)
                raise _overloaded(full, account)
        if backend is not _NOBODY:
            self._metrics.cache_lookup(False)
        check = ensureDeferred(self._checked(backend, credentials, typed, client, policy, placed))
        return self._detached(check)

    def _next(
        self, backend: Authenticator, typed: UsernamePassword, policy: Policy
    ) -> tuple[Authenticator, UsernamePassword]:
        """Who decides after ``backend`` said "not mine", as :meth:`_password` picks the first:
        the next that answers, or nobody (for an unfit name too, or a password longer than
        bcrypt reads for one that checks with bcrypt)."""
        try:
            found = self._first(typed, policy, after=backend)
        except UnfitName:
            found = None
        if found is None:
            return _NOBODY, typed
        following, credentials = found
        assert isinstance(credentials, UsernamePassword)
        if following.refusals_cost_a_bcrypt and len(credentials.password) > MAX_PASSWORD_BYTES:
            return _NOBODY, credentials
        return following, credentials

    async def _asked(
        self,
        backend: Authenticator,
        credentials: UsernamePassword,
        typed: UsernamePassword,
        gate: _EntryGate,
        policy: Policy,
    ) -> tuple[Authenticator, Login | None]:
        """The login ``backend`` decides, or the one the next decides when it is not its to
        (:class:`NotMine`): the next one's memory is asked first, as at the door."""
        started = self._metrics.now()
        while True:
            try:
                login = await backend.authenticate(credentials, gate)
            except NotMine:
                backend, credentials = self._next(backend, typed, policy)
                if backend is _NOBODY:
                    continue
                hit = backend.at_once(credentials, policy, self._now())
                self._metrics.cache_lookup(hit is not None)
                if hit is None:
                    continue
                if hit.identity.entry:
                    await gate.admit(hit.identity.entry)
                return backend, hit
            if backend is not _NOBODY:
                self._metrics.password_checked(login is not None, started)
            return backend, login

    async def _checked(
        self,
        backend: Authenticator,
        credentials: UsernamePassword,
        typed: UsernamePassword,
        client: str,
        policy: Policy,
        placed: bool = True,
    ) -> Login:
        """:meth:`_password` past the cache: the backend asked (and the next, when it is not
        its to decide), a refusal that cost no bcrypt padded with one, the throttle told how
        it went, and only then the client's place given back (``placed``: it took one). A
        backend that could not answer (the directory down) counts as neither. A backend that
        refuses by raising :class:`LoginRefused` (an access token: its form already says it
        is no password) gives its own reason, a failure with no bcrypt padded."""
        account = credentials.account
        login: Login | None = None
        answered = overloaded = False
        gate = _EntryGate(self._throttle, account, client, self._now)
        try:
            backend, login = await self._asked(backend, credentials, typed, gate, policy)
            answered = True
            if login is None and not backend.refusals_cost_a_bcrypt:
                await self._passwords.pad(check_cost(policy, account))
        except LoginRefused:
            answered = True
            raise
        except Stopped:
            raise LoginOverloaded("the service is stopping; try again shortly", account) from None
        except Overloaded:
            overloaded = not answered
            raise LoginOverloaded(
                "too many logins are being checked; try again shortly", account
            ) from None
        finally:
            if placed:
                self._in_flight.leave(client)
            if answered:
                ended = self._throttle.failed if login is None else self._throttle.succeeded
            else:
                ended = self._throttle.overloaded if overloaded else self._throttle.abandoned
            ended(account, client, self._now(), entry=gate.entry)
        if login is None:
            raise LoginRefused(WRONG, account)
        return self._succeeded(login, client, self._now())

    def _succeeded(self, login: Login, client: str, now: float) -> Login:
        """``login``, once every hook was told of it; a hook that raises is logged."""
        for hook in self._on_success:
            try:
                hook(login, client, now)
            except Exception:
                self.log.failure("a login hook failed")
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

    def _bearer(self, credentials: object, client: str) -> Login | Deferred[Login]:
        """Credentials that name no account before they are checked (a refresh token, a
        platform JWT): no bcrypt, and they count against the client's address alone, a refusal
        as a failure."""
        now = self._now()
        policy = self._current()
        first = self._first(credentials, policy)
        if first is None:
            refusal = self._throttle.admit_address(client, now)
            if refusal is not None:
                raise throttled(refusal, None)
            raise self._refused(client, LoginRefused("these credentials are not accepted here"))
        return self._bearer_answered(*first, client, now, policy)

    def _bearer_answered(
        self, backend: Authenticator, answered: object, client: str, now: float, policy: Policy
    ) -> Login | Deferred[Login]:
        """:meth:`_bearer` once ``backend`` answered the credentials (as ``answered``)."""
        refusal = self._throttle.admit_address(client, now)
        if refusal is not None:
            raise throttled(refusal, None)
        try:
            login = backend.at_once(answered, policy, now)
        except LoginRefused as e:
            raise self._refused(client, e) from None
        if login is not None:
            self._throttle.address_ended(client, now, failed=False)
            return self._succeeded(login, client, now)
        return self._detached(ensureDeferred(self._bearer_checked(backend, answered, client)))

    async def _bearer_checked(
        self, backend: Authenticator, credentials: object, client: str
    ) -> Login:
        try:
            login = await backend.authenticate(credentials, OPEN_GATE)
        except LoginRefused as e:
            raise self._refused(client, e) from None
        except BackendUnavailable:
            self._throttle.address_ended(client, self._now(), failed=False)
            raise
        if login is None:
            raise self._refused(client, LoginRefused("these credentials are not accepted here"))
        self._throttle.address_ended(client, self._now(), failed=False)
        return self._succeeded(login, client, self._now())

    def _refused(self, client: str, refusal: LoginRefused) -> LoginRefused:
        self._throttle.address_ended(client, self._now(), failed=True)
        return refusal

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

    def refresh_token_for(self, login: Login, now: float) -> str | None:
        """A new refresh token for a login that just proved its password, or None when
        issuing is off (or none is configured) or the account's tokens would be born
        revoked."""
        return None if self._renewal is None else self._renewal.refresh_token_for(login, now)
