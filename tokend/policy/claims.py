"""Claims of a platform's token as policy reads them: paths into the claims, the
``${claim.PATH}`` templates an account and rule keys are written with, and conditions.

Pure string work on the (already verified) claims; tokend.policy.trusts puts them together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokend.policy.documents import shown
from tokend.policy.rules import is_valid_component
from tokend.scope import MAX_NAME_LENGTH

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SEGMENT = re.compile(r"\.([A-Za-z0-9_-]+)|\.?\[([^\[\]]+)\]")
_PLACEHOLDER = re.compile(r"\$\{([^{}]*)\}")
_CLAIM = "claim"
_ACCOUNT = "account"


class ClaimPathError(ValueError):
    """A claim path that does not follow the grammar; the message says how to write one."""


@dataclass(frozen=True, slots=True)
class ClaimPath:
    """Where a value sits in a token's claims: ``repository``, ``a.b.c``, or with a key that
    holds dots in brackets, ``[kubernetes.io].namespace``."""

    keys: tuple[str, ...]

    @property
    def text(self) -> str:
        """The path written the one way :func:`claim_path` reads back."""
        written = ""
        for key in self.keys:
            if not _PLAIN_KEY.fullmatch(key):
                written += f"[{key}]"
            else:
                written += f".{key}" if written else key
        return written

    def find(self, claims: Mapping[str, Any]) -> str | None:
        """The string at this path, or None: missing, or not a string (a number, a list)."""
        value: Any = claims
        for key in self.keys:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value if isinstance(value, str) else None


def claim_path(text: str) -> ClaimPath:
    """Read a claim path; raises :class:`ClaimPathError`."""
    keys: list[str] = []
    at = 0
    first = _PLAIN_KEY.match(text)
    if first is not None:
        keys.append(first.group(0))
        at = first.end()
    while at < len(text):
        found = _SEGMENT.match(text, at)
        if found is None or (not keys and text[at] == "."):
            raise ClaimPathError(
                f"not a claim path: {shown(text)} (write repository, a.b.c, or a key holding "
                "dots in brackets: [kubernetes.io].namespace)"
            )
        keys.append(found.group(1) or found.group(2))
        at = found.end()
    if not keys:
        raise ClaimPathError("an empty claim path")
    return ClaimPath(tuple(keys))


class _AccountPart:
    """``${account}`` in a rule key."""

    def __repr__(self) -> str:
        return "${account}"


ACCOUNT_PART = _AccountPart()
Part = str | ClaimPath | _AccountPart


@dataclass(frozen=True, slots=True)
class Template:
    """Text with ``${claim.PATH}`` (and, in rule keys, ``${account}``) placeholders."""

    text: str
    parts: tuple[Part, ...] = field(compare=False, repr=False)

    @property
    def claims(self) -> tuple[ClaimPath, ...]:
        return tuple(part for part in self.parts if isinstance(part, ClaimPath))

    @property
    def literal(self) -> bool:
        return all(isinstance(part, str) for part in self.parts)

    def fill(self, account: str | None, values: Mapping[str, str], safe: bool) -> str | None:
        """The text with each placeholder replaced; None when a claim is missing or, with
        ``safe``, when a value is no repository path (``${account}``: no path component)."""
        filled: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                filled.append(part)
            elif isinstance(part, ClaimPath):
                value = values.get(part.text)
                if value is None or (safe and not is_safe_path(value)):
                    return None
                filled.append(value)
            else:
                if account is None or not is_valid_component(account):
                    return None
                filled.append(account)
        return "".join(filled)


def template(text: str, account_allowed: bool) -> Template:
    """Read placeholders; raises :class:`ClaimPathError` for one it does not know."""
    parts: list[Part] = []
    at = 0
    for found in _PLACEHOLDER.finditer(text):
        if found.start() > at:
            parts.append(text[at : found.start()])
        inside = found.group(1)
        if inside == _ACCOUNT and account_allowed:
            parts.append(ACCOUNT_PART)
        elif inside.startswith(_CLAIM + ".") or inside.startswith(_CLAIM + "["):
            rest = inside[len(_CLAIM) :]
            parts.append(claim_path(rest[1:] if rest.startswith(".") else rest))
        else:
            known = "${claim.PATH}" + (" and ${account}" if account_allowed else "")
            raise ClaimPathError(f"unknown placeholder ${{{inside}}} (known: {known})")
        at = found.end()
    if at < len(text):
        parts.append(text[at:])
    if "${" in "".join(part for part in parts if isinstance(part, str)):
        raise ClaimPathError("a placeholder is not closed: write ${claim.PATH}")
    return Template(text, tuple(parts))


def is_safe_path(value: str) -> bool:
    """Whether a claim value may stand in a rule key: a repository path of lower-case
    components (``acme/app``), never empty, ``*``, ``..``, upper case or ``/`` at the ends,
    so that no token can widen a rule by what its claims say."""
    return len(value) <= MAX_NAME_LENGTH and all(
        is_valid_component(part) for part in value.split("/")
    )


@dataclass(frozen=True, slots=True)
class Condition:
    """A claim that must hold one of ``values``: exact, or a glob where ``*`` stands for any
    run of characters (``/`` included)."""

    path: ClaimPath
    values: tuple[str, ...]

    def holds(self, claims: Mapping[str, Any]) -> bool:
        value = self.path.find(claims)
        return value is not None and any(_glob_matches(want, value) for want in self.values)


def _glob_matches(pattern: str, value: str) -> bool:
    """Each piece between two ``*`` placed where it first fits: linear in the value, so a
    token's long claim costs no backtracking."""
    if "*" not in pattern:
        return value == pattern
    pieces = pattern.split("*")
    first, last = pieces[0], pieces[-1]
    end = len(value) - len(last)
    if end < len(first) or not value.startswith(first) or not value.endswith(last):
        return False
    at = len(first)
    for piece in pieces[1:-1]:
        found = value.find(piece, at, end)
        if found < 0:
            return False
        at = found + len(piece)
    return True


SUBJECT = template("${claim.sub}", account_allowed=False)
"""The token's subject, the account a :class:`tokend.policy.trusts.Trust` built in code goes
by unless told otherwise (issuers.json always says)."""
