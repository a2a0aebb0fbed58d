"""Accounts of users.json: a password checked with bcrypt against the stored hash."""

from __future__ import annotations

from collections.abc import Callable

from tokend.login.credential_cache import CredentialCache
from tokend.login.identity import OPEN_GATE, USERS, EntryGate, Identity, Login
from tokend.login.passwords import PasswordChecker
from tokend.policy.model import Policy

MAX_HASH_CHECKS = 3
"""Password checks per login when reloads keep replacing the user's hash meanwhile."""


class PasswordFile:
    """Checks a password against the live policy's users.json hash.

    An unknown name costs a bcrypt at a cost drawn from the policy's own mix, so response
    time does not tell which names exist. :class:`tokend.threads.Overloaded` passes through
    when the bcrypt queue is full.
    """

    source = USERS
    refusals_cost_a_bcrypt = True

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

    def cached(self, account: str, password: bytes, policy: Policy, now: float) -> Login | None:
        """A login the credential cache answers for this policy's hash: no bcrypt."""
        user = policy.users.get(account)
        if user is not None and self._cache.verified(account, password, user.pass_hash, now):
            return Login(Identity(account, USERS, binding=user.pass_hash), policy)
        return None

    async def authenticate(
        self, account: str, password: bytes, gate: EntryGate = OPEN_GATE
    ) -> Login | None:
        """The login whose stored hash this password matched, or None (``gate``: users.json
        names no entry a second name could reach).

        A reload may land while bcrypt runs. Rights come only from a policy whose stored hash
        the password was checked against, so an old password never earns a new policy's
        rights; a hash that changed meanwhile is checked again. The cache answers for a hash
        only what bcrypt answered for that same hash.
        """
        for attempt in range(MAX_HASH_CHECKS):
            policy = self._current()
            user = policy.users.get(account)
            checked = user.pass_hash if user is not None else None
            # The first hash was looked up in the cache by the caller already, moments ago.
            if attempt and checked is not None:
                hit = self.cached(account, password, policy, self._now())
                if hit is not None:
                    return hit
            verified = await self._passwords.verify(checked, password, policy.dummy_cost(account))
            if not verified or checked is None:
                return None
            current = self._current()
            user_now = current.users.get(account)
            if user_now is not None and user_now.pass_hash == checked:
                self._cache.add(account, password, checked, self._now())
                return Login(Identity(account, USERS, binding=checked), current)
        return None
