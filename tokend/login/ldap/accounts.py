"""Accounts of the LDAP directory, as an authenticator behind :mod:`tokend.login.logins`.

The credential cache remembers a directory login (its DN and groups) as it remembers a bcrypt
success, so a busy CI logging in again and again makes no directory round trip; group
membership, a removed and a locked account take effect within the cache's ttl. Refresh tokens
of directory accounts are bound to the entry's DN, its stable id (entryUUID, objectGUID) and
its password-changed time: the account gone, moved, locked or disabled, deleted and added
again under its DN, or given a new password, revokes them; each refresh looks it up again
(also remembered for the cache's ttl).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import (
    DIRECTORY,
    OPEN_GATE,
    BackendUnavailable,
    EntryGate,
    Identity,
    Login,
    UnfitName,
    directory_name,
    directory_spelling,
    entry_name,
)
from tokend.login.ldap.client import Directory, DirectoryAccount
from tokend.login.ldap.connections import DirectoryUnavailable
from tokend.login.refresh_tokens import InvalidRefreshToken, RefreshClaims, RefreshTokens
from tokend.logs.escaping import printable
from tokend.logs.namespaces import NamedLogger
from tokend.policy.model import DIRECTORY_GROUPS, Policy

_LOGIN_STAMP = b"\0directory login"
_LOOKUP_STAMP = b"\0directory lookup"
"""Cache stamps: a directory entry can never be read back as a users.json hash check."""


class DirectoryAccounts:
    """Names users.json does not hold, checked by binding to the directory as them."""

    credential_types: tuple[type, ...] = (UsernamePassword,)
    source = DIRECTORY
    refusals_cost_a_bcrypt = False
    checks_take_a_place = True

    def __init__(
        self,
        directory: Directory,
        current: Callable[[], Policy],
        cache: CredentialCache,
        clock: Callable[[], float],
        retry_after: float,
    ) -> None:
        """A directory that cannot answer becomes a 503 asking the client to come back in
        ``retry_after`` s."""
        self._directory = directory
        self.entry_names = EntryNames(directory)
        """For ``tokend unlock``: the entry a name leads to (:class:`EntryNames`)."""
        self._current = current
        self._cache = cache
        self._now = clock
        self._retry_after = max(1, math.ceil(retry_after))

    def answers(self, credentials: object, policy: Policy) -> object | None:
        """Every name users.json does not decide, spelled as the directory's one spelling
        (:func:`tokend.login.identity.directory_spelling`, which raises
        :class:`UnfitName`)."""
        assert isinstance(credentials, UsernamePassword)
        spelled = directory_spelling(credentials.account, policy)
        return None if spelled is None else UsernamePassword(spelled, credentials.password)

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        found = self._cache.remembered(credentials.account, credentials.password, _LOGIN_STAMP, now)
        return Login(found, policy) if isinstance(found, Identity) else None

    async def authenticate(self, credentials: object, gate: EntryGate = OPEN_GATE) -> Login | None:
        """Logins refuses an empty password before it gets here, and the client again."""
        assert isinstance(credentials, UsernamePassword)
        account, password = credentials.account, credentials.password
        try:
            found = await self._directory.authenticate(account, password, gate)
        except DirectoryUnavailable:
            raise self._down(account) from None
        if found is None:
            return None
        identity = _identity(account, found)
        self._cache.remember(account, password, _LOGIN_STAMP, identity, self._now())
        return Login(identity, self._current())

    async def lookup(self, account: str) -> Identity | None:
        known = self._cache.remembered(account, b"", _LOOKUP_STAMP, self._now())
        if isinstance(known, Identity):
            return known
        try:
            found = await self._directory.lookup(account)
        except DirectoryUnavailable:
            raise self._down(account) from None
        if found is None:
            return None
        identity = _identity(account, found)
        self._cache.remember(account, b"", _LOOKUP_STAMP, identity, self._now())
        return identity

    def vouch_at_once(
        self, claims: RefreshClaims, tokens: RefreshTokens, policy: Policy
    ) -> Login | None:
        """A directory account's refresh token is held against the directory (:meth:`vouch`),
        for a name that is still the directory's to answer."""
        try:
            spelled = directory_spelling(claims.account, policy)
        except UnfitName:
            raise InvalidRefreshToken("not a directory name") from None
        if spelled is None:
            raise InvalidRefreshToken("account now in users.json")
        return None

    async def vouch(self, claims: RefreshClaims, tokens: RefreshTokens, policy: Policy) -> Login:
        """The entry looked up again (remembered for the cache's ttl): still there, with the
        id and password-changed time the token is bound to."""
        found = await self.lookup(claims.account)
        if found is None:
            raise InvalidRefreshToken("no active account in the directory")
        tokens.admit_directory(claims, found)
        return Login(found, self._current())

    def _down(self, account: str) -> BackendUnavailable:
        return BackendUnavailable(
            "the account directory is unavailable; try again shortly", account, self._retry_after
        )


def _identity(account: str, found: DirectoryAccount) -> Identity:
    return Identity(
        account,
        DIRECTORY,
        frozenset(found.groups),
        binding=found.state.binding(found.dn),
        entry=found.dn,
        dn_tokens_after=found.state.dn_tokens_after(),
        rights_from=DIRECTORY_GROUPS,
    )


class EntryNames:
    """For ``tokend unlock NAME``: the throttle name of the entry NAME leads to, looked up in
    the directory now (none when it finds none, or cannot answer: that is logged, and the
    entry's failures then end with the failure window)."""

    log = NamedLogger("tokend.login.directory_accounts.EntryNames")

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    async def __call__(self, account: str) -> list[str]:
        try:
            spelled = directory_name(account)
        except UnfitName:
            return []
        try:
            found = await self._directory.lookup(spelled)
        except DirectoryUnavailable as e:
            self.log.warn(
                "tokend unlock {account}: the directory did not answer ({reason}); failures "
                "counted for its entry end with --failure-window",
                account=printable(account),
                reason=str(e),
            )
            return []
        return [] if found is None else [entry_name(found.dn)]
