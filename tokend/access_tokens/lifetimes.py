"""How long an access token lives: written ``90d``, ``12h`` or ``30m`` (the tool) or as whole
seconds (the HTTP API); 90 days unless said, at least a minute, at most
``--access-token-max-ttl``. A token always expires: a forgotten one ends by itself.
"""

from __future__ import annotations

import re

DAY = 86_400
DEFAULT_LIFETIME = 90 * DAY
MIN_LIFETIME = 60
DEFAULT_MAX_TTL = 365 * DAY
HIGHEST_MAX_TTL = 10 * 365 * DAY
"""The highest ``--access-token-max-ttl`` accepted, as for refresh tokens."""

UNITS = {"d": DAY, "h": 3600, "m": 60}
_LIFETIME = re.compile(r"([0-9]{1,9})([dhm])")
_LONGEST_SHOWN = 20


class LifetimeError(ValueError):
    """A lifetime that cannot be used, as one sentence naming the value."""


def parse_lifetime(text: str | None, max_ttl: int = DEFAULT_MAX_TTL) -> int:
    """Seconds from ``90d``, ``12h`` or ``30m``; None: the default, or ``max_ttl`` when that is
    shorter (an operator who lowered the maximum wants short tokens, not refusals)."""
    if text is None:
        return min(DEFAULT_LIFETIME, max_ttl)
    match = _LIFETIME.fullmatch(text) if len(text) <= _LONGEST_SHOWN else None
    if match is None:
        shown = text if len(text) <= _LONGEST_SHOWN else text[:_LONGEST_SHOWN] + "…"
        raise LifetimeError(f"expected a lifetime such as 90d, 12h or 30m, not {shown!r}")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    return _bounded(seconds, text, max_ttl)


def checked_lifetime(seconds: object, max_ttl: int = DEFAULT_MAX_TTL) -> int:
    """A lifetime given in seconds (JSON), held to the same bounds."""
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise LifetimeError(f"expected a lifetime in whole seconds, not {seconds!r}")
    return _bounded(seconds, shown_lifetime(seconds), max_ttl)


def shown_lifetime(seconds: int) -> str:
    """``seconds`` in the largest unit that divides it: 90d, 12h, 30m, else 45s."""
    for unit, length in UNITS.items():
        if seconds and seconds % length == 0:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


def _bounded(seconds: int, written: str, max_ttl: int) -> int:
    if seconds < MIN_LIFETIME:
        raise LifetimeError(f"a token lives at least one minute (1m), not {written}")
    if seconds > max_ttl:
        raise LifetimeError(
            f"a token lives at most {shown_lifetime(max_ttl)} (--access-token-max-ttl), "
            f"not {written}"
        )
    return seconds
