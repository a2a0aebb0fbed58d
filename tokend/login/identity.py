"""The answer to "who is this?", whichever way it was asked (STYLE rule 14).

A password checked against users.json, a bind to the directory and a refresh token all end in
an :class:`Identity`, or in one of the refusals below; the web layer maps those to HTTP without
knowing which backend answered, and the policy decides what the identity may do.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokend.policy.model import Policy, UserPolicy

USERS = "users"
"""Accounts whose password hash is in users.json."""
DIRECTORY = "ldap"
"""Accounts the LDAP directory vouches for (any name users.json does not hold)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An account that proved who it is, where it came from, and (for a directory account)
    the normalised DNs of the directory groups it belongs to."""

    account: str
    source: str
    directory_groups: frozenset[str] = frozenset()
    binding: bytes = b""
    """What a refresh token issued to this identity is bound to: the users.json hash the
    password was checked against, or the account's DN in the directory. A change revokes."""

    def member(self, policy: Policy) -> UserPolicy | None:
        """This identity's rights in ``policy``: its users.json entry, or, for a directory
        account, the groups.json groups its directory groups put it in."""
        if self.source == DIRECTORY:
            return policy.directory_member(self.account, self.directory_groups)
        return policy.users.get(self.account)


def directory_spelling(account: str, policy: Policy) -> str | None:
    """The name a directory login of ``account`` goes by: casefolded, since directories match
    names without regard to case (one person, one throttle budget, one ``${account}``); None
    when users.json holds the name in any case, for then users.json decides and the directory
    is never asked (``BACH`` must not log in as the directory's bach when users.json holds
    bach)."""
    folded = account.casefold()
    return None if folded in policy.folded_users else folded


@dataclass(frozen=True, slots=True)
class Login:
    """An identity and the policy its rights are read from: for users.json accounts the very
    policy whose hash the password matched, so a reload never mixes an old password with new
    rights."""

    identity: Identity
    policy: Policy


class LoginError(Exception):
    """A login that did not end in an identity; ``message`` is safe to show and to log."""

    def __init__(self, message: str, account: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.account = account


class LoginRefused(LoginError):
    """Unknown account, wrong password, revoked refresh token: the client must log in anew.

    ``token`` is a refresh token's fingerprint (never the token) when one was refused."""

    def __init__(self, message: str, account: str | None = None, token: str | None = None):
        super().__init__(message, account)
        self.token = token


class LoginThrottled(LoginError):
    """Too many failures for the account or from the address: nothing is checked until later.

    ``by`` names which of the two reached its limit (``account`` or ``address``), for metrics.
    """

    def __init__(
        self, message: str, account: str | None, retry_after: int, by: str = "address"
    ) -> None:
        super().__init__(message, account)
        self.retry_after = retry_after
        self.by = by


class LoginOverloaded(LoginError):
    """The password-check queue (or this address's share of it) is full."""


class BackendUnavailable(LoginError):
    """The backend that must answer (the directory) cannot now: try again later, not a 401."""

    def __init__(self, message: str, account: str | None, retry_after: int) -> None:
        super().__init__(message, account)
        self.retry_after = retry_after
