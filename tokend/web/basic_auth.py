"""Parsing of the ``Authorization`` header: HTTP Basic only, and every malformation named."""

from __future__ import annotations

import binascii
from base64 import b64decode
from dataclasses import dataclass

MAX_AUTHORIZATION_BYTES = 16384
"""Room for a platform JWT as the password (a trust's name and its token): Twisted bounds all
headers together to as much."""


class MalformedCredentials(ValueError):
    """The header is present but cannot be read as Basic credentials."""


class UnsupportedScheme(ValueError):
    """Not Basic (e.g. a Bearer token sent to the token endpoint)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: bytes

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def parse_authorization(header: bytes | None) -> Credentials | None:
    """``None`` means anonymous: no header, or the empty ``:`` some clients send."""
    if header is None:
        return None
    if len(header) > MAX_AUTHORIZATION_BYTES:
        raise MalformedCredentials(f"Authorization header longer than {MAX_AUTHORIZATION_BYTES}")
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        raise UnsupportedScheme("only Basic authentication is accepted here")
    try:
        decoded = b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedCredentials("Basic credentials are not valid base64") from None
    raw_user, colon, password = decoded.partition(b":")
    if not colon:
        raise MalformedCredentials("Basic credentials have no ':' between user and password")
    try:
        username = raw_user.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedCredentials("Basic user name is not UTF-8") from None
    if not username.isprintable():
        raise MalformedCredentials("Basic user name has control characters")
    if not username and not password:
        return None
    return Credentials(username, password)
