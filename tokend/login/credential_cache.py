"""A short-lived memory of passwords bcrypt has just accepted.

docker and containerd ask for a new token for nearly every operation, each time with the same
password; checking it again costs a full bcrypt. An entry is an HMAC under a key made fresh
for each process, so the cache holds no password, and nothing in it is useful outside this
process. The stored hash is part of the HMAC: a changed password misses at once. Only
successes are stored.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

DEFAULT_TTL = 60.0
DEFAULT_MAX_ENTRIES = 10_000


class HasPassHash(Protocol):
    @property
    def pass_hash(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    user: str
    expires: float
    value: object = None


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(8, "big") + value


class CredentialCache:
    """``(user, password, stored hash)`` triples verified within the last ``ttl`` seconds.

    ``ttl`` 0 turns it off. Every entry lives exactly ``ttl``, so insertion order is expiry
    order: expired entries are dropped from the front, and a full cache forgets the oldest. An
    entry that would outlive ``ttl`` from now (the clock went back) does not count.
    """

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        key: bytes | None = None,
    ) -> None:
        if ttl < 0 or max_entries < 1:
            raise ValueError("ttl must be >= 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = os.urandom(32) if key is None else key
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"CredentialCache(ttl={self.ttl}, entries={len(self._entries)})"

    def _digest(self, user: str, password: bytes, pass_hash: bytes) -> bytes:
        message = _field(user.encode("utf-8")) + _field(password) + _field(pass_hash)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def verified(self, user: str, password: bytes, pass_hash: bytes, now: float) -> bool:
        """True when this password was accepted against this very hash less than ttl ago."""
        return self._entry(user, password, pass_hash, now) is not None

    def add(self, user: str, password: bytes, pass_hash: bytes, now: float) -> None:
        """Remember a success; call it only after bcrypt accepted ``password`` for ``pass_hash``."""
        self.remember(user, password, pass_hash, None, now)

    def remembered(self, user: str, password: bytes, stamp: bytes, now: float) -> object:
        """What :meth:`remember` stored for this password under ``stamp`` less than ttl ago
        (a directory account's groups), or None."""
        entry = self._entry(user, password, stamp, now)
        return None if entry is None else entry.value

    def remember(self, user: str, password: bytes, stamp: bytes, value: object, now: float) -> None:
        """Remember a success and what it found. ``stamp`` is what the password was checked
        against (a stored hash, or a backend's own constant): a different stamp misses."""
        if not self.ttl:
            return
        self._expire(now)
        digest = self._digest(user, password, stamp)
        self._entries.pop(digest, None)
        self._entries[digest] = _Entry(user, now + self.ttl, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _entry(self, user: str, password: bytes, stamp: bytes, now: float) -> _Entry | None:
        if not self.ttl:
            return None
        self._expire(now)
        entry = self._entries.get(self._digest(user, password, stamp))
        if entry is not None and entry.user == user and 0 < entry.expires - now <= self.ttl:
            return entry
        return None

    def forget_users(self, users: set[str]) -> None:
        """Drop every entry of these users."""
        if not users:
            return
        for digest in [d for d, entry in self._entries.items() if entry.user in users]:
            del self._entries[digest]

    def policy_replaced(
        self, old: Mapping[str, HasPassHash], new: Mapping[str, HasPassHash]
    ) -> None:
        """Forget users a reload removed or gave a new hash; their entries can no longer hit."""
        if not self._entries:
            return  # nothing to forget: skip comparing every user of a large policy
        self.forget_users(
            {
                name
                for name, user in old.items()
                if name not in new or new[name].pass_hash != user.pass_hash
            }
        )

    def _expire(self, now: float) -> None:
        while self._entries:
            digest, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            del self._entries[digest]
