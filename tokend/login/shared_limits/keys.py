"""The secret every daemon on one Redis shares: names hashed, news authenticated.

Redis sees throttle keys, never account names or addresses (a password typed as a name must not
travel in clear), and every message on the news channel, every failure stored, carries an HMAC
that only daemons holding the key can compute: a PUBLISH or ZADD by anyone else is dropped.

The key is derived (HKDF-SHA256) from the keys directory's shared secret (``--keys-dir``: it
stays through rotations, so daemons on either side of one agree), or else from the signing
private key, which every daemon of one registry already shares; neither goes to Redis. Daemons
with different secrets on one Redis therefore share no limits: their keys never meet, and their
news fails verification (counted, and logged now and then).
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tokend.login.refresh_tokens import _key_secret
from tokend.signing.key_set import KeySet
from tokend.signing.keys import SigningKey

NAME_INFO = b"tokend shared throttle names v1"
NEWS_INFO = b"tokend shared throttle news v1"
NAME_BYTES = 16
"""A hashed name is 128 bits (32 hex digits): collisions are out of reach, the key stays short."""
MAC_BYTES = 16
MAX_SKEW = 60.0
"""Seconds a message's time may lie behind or ahead of ours: older ones are replays (or a clock
that is far off), and are dropped."""
VERSION = "v1"

REJECTED_REASONS = ("unauthenticated", "stale", "unreadable")


class NewsRejected(ValueError):
    """A message from Redis that is not taken in; ``reason`` is one of
    :data:`REJECTED_REASONS`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


NAMES_REMEMBERED = 8192
"""Throttle keys remembered: a login asks for its account's and its address's two or three
times, and OpenSSL's one-shot HMAC gives up the GIL, which a loaded reactor pays for each
time. A bound of memory, not of who may log in: when full the memo starts over."""


class SharedKeys:
    """Hashes names and seals news with keys derived from one secret."""

    def __init__(self, secret: bytes) -> None:
        self._names = _derive(secret, NAME_INFO)
        self._news = _derive(secret, NEWS_INFO)
        self._named: dict[tuple[str, str], str] = {}

    @classmethod
    def from_signing_key(cls, key: SigningKey) -> SharedKeys:
        """The keys of every daemon holding this signing key, whatever PEM form each got."""
        return cls(_key_secret(key.jose_key.private_key))

    @classmethod
    def from_key_set(cls, keys: KeySet) -> SharedKeys:
        """The keys-directory's shared secret, which outlives rotations; without one (--key),
        the signing key's as before."""
        if keys.shared_secret is not None:
            return cls(keys.shared_secret)
        return cls.from_signing_key(keys.signing)

    def name(self, table: str, name: str) -> str:
        """The throttle key of ``name`` in ``table``: keyed, so a list of likely names cannot
        be hashed and matched against what Redis holds."""
        known = self._named.get((table, name))
        if known is not None:
            return known
        message = table.encode("ascii") + b"\0" + name.encode("utf-8", "surrogatepass")
        key = hmac.digest(self._names, message, "sha256")[:NAME_BYTES].hex()
        if len(self._named) >= NAMES_REMEMBERED:
            self._named.clear()
        self._named[table, name] = key
        return key

    def _mac(self, *parts: bytes) -> str:
        return hmac.digest(self._news, b"\0".join(parts), "sha256")[:MAC_BYTES].hex()

    def seal(self, origin: str, news: Any, now: float) -> str:
        """One message for the news channel: ``v1:<mac>:<json>``, the MAC over the JSON (which
        holds the sender, its time and the news)."""
        payload = json.dumps({"o": origin, "t": now, "n": news}, separators=(",", ":"))
        return f"{VERSION}:{self._mac(VERSION.encode(), payload.encode())}:{payload}"

    def open(self, message: str | bytes, now: float) -> tuple[str, Any]:
        """The sender and the news of a sealed message; :class:`NewsRejected` when its MAC is
        wrong (forged, or sealed with another signing key), its time is more than
        :data:`MAX_SKEW` from ``now``, or it is not a message at all."""
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        version, _, rest = text.partition(":")
        mac, _, payload = rest.partition(":")
        if version != VERSION or not payload:
            raise NewsRejected("unreadable")
        if not hmac.compare_digest(mac, self._mac(VERSION.encode(), payload.encode())):
            raise NewsRejected("unauthenticated")
        try:
            body = json.loads(payload)
            origin, at, news = str(body["o"]), float(body["t"]), body["n"]
        except (ValueError, KeyError, TypeError):
            raise NewsRejected("unreadable") from None
        if not abs(now - at) <= MAX_SKEW:
            raise NewsRejected("stale")
        return origin, news

    def member(self, redis_key: str, at: float) -> str:
        """A failure as stored in a sorted set: its exact time, a nonce (two failures in one
        microsecond stay two), and a MAC binding both to the set, so that a failure copied
        into another account's set, or written by anyone else, does not count."""
        stamp = f"{at!r}:{os.urandom(6).hex()}"
        return f"{stamp}:{self._mac(redis_key.encode(), stamp.encode())}"

    def member_time(self, redis_key: str, member: str | bytes) -> float | None:
        """The time of a stored failure, or None when it does not carry a valid MAC."""
        text = member.decode("utf-8", "replace") if isinstance(member, bytes) else str(member)
        stamp, _, mac = text.rpartition(":")
        if not hmac.compare_digest(mac, self._mac(redis_key.encode(), stamp.encode())):
            return None
        try:
            return float(stamp.partition(":")[0])
        except ValueError:
            return None
