"""What a directory entry's operational attributes say about it: which entry it is (its stable
id), when its password last changed, whether it may log in at all; and what a password policy
says about lockout. Pure: attributes in, values out (OpenLDAP ppolicy, 389-DS, Active
Directory), so it is tested without a server and the tool can use it without ldaptor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tokend.dn import DNError, normalise_dn

ID_ATTRIBUTES = ("entryUUID", "objectGUID", "nsUniqueId")
"""The entry's stable id: OpenLDAP (and 389-DS 2.x) entryUUID, Active Directory's objectGUID
(binary, compared as hex), 389-DS's nsUniqueId; the first one present is used."""
CHANGED_ATTRIBUTES = ("pwdChangedTime", "pwdLastSet")
"""When the password last changed: ppolicy's pwdChangedTime, AD's pwdLastSet."""
CREATED_ATTRIBUTES = ("createTimestamp", "whenCreated")
LOCK_ATTRIBUTES = (
    "pwdAccountLockedTime",
    "nsAccountLock",
    "userAccountControl",
    "msDS-User-Account-Control-Computed",
)
STATE_ATTRIBUTES = ID_ATTRIBUTES + CHANGED_ATTRIBUTES + CREATED_ATTRIBUTES + LOCK_ATTRIBUTES
"""Read with every account search. Operational attributes are only returned when named, and
a directory that does not know one returns nothing for it: asking is safe everywhere."""

_AD_DISABLED = 0x2
_AD_LOCKED_OUT = 0x10
_FILETIME_EPOCH = 11_644_473_600
"""Seconds from 1601-01-01 (AD's pwdLastSet counts 100 ns from there) to 1970-01-01."""


@dataclass(frozen=True, slots=True)
class EntryState:
    """An entry's stable id, password-changed and creation times (as the directory wrote
    them), and why it may not log in (None: it may)."""

    stable_id: str = ""
    password_changed: str = ""
    created: str = ""
    inactive: str | None = None

    def binding(self, dn: str) -> bytes:
        """What a refresh token of this entry is bound to: its DN, its stable id (a new entry
        under the same DN has another) and its password-changed time (a reset ends the old
        tokens). Without a stable id, the creation time stands in."""
        identity = self.stable_id or f"created {self.created}"
        return "\0".join(("entry v2", _dn(dn), identity, self.password_changed)).encode()

    def dn_tokens_after(self) -> float | None:
        """Refresh tokens bound to the DN alone (issued before tokend bound them to the entry)
        are honoured when issued after this moment: the entry's creation and last password
        change, so that a reused DN or a reset password ends them as it ends new ones. None
        when the creation time is unknown: then they are refused."""
        created = moment(self.created)
        if created is None:
            return None
        changed = moment(self.password_changed) if self.password_changed else None
        if self.password_changed and changed is None:
            return None
        return max(created, changed or created)


def _dn(dn: str) -> str:
    try:
        return normalise_dn(dn)
    except DNError:
        return dn.lower()


def legacy_binding(dn: str) -> bytes:
    """What refresh tokens of directory accounts were bound to before: the DN alone."""
    return _dn(dn).encode("utf-8")


def _first(attributes: Mapping[str, Sequence[str]], names: Sequence[str]) -> str:
    for name in names:
        values = attributes.get(name.lower())
        if values:
            return values[0]
    return ""


def _integer(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def entry_state(attributes: Mapping[str, Sequence[str]]) -> EntryState:
    """The state of an entry from its attributes (names lowercased, values as text)."""
    return EntryState(
        stable_id=_first(attributes, ID_ATTRIBUTES).lower(),
        password_changed=_first(attributes, CHANGED_ATTRIBUTES),
        created=_first(attributes, CREATED_ATTRIBUTES),
        inactive=_inactive(attributes),
    )


def _inactive(attributes: Mapping[str, Sequence[str]]) -> str | None:
    """Why the entry may not log in, by the attributes each kind of directory locks with."""
    if attributes.get("pwdaccountlockedtime"):
        return "locked by the password policy (pwdAccountLockedTime)"
    if any(v.strip().lower() == "true" for v in attributes.get("nsaccountlock", ())):
        return "locked (nsAccountLock)"
    control = _integer(_first(attributes, ("userAccountControl",)))
    if control is not None and control & _AD_DISABLED:
        return "disabled (userAccountControl)"
    computed = _integer(_first(attributes, ("msDS-User-Account-Control-Computed",)))
    if computed is not None and computed & _AD_LOCKED_OUT:
        return "locked out (msDS-User-Account-Control-Computed)"
    return None


def moment(text: str) -> float | None:
    """Seconds since 1970 of a GeneralizedTime (``20250101120000Z``, with a fraction or not)
    or of AD's 100 ns intervals since 1601 (pwdLastSet); None for anything else."""
    text = text.strip()
    if text.isdigit() and len(text) > 14:
        return int(text) / 10_000_000 - _FILETIME_EPOCH
    if len(text) < 15 or not text.endswith("Z") or not text[:14].isdigit():
        return None
    try:
        when = datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    fraction = text[14:-1].replace(",", ".")
    extra = float("0" + fraction) if fraction[:1] == "." and fraction[1:].isdigit() else 0.0
    return when.timestamp() + extra


# -- password policies: how many failed binds lock an account --------------------------------

POLICY_FILTER = (
    "(|(objectClass=pwdPolicy)(objectClass=passwordPolicy)(objectClass=msDS-PasswordSettings)"
    "(objectClass=domainDNS))"
)
"""Entries that say when failed binds lock an account: OpenLDAP ppolicy's pwdPolicy, 389-DS's
passwordPolicy, AD's fine-grained msDS-PasswordSettings and its domain object."""
POLICY_ATTRIBUTES = (
    "pwdLockout",
    "pwdMaxFailure",
    "pwdFailureCountInterval",
    "passwordLockout",
    "passwordMaxFailure",
    "passwordResetFailureCount",
    "msDS-LockoutThreshold",
    "msDS-LockoutObservationWindow",
    "lockoutThreshold",
    "lockOutObservationWindow",
)


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """A policy entry that locks an account after ``failures`` failed binds counted over
    ``interval`` seconds (0: until a successful bind resets them)."""

    dn: str
    failures: int
    interval: float


def lockout_policy(dn: str, attributes: Mapping[str, Sequence[str]]) -> LockoutPolicy | None:
    """The lockout a policy entry sets, or None when it locks nobody."""
    first = {name: _first(attributes, (name,)) for name in POLICY_ATTRIBUTES}
    if first["pwdLockout"].upper() == "TRUE":
        failures = _integer(first["pwdMaxFailure"]) or 0
        interval = float(_integer(first["pwdFailureCountInterval"]) or 0)
    elif first["passwordLockout"].lower() in ("on", "true"):
        failures = _integer(first["passwordMaxFailure"]) or 0
        reset = _integer(first["passwordResetFailureCount"])
        interval = float(600 if reset is None else reset)  # 389-DS's default
    elif first["msDS-LockoutThreshold"] or first["lockoutThreshold"]:
        failures = _integer(first["msDS-LockoutThreshold"] or first["lockoutThreshold"]) or 0
        window = _integer(
            first["msDS-LockoutObservationWindow"] or first["lockOutObservationWindow"]
        )
        # Negative 100 ns intervals; AD's default is 30 minutes.
        interval = 1800.0 if window is None else abs(window) / 10_000_000
    else:
        return None
    return LockoutPolicy(dn, failures, interval) if failures > 0 else None


def lockout_warning(policy: LockoutPolicy, max_failures: int, window: float) -> str | None:
    """A warning when tokend's own limit lets an attacker make the directory lock an account:
    tokend binds as the person with each password tried, so its failures count there, and a
    locked account is locked at every service using the directory. None when tokend refuses
    first. ``max_failures``, ``window``: tokend's --max-failures-per-account and
    --failure-window."""
    n = policy.failures
    locks = f"the password policy {policy.dn} locks an account after {n} failed binds"
    harm = "an attacker can lock a person out of every service using the directory"
    if policy.interval <= 0:
        return (
            f"{locks}, counted until a good bind: through tokend {harm}, however slowly "
            f"(--max-failures-per-account {max_failures or 'unlimited'} per "
            f"{window:g} s); give the policy a failure count interval, and keep "
            f"--max-failures-per-account below {n}"
        )
    # tokend's windows slide: a span of `interval` s holds at most this many of them.
    windows = math.floor(policy.interval / window) + 1
    if max_failures and max_failures * windows < n:
        return None
    let_through = "unlimited failures" if not max_failures else f"{max_failures * windows} failures"
    limit = (n - 1) // windows
    longer = (
        f"--failure-window above {policy.interval:g} s with --max-failures-per-account below {n}"
    )
    if windows == 1:
        fix = f"set --max-failures-per-account below {n}"
    elif limit:
        fix = f"set --max-failures-per-account to {limit} or less, or {longer}"
    else:
        fix = f"set {longer}"
    return (
        f"{locks} within {policy.interval:g} s, and tokend lets {let_through} through in "
        f"that time: {harm}; {fix} (failures at other services count there too: leave room)"
    )
