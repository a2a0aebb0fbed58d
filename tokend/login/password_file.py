"""Accounts of users.json: a password checked with bcrypt against the stored hash, and the
refusal of names nobody holds against a dummy hash at the cost a known name costs."""

from __future__ import annotations

from collections.abc import Callable

from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import OPEN_GATE, USERS, EntryGate, Identity, Login
from tokend.login.passwords import PasswordChecker
from tokend.login.refresh_tokens import RefreshClaims, RefreshTokens
from tokend.policy.model import Policy, UserPolicy

MAX_HASH_CHECKS = 3
"""Password checks per login when reloads keep replacing the user's hash meanwhile."""


def _identity(account: str, user: UserPolicy) -> Identity:
    return Identity(
        account, USERS, binding=user.pass_hash, tokens_valid_after=user.tokens_valid_after
    )


class PasswordFile:
    """Checks a password against the live policy's users.json hash; answers the names
    users.json holds (as typed: any other spelling is not theirs).

    An unknown name costs a bcrypt at a cost drawn from the policy's own mix, so response
    time does not tell which names exist. :class:`tokend.threads.Overloaded` passes through
    when the bcrypt queue is full.
    """

    credential_types: tuple[type, ...] = (UsernamePassword,)
    source = USERS
    refusals_cost_a_bcrypt = True
    checks_take_a_place = True

    def __init__(
        self,
        current: Callable[[], Policy],
        passwords: PasswordChecker,
        cache: CredentialCache,
        clock: Callable[[], float],
    ) -> None:
        self._current = current
        self._passwords = passwords
        self._cache = cache
        self._now = clock

    def answers(self, credentials: object, policy: Policy) -> object | None:
        assert isinstance(credentials, UsernamePassword)
        return credentials if credentials.account in policy.users else None

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        """A login the credential cache answers for this policy's hash: no bcrypt."""
        assert isinstance(credentials, UsernamePassword)
        account, password = credentials.account, credentials.password
        user = policy.users.get(account)
        if user is None or user.robot:
            return None
        if self._cache.verified(account, password, user.pass_hash, now):
            return Login(_identity(account, user), policy)
        return None

    async def authenticate(self, credentials: object, gate: EntryGate = OPEN_GATE) -> Login | None:
        """The login whose stored hash this password matched, or None (``gate``: users.json
        names no entry a second name could reach).

        A reload may land while bcrypt runs. Rights come only from a policy whose stored hash
        the password was checked against, so an old password never earns a new policy's
        rights; a hash that changed meanwhile is checked again. The cache answers for a hash
        only what bcrypt answered for that same hash.
        """
        assert isinstance(credentials, UsernamePassword)
        account, password = credentials.account, credentials.password
        for attempt in range(MAX_HASH_CHECKS):
            policy = self._current()
            user = policy.users.get(account)
            # A robot has no password: refused against a dummy hash, as an unknown name is.
            checked = user.pass_hash if user is not None and not user.robot else None
            # The first hash was looked up in the cache by the caller already, moments ago.
            if attempt and checked is not None:
                hit = self.at_once(credentials, policy, self._now())
                if hit is not None:
                    return hit
            verified = await self._passwords.verify(checked, password, policy.dummy_cost(account))
            if not verified or checked is None:
                return None
            current = self._current()
            user_now = current.users.get(account)
            if user_now is not None and user_now.pass_hash == checked:
                self._cache.add(account, password, checked, self._now())
                return Login(_identity(account, user_now), current)
        return None

    def vouch_at_once(
        self, claims: RefreshClaims, tokens: RefreshTokens, policy: Policy
    ) -> Login | None:
        """A refresh token of a users.json account holds while its hash and its
        ``tokens_valid_after`` allow: known at once, from the policy."""
        tokens.identity(claims, policy)
        return Login(_identity(claims.account, policy.users[claims.account]), policy)

    async def vouch(self, claims: RefreshClaims, tokens: RefreshTokens, policy: Policy) -> Login:
        login = self.vouch_at_once(claims, tokens, policy)
        assert login is not None
        return login


class UnknownNames:
    """The last way in for a name and password: names no other authenticator answers, checked
    by the password file against a dummy hash (so refused) at the cost a known name costs."""

    credential_types: tuple[type, ...] = (UsernamePassword,)
    source = USERS
    refusals_cost_a_bcrypt = True
    checks_take_a_place = True

    def __init__(self, password_file: PasswordFile) -> None:
        self._file = password_file

    def answers(self, credentials: object, policy: Policy) -> object | None:
        return credentials

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        return self._file.at_once(credentials, policy, now)

    async def authenticate(self, credentials: object, gate: EntryGate = OPEN_GATE) -> Login | None:
        return await self._file.authenticate(credentials, gate)
