"""An access token as stored, and the one JSON form the tool's ``--json`` and the HTTP API
show it in (never its secret, which only its creation shows, nor its hash)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Cap = Mapping[str, tuple[str, ...]]
"""Repository pattern -> the actions a token may have there, as in a users.json rule set
(:func:`tokend.access_tokens.cap.cap_from_json` compiles it)."""

ACTIVE = "active"
EXPIRED = "expired"
REVOKED = "revoked"
TOUCH_INTERVAL = 60
"""Seconds between two records of one token's last use, at the least: the door sends one a
minute from a process, and the store writes one a minute among every process."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    """One token as stored; ``secret_hash`` is never shown."""

    id: str
    owner: str
    name: str
    secret_hash: str = field(repr=False)
    cap: Cap
    created_at: int
    expires_at: int
    revoked_at: int | None = None
    last_used_at: int | None = None
    last_used_from: str | None = None

    def usable_at(self, now: float) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and now < self.expires_at

    def state(self, now: float) -> str:
        """``revoked``, ``expired`` or ``active``: revoked wins, as it says what was done."""
        if self.revoked_at is not None:
            return REVOKED
        return EXPIRED if now >= self.expires_at else ACTIVE

    def scopes(self) -> list[str]:
        """The cap as the command line writes it, ``PATTERN:ACTIONS`` each."""
        return [f"{pattern}:{','.join(actions)}" for pattern, actions in self.cap.items()]

    def as_json(self, now: float) -> dict[str, Any]:
        """The form scripts read: times in RFC 3339 UTC (None when never)."""
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "state": self.state(now),
            "cap": {pattern: list(actions) for pattern, actions in self.cap.items()},
            "scopes": self.scopes(),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "revoked_at": rfc3339(self.revoked_at),
            "last_used_at": rfc3339(self.last_used_at),
            "last_used_from": self.last_used_from,
        }


def rfc3339(seconds: float | None) -> str | None:
    """``2026-12-03T16:04:52Z``, or None."""
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
