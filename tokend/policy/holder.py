"""The one mutable cell of the service: the policy currently in force.

Policies are immutable values; a reload builds a new one and swaps it in with a single
assignment on the reactor thread, so a request sees the old policy or the new one, never a mix.
The holder also remembers whether the files on disk were valid at the last reload: a bad edit
keeps the old policy serving, and a probe must be able to tell the two apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokend.policy.model import Policy


@dataclass(frozen=True, slots=True)
class LoadStatus:
    """What /healthz reports: the policy serving, and the state of the files behind it.

    ``failed_at`` and ``last_error`` describe the files as the last reload found them; a good
    reload clears them, so they are ``None`` exactly when ``files_valid``.
    """

    generation: int
    loaded_at: float
    failed_at: float | None
    last_error: str | None
    reloads_ok: int = 0
    reloads_failed: int = 0

    @property
    def files_valid(self) -> bool:
        return self.last_error is None


class PolicyHolder:
    """Holds the current policy and tells listeners (caches) when it changes."""

    def __init__(self, policy: Policy, now: float) -> None:
        self.current: Policy = policy
        self.generation = 1
        self.loaded_at = now
        self.failed_at: float | None = None
        self.last_error: str | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        self._listeners: list[Callable[[Policy, Policy], None]] = []

    @property
    def files_valid(self) -> bool:
        """Whether the files on disk loaded at the last attempt (start-up counts as one)."""
        return self.last_error is None

    @property
    def last_success_at(self) -> float:
        """When the files last loaded: every good reload swaps in a new generation."""
        return self.loaded_at

    def on_replace(self, listener: Callable[[Policy, Policy], None]) -> None:
        """Call ``listener(old, new)`` after every successful swap."""
        self._listeners.append(listener)

    def replace(self, policy: Policy, now: float) -> int:
        """Swap in ``policy``; returns the new generation number.

        The files just loaded, so an earlier failure no longer describes them and is cleared.
        """
        old = self.current
        self.current = policy
        self.generation += 1
        self.loaded_at = now
        self.failed_at = None
        self.last_error = None
        self.reloads_ok += 1
        for listener in self._listeners:
            listener(old, policy)
        return self.generation

    def record_failure(self, reason: str, now: float) -> None:
        """Remember a failed reload; the current policy stays in force."""
        self.failed_at = now
        self.last_error = reason
        self.reloads_failed += 1

    def status(self) -> LoadStatus:
        return LoadStatus(
            self.generation,
            self.loaded_at,
            self.failed_at,
            self.last_error,
            self.reloads_ok,
            self.reloads_failed,
        )
