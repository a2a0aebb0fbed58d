"""The answer to "who is this?", whichever way it was asked (STYLE rule 14).

A password checked against users.json, a bind to the directory and a refresh token all end in
an :class:`Identity`, or in one of the refusals below; the web layer maps those to HTTP without
knowing which backend answered, and the policy decides what the identity may do.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Protocol

from tokend.access_tokens.cap import Cap
from tokend.dn import DNError, normalise_dn
from tokend.policy.model import OWN_ENTRY, Labels, Policy

USERS = "users"
"""Accounts whose password hash is in users.json."""
DIRECTORY = "ldap"
"""Accounts the LDAP directory vouches for (any name users.json does not hold)."""
FEDERATED_SOURCE = "federated"
"""Accounts a trust of issuers.json vouches for: a CI job's or a pod's platform JWT."""
ACCESS_TOKEN_SOURCE = "access token"  # noqa: S105 (a source's name, not a secret)
"""Accounts that logged in with one of their access tokens (#26): the token's cap bounds what
they get."""


@dataclass(frozen=True, slots=True)
class TokenUse:
    """The access token a login was made with: its id and name (for logs and the last use) and
    its cap, which issuing applies on top of the owner's rights now."""

    id: str
    name: str
    cap: Cap = field(hash=False)


@dataclass(frozen=True, slots=True)
class Identity:
    """An account that proved who it is, where it came from, and what the policy reads its
    rights by (:meth:`tokend.policy.model.Policy.rights`): its own users.json entry, or the
    groups.json groups its directory groups (normalised DNs) or its program labels put it
    in."""

    account: str
    source: str
    directory_groups: frozenset[str] = frozenset()
    binding: bytes = b""
    """What a refresh token issued to this identity is bound to: the users.json hash the
    password was checked against, or the directory entry's DN, stable id and password-changed
    time. A change revokes."""
    entry: str = ""
    """A directory account's entry (its DN), which the throttle counts failures by too."""
    dn_tokens_after: float | None = None
    """A directory account's refresh tokens bound to its DN alone (issued before the binding
    above) are honoured when issued after this moment; None: refused."""
    rights_from: str = OWN_ENTRY
    """Where the policy finds this identity's rights (``tokend.policy.model.OWN_ENTRY``,
    ``DIRECTORY_GROUPS`` or ``PROGRAM_LABELS``)."""
    tokens_valid_after: float | None = None
    """Refresh tokens issued to this identity before this moment are revoked: none is issued
    while it lies ahead."""
    labels: Labels = ()
    """What the external authentication program answered of this account
    (:func:`tokend.policy.model.labels_from`); the groups that name one of them give its
    rights (``PROGRAM_LABELS``), and the authorization program is told them."""
    trust: str = ""
    """The issuers.json trust that vouched for a federated identity (``FEDERATED``)."""
    claim_values: tuple[tuple[str, str], ...] = ()
    """Each claim path the trust's account and rules reference, with its value in the JWT."""
    expires_at: float | None = None
    """When the JWT a federated identity came with ends: no access token outlives it."""
    access_token: TokenUse | None = None
    """The access token this identity logged in with (``ACCESS_TOKEN_SOURCE``); None for
    every other way in."""


_MAPPED_TO_NOTHING = frozenset(
    (0x034F, 0x1806, 0x180B, 0x180C, 0x180D, 0x180F, 0xFFFC, 0xFFFD)
).union(range(0xFE00, 0xFE10), range(0xE0100, 0xE01F0))
"""Printable characters that RFC 4518 string preparation maps to nothing (the combining
grapheme joiner, Mongolian soft hyphen, variation selectors, the object replacement
character) or prohibits (U+FFFD). The other characters it maps to nothing or to a space
(soft hyphen, zero-width space and joiners, the BOM, no-break spaces) are not printable."""


class UnfitName(ValueError):
    """A name the directory would match to another spelling: no directory login may use it."""


def directory_name(account: str) -> str:
    """The one spelling of a directory account: ``account`` casefolded, when the directory's
    own matching (RFC 4518 string preparation, then caseIgnoreMatch) would leave it as it is
    but for case. Raises :class:`UnfitName` otherwise: OpenLDAP matches mozart spelled with
    a fullwidth, mathematical bold or circled m to ``uid=mozart``, so such spellings are
    refused rather than mapped, and what one person may be called stays one string for the
    throttle, the users.json shadowing, ``${account}`` and ``sub``.
    """
    if not account:
        raise UnfitName("an empty name")
    if not account.isprintable():
        raise UnfitName("a name with invisible, control or separator characters")
    if account != account.strip(" ") or "  " in account:
        raise UnfitName("a name with spaces at its ends or several in a row")
    if any(ord(char) in _MAPPED_TO_NOTHING for char in account):
        raise UnfitName("a name with characters the directory ignores")
    if unicodedata.normalize("NFKC", account) != account:
        raise UnfitName("a name the directory reads as another (Unicode NFKC)")
    # One character for one: full foldings (ß to ss, İ to i̇) and foldings other than the
    # lowercase (ς, Cherokee) are where directories' simple case mappings differ.
    if any(len(char.casefold()) != 1 or char.casefold() != char.lower() for char in account):
        raise UnfitName("a name whose case folding directories disagree on")
    folded = account.casefold()
    if unicodedata.normalize("NFKC", folded) != folded:
        raise UnfitName("a name the directory reads as another (Unicode NFKC)")
    return folded


def directory_spelling(account: str, policy: Policy) -> str | None:
    """The name a directory login of ``account`` goes by (:func:`directory_name`, which
    raises :class:`UnfitName`), or None when users.json decides: it holds the name as typed,
    or in any case (``BACH`` must not log in as the directory's bach when users.json holds
    bach), and the directory is never asked."""
    if account in policy.users:
        return None
    folded = directory_name(account)
    return None if folded in policy.folded_users else folded


class EntryGate(Protocol):
    """Asked by a backend that found the directory entry a name leads to, before it checks
    the password there: every name that reaches one entry (``uid``, ``mail``) shares the
    entry's budget of failures."""

    async def admit(self, dn: str) -> None:
        """Raises :class:`LoginThrottled` when the entry ``dn`` may not try now."""


class _OpenGate:
    async def admit(self, dn: str) -> None:
        """Every entry may try: the backend is asked outside the door (``explain``, tests)."""


def entry_name(dn: str) -> str:
    """The name a directory entry is throttled (and unlocked) under: its normalised DN behind
    a NUL, which no login name can hold (a name the directory is asked about is printable)."""
    try:
        return "\0dn:" + normalise_dn(dn)
    except DNError:
        return "\0dn:" + dn.lower()


OPEN_GATE: EntryGate = _OpenGate()


@dataclass(frozen=True, slots=True)
class Login:
    """An identity and the policy its rights are read from: for users.json accounts the very
    policy whose hash the password matched, so a reload never mixes an old password with new
    rights."""

    identity: Identity
    policy: Policy


class NotMine(Exception):
    """Raised by an authenticator's ``authenticate`` that answered the credentials but, once
    asked, found they are not its to decide (an external program's exit status 2): the door
    hands them to the next authenticator that answers them."""


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
