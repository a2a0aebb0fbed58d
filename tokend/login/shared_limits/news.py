"""What one login throttle tells the others (the other workers of a daemon, other daemons
through Redis): failures, successes, a shared store's failure times for a key, an operator's
unlock; and the wire form they travel in. Accounts and addresses are named by their throttle
keys, never in clear."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

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


def news_to_wire(news: News) -> dict[str, Any]:
    """A JSON-able form of one piece of throttle news."""
    if isinstance(news, Failed):
        return {"failed": [news.account, news.address, news.at]}
    if isinstance(news, Succeeded):
        return {"succeeded": [news.account, news.address, news.at]}
    if isinstance(news, Unlocked):
        return {"unlocked": [news.table, news.key, news.at]}
    return {"seen": [news.table, news.key, list(news.times)]}


def news_from_wire(wire: Any) -> News:
    """The news a wire form stands for; ValueError for anything else."""
    try:
        if "failed" in wire:
            account, address, at = wire["failed"]
            if account is not None and not isinstance(account, str):
                raise ValueError("account")
            return Failed(account, _text(address), float(at))
        if "succeeded" in wire:
            account, address, at = wire["succeeded"]
            return Succeeded(_text(account), _text(address), float(at))
        if "unlocked" in wire:
            table, key, at = wire["unlocked"]
            return Unlocked(throttle_table(table), _text(key), float(at))
        table, key, times = wire["seen"]
        return Seen(throttle_table(table), _text(key), tuple(float(t) for t in times))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not throttle news: {e}") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a key")
    return value


def throttle_table(value: Any) -> Any:
    if value not in ("account", "address"):
        raise ValueError("table")
    return value
