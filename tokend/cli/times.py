"""Moments as the tool prints them: RFC 3339 in UTC, and how far from now in plain words."""

from __future__ import annotations

from tokend.signing.tokens import rfc3339

MINUTE, HOUR, DAY = 60, 3600, 86400


def span(seconds: float) -> str:
    """A duration rounded down to its largest unit: ``45 s``, ``4 min``, ``3 h``, ``10 days``."""
    seconds = int(abs(seconds))
    if seconds < MINUTE:
        return f"{seconds} s"
    if seconds < HOUR:
        return f"{seconds // MINUTE} min"
    if seconds < 2 * DAY:
        return f"{seconds // HOUR} h"
    return f"{seconds // DAY} days"


def relative(moment: float, now: float) -> str:
    """``in 4 min`` or ``4 min ago``."""
    if moment >= now:
        return f"in {span(moment - now)}"
    return f"{span(now - moment)} ago"


def when(moment: float, now: float) -> str:
    """``2025-06-30T12:00:00Z (in 4 min)``."""
    return f"{rfc3339(moment)} ({relative(moment, now)})"
