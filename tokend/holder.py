"""The one mutable cell of the service: the policy currently in force.

Policies are immutable values; a reload builds a new one and swaps it in with a single
assignment on the reactor thread, so a request sees the old policy or the new one, never a mix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokend.policy import Policy


@dataclass(frozen=True, slots=True)
class LoadStatus:
    """What /healthz reports about reloads."""

    generation: int
    loaded_at: float
    failed_at: float | None
    last_error: str | None


class PolicyHolder:
    """Holds the current policy and tells listeners (caches) when it changes."""

    def __init__(self, policy: Policy, now: float) -> None:
        self.current: Policy = policy
        self.generation = 1
        self.loaded_at = now
        self.failed_at: float | None = None
        self.last_error: str | None = None
        self._listeners: list[Callable[[Policy, Policy], None]] = []

    def on_replace(self, listener: Callable[[Policy, Policy], None]) -> None:
        """Call ``listener(old, new)`` after every successful swap."""
        self._listeners.append(listener)

    def replace(self, policy: Policy, now: float) -> int:
        """Swap in ``policy``; returns the new generation number."""
        old = self.current
        self.current = policy
        self.generation += 1
        self.loaded_at = now
        for listener in self._listeners:
            listener(old, policy)
        return self.generation

    def record_failure(self, reason: str, now: float) -> None:
        """Remember a failed reload; the current policy stays in force."""
        self.failed_at = now
        self.last_error = reason

    def status(self) -> LoadStatus:
        return LoadStatus(self.generation, self.loaded_at, self.failed_at, self.last_error)
