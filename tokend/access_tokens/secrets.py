"""The secret of an access token: shown once, stored only as a hash, recognisable when leaked.

``tkd_at_`` + 43 base62 characters (256 random bits) + 6 base62 characters of CRC32. Base62
rather than base32: 49 characters instead of 59, still only letters and digits, so a
double-click selects the whole secret and no shell, URL or Basic header needs escaping. The
checksum lets a secret scanner (and the login door) tell a real secret from look-alike text
without a database lookup: CRC32 catches every burst of up to 32 bits, so every single-character
change and every swap of two neighbours.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from dataclasses import dataclass, field

PREFIX = "tkd_at_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 43
"""62**43 > 2**256: 43 characters drawn uniformly carry at least 256 random bits."""
CHECKSUM_LENGTH = 6
"""62**6 > 2**32: any CRC32 fits in six base62 characters."""
SECRET_LENGTH = len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH

SECRET_PATTERN = rf"\b{PREFIX}[0-9A-Za-z]{{{BODY_LENGTH + CHECKSUM_LENGTH}}}\b"
"""The regular expression for secret scanners (Python, PCRE and RE2 read it alike); written
in docs/security.md."""

_DIGITS = {char: value for value, char in enumerate(ALPHABET)}


@dataclass(frozen=True, slots=True)
class Parsed:
    """Text that has the form of an access token's secret; its repr never shows it."""

    secret: str = field(repr=False)


def _checksum(text: str) -> str:
    value = zlib.crc32(text.encode("ascii"))
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, len(ALPHABET))
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def new_secret() -> str:
    """A fresh secret from the operating system's CSPRNG."""
    body = PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return body + _checksum(body)


def parse(text: str) -> Parsed | None:
    """The secret if ``text`` has its form and checksum, else None. Length first: a login may
    carry a megabyte of password, and nothing here is hashed."""
    if len(text) != SECRET_LENGTH or not text.startswith(PREFIX):
        return None
    rest = text[len(PREFIX) :]
    if not (rest.isascii() and rest.isalnum()):
        return None
    body = text[: len(PREFIX) + BODY_LENGTH]
    if _checksum(body) != text[len(body) :]:
        return None
    return Parsed(text)


def secret_in(password: bytes) -> str | None:
    """The secret a login's ``password`` holds, or None when it is none (wrong form or
    checksum); the length is checked before anything else, so a megabyte costs nothing."""
    if len(password) != SECRET_LENGTH:
        return None
    try:
        parsed = parse(password.decode("ascii"))
    except UnicodeDecodeError:
        return None
    return None if parsed is None else parsed.secret


def secret_hash(secret: str | bytes) -> bytes:
    """What the database stores and is searched by (of the secret, or of a login's password
    that holds it). SHA-256 is enough: a 256-bit random secret cannot be guessed from its hash,
    so no slow hash (and no bcrypt per login) is needed."""
    return hashlib.sha256(secret.encode("ascii") if isinstance(secret, str) else secret).digest()


def matches(secret: str, stored_hash: bytes) -> bool:
    """Whether ``secret`` is the one ``stored_hash`` was made from, compared in constant time."""
    return hmac.compare_digest(secret_hash(secret), stored_hash)
