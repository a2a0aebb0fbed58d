"""Building the token: claims from a decision, signed by the key in force.

Pure: the clock's reading and the random source are passed in, so tests can pin both. The
signer is the daemon's :class:`~tokend.signing.holder.KeyHolder`, so a renewed certificate or
an activated key signs the next token, and each token is one set's, never a mix.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from tokend.scope import ResourceScope

CLOCK_SKEW_SECONDS = 10
"""How far ``nbf``/``iat`` lie in the past: the registry allows 60 s of skew, zot none."""


class Signer(Protocol):
    def sign(self, claims: dict[str, object]) -> str: ...


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: str


def rfc3339(timestamp: float) -> str:
    """UTC, whole seconds, ``Z`` suffix: the form skopeo parses strictly."""
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def access_claim(granted: Sequence[ResourceScope]) -> list[dict[str, object]]:
    """Only resources with at least one granted action; ``[]`` when none."""
    return [
        {"type": scope.type, "name": scope.name, "actions": list(scope.actions)}
        for scope in granted
        if scope.actions
    ]


class TokenIssuer:
    """Claims for one decision, signed; everything constant per second is computed once."""

    def __init__(
        self,
        signer: Signer,
        issuer: str,
        ttl: int,
        new_jti: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self._signer = signer
        self.issuer = issuer
        self.ttl = ttl
        self._new_jti = new_jti
        # (second, its RFC 3339 text): datetime + strftime cost a few µs per token, and under
        # load a thousand tokens share one second. One tuple, replaced whole.
        self._issued_at: tuple[int, str] = (-1, "")

    def issue(
        self,
        account: str,
        audience: str,
        granted: Sequence[ResourceScope],
        now: float,
        ttl: int | None = None,
    ) -> IssuedToken:
        """``ttl``: a shorter lifetime than the configured one (a federated login's trust asks
        for less, or its JWT ends sooner); never a longer one."""
        issued = int(now)
        ttl = self.ttl if ttl is None else max(0, min(ttl, self.ttl))
        second, issued_at = self._issued_at
        if second != issued:
            issued_at = rfc3339(issued)
            self._issued_at = (issued, issued_at)
        past = issued - CLOCK_SKEW_SECONDS
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": account,
            "aud": audience,
            "exp": issued + ttl,
            "nbf": past,
            "iat": past,
            "jti": self._new_jti(),
            "access": access_claim(granted),
        }
        return IssuedToken(self._signer.sign(claims), ttl, issued_at)
