"""What fetching an issuer's discovery document or key set means, apart from how it is done.

:class:`tokend.login.federation.issuer_keys.IssuerKeys` is handed a :class:`Fetch`; the one
that speaks HTTPS (Twisted's Agent) lives at the edge, :mod:`tokend.web.issuer_fetch`, because
the core (login, policy, signing) imports nothing of ``twisted.web``. Only URLs a trust names,
or its discovery document names, are ever fetched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

MAX_BODY_BYTES = 1024 * 1024
"""A discovery document or key set is a few KiB; a larger answer is refused unread."""

TIMEOUT = 10.0
"""Seconds for connecting, and for the whole answer."""

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""Where plain ``http://`` is allowed (tests, a sidecar on the same host); HTTPS elsewhere."""

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|=|$)", re.IGNORECASE)


class FetchFailed(Exception):
    """The document could not be had; ``reason`` is short and safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Fetched:
    """A 200 answer's body and its ``Cache-Control`` header (None when it had none)."""

    body: bytes
    cache_control: str | None = None


class Fetch(Protocol):
    """GET ``url`` with certificate verification against ``ca_file`` (a PEM bundle) when given,
    else the system's trust roots; raises :class:`FetchFailed`."""

    async def __call__(self, url: str, ca_file: Path | None) -> Fetched: ...


def fetchable(url: str) -> str | None:
    """Why ``url`` may not be fetched, or None: ``https://`` with a host, or ``http://`` to the
    loopback address."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "not a URL"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return None
    return "not an https:// URL"


def max_age(cache_control: str | None) -> int | None:
    """The ``max-age`` a ``Cache-Control`` header allows (0 for ``no-store``/``no-cache``),
    or None when it says nothing of it."""
    if not cache_control:
        return None
    if _NO_CACHE.search(cache_control):
        return 0
    found = _MAX_AGE.search(cache_control)
    return int(found.group(1)) if found else None
