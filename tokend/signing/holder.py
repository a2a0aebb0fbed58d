"""The signing keys in force: one :class:`KeySet` swapped whole, so a token is signed with the
old set's key or the new one's, never a mix. A replacement that failed to load leaves the set
serving and is remembered, for the log and for /healthz, until a good one arrives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tokend.signing.key_set import CURRENT, KeySet, SetKey
from tokend.signing.keys import SigningKey


class KeySource(Protocol):
    """Whatever holds the set in force: read ``current`` once per use."""

    @property
    def current(self) -> KeySet: ...


@dataclass(frozen=True, slots=True)
class FixedKeys:
    """A set that never changes: one key given in code (the tool, tests)."""

    current: KeySet

    @classmethod
    def of(cls, key: SigningKey) -> FixedKeys:
        return cls(KeySet(SetKey("", CURRENT, key, Path(), None)))


class KeyHolder:
    """Holds the key set in force and tells listeners (the refresh tokens' cache) of a swap."""

    def __init__(self, keys: KeySet, now: float) -> None:
        self.current: KeySet = keys
        self.loaded_at = now
        self.failed_at: float | None = None
        self.last_error: str | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        self._listeners: list[Callable[[KeySet, KeySet], None]] = []

    @property
    def files_valid(self) -> bool:
        """Whether the key files loaded at the last attempt (start-up counts as one)."""
        return self.last_error is None

    @property
    def kid(self) -> str:
        """The kid of the key signing now."""
        return self.current.signing.kid

    def sign(self, claims: dict[str, object]) -> str:
        """Signed by the current set's signing key (``current`` is read once)."""
        return self.current.sign(claims)

    def on_replace(self, listener: Callable[[KeySet, KeySet], None]) -> None:
        """Call ``listener(old, new)`` after every swap."""
        self._listeners.append(listener)

    def replace(self, keys: KeySet, now: float) -> None:
        """Swap in ``keys``: the files just loaded, so an earlier failure is cleared."""
        old = self.current
        self.current = keys
        self.loaded_at = now
        self.failed_at = None
        self.last_error = None
        self.reloads_ok += 1
        for listener in self._listeners:
            listener(old, keys)

    def record_failure(self, reason: str, now: float) -> None:
        """Remember a failed reload; the current set keeps signing."""
        self.failed_at = now
        self.last_error = reason
        self.reloads_failed += 1
