"""What one login throttle tells the others (the other workers of a daemon, other daemons
through Redis): failures, successes, a shared store's failure times for a key, an operator's
unlock. Accounts and addresses are named by their throttle keys, never in clear."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from twisted.internet.defer import Deferred


@dataclass(frozen=True, slots=True)
class Failed:
    """A failed attempt this process saw: the account (None when none is charged) and the
    address key, at ``at``."""

    account: str | None
    address: str
    at: float


@dataclass(frozen=True, slots=True)
class Succeeded:
    """A login that succeeded: its account's failures are forgotten, its address is known."""

    account: str
    address: str
    at: float


@dataclass(frozen=True, slots=True)
class Seen:
    """The failure times a shared store holds for one key (Redis): merged, never added."""

    table: Literal["account", "address"]
    key: str
    times: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Unlocked:
    """An operator ended a key's lockout (``tokend unlock``) at ``at``."""

    table: Literal["account", "address"]
    key: str
    at: float


News = Failed | Succeeded | Seen | Unlocked
"""What one throttle tells the others (other workers, other daemons). Accounts and addresses
are named by their throttle keys (keyed hashes in a daemon, see :class:`LoginThrottle`)."""

Ask = Callable[[list[tuple[str, str]]], Deferred[list[Seen]]]
"""Asks the shared store for the failures it holds under (table, key) pairs."""
