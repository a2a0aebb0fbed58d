"""Recent answers of a backend, each trusted for a few seconds from when it was asked, at most
a bounded number of them: what the access token door remembers of the database."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

REMEMBERED = 4096
"""Answers remembered at most by one map; the oldest go first."""


@dataclass(frozen=True, slots=True)
class Seen(Generic[T]):
    value: T
    asked_at: float
    """When the query was sent: an entry is trusted for the map's ttl from then, not from its
    answer, so a slow query does not stretch the window a revocation may go unseen."""


class RecentAnswers(Generic[T]):
    """A bounded map of recent answers, each trusted for ``ttl`` seconds after it was asked
    (a ttl of 0 or less remembers nothing)."""

    def __init__(self, ttl: float, remembered: int = REMEMBERED) -> None:
        self._ttl = ttl
        self._remembered = remembered
        self._seen: OrderedDict[str, Seen[T]] = OrderedDict()

    def get(self, key: str, now: float) -> Seen[T] | None:
        seen = self._seen.get(key)
        if seen is None:
            return None
        if not seen.asked_at <= now < seen.asked_at + self._ttl:
            del self._seen[key]
            return None
        return seen

    def put(self, key: str, value: T, asked_at: float) -> None:
        if self._ttl <= 0:
            return
        self._seen[key] = Seen(value, asked_at)
        self._seen.move_to_end(key)
        while len(self._seen) > self._remembered:
            self._seen.popitem(last=False)

    def discard(self, key: str) -> None:
        self._seen.pop(key, None)

    def drop(self, wanted: Callable[[T], bool]) -> None:
        for key in [k for k, seen in self._seen.items() if wanted(seen.value)]:
            del self._seen[key]
