"""The news bus: where a process's throttle (or a parent's workers) meets what it shares with
(the parent link, or Redis). Made first and handed to both at construction, each side joins it
there, so neither is given the other after the fact.
"""

from __future__ import annotations

from collections.abc import Callable

from tokend.login.shared_limits.news import Ask, News

Learn = Callable[[News, float], None]
"""Takes in what another process saw, at the given time."""
Unlock = Callable[[str, str], int]
"""Ends a key's lockout; how many failures were forgotten."""


class NewsBus:
    """One listener (the throttle, or the supervisor passing news to its workers) and one
    shared side (the parent link or the Redis store); either may be missing."""

    def __init__(
        self, record: Callable[[News], None] | None = None, lookup: Ask | None = None
    ) -> None:
        """``record`` and ``lookup``: the shared side, when it is known before the bus is
        made (a test); the parent link and the Redis store join with :meth:`share`."""
        self._record = record
        self._lookup = lookup
        self._learn: Learn | None = None
        self._rejoined: Callable[[], None] | None = None
        self._unlock: Unlock | None = None

    def share(self, record: Callable[[News], None], lookup: Ask | None = None) -> None:
        """The shared side joins: ``record`` takes this process's news, ``lookup`` (if it
        holds failures to ask about) answers questions."""
        if self._record is not None or self._lookup is not None:
            raise ValueError("the news bus already shares with another store")
        self._record = record
        self._lookup = lookup

    def hear(
        self, learn: Learn, rejoined: Callable[[], None], unlock: Unlock | None = None
    ) -> None:
        """The listener joins: what the shared side hears goes to ``learn``."""
        if self._learn is not None:
            raise ValueError("the news bus already has a listener")
        self._learn = learn
        self._rejoined = rejoined
        self._unlock = unlock

    def publish(self, news: News) -> None:
        """This process's news, to the shared side (dropped when there is none)."""
        if self._record is not None:
            self._record(news)

    @property
    def lookup(self) -> Ask | None:
        """How to ask the shared side for a key's failures; None when it holds none."""
        return self._lookup

    def learn(self, news: News, now: float) -> None:
        """What another process saw, for the listener."""
        if self._learn is not None:
            self._learn(news, now)

    def rejoined(self) -> None:
        """The shared store is back: news may have been missed."""
        if self._rejoined is not None:
            self._rejoined()

    def unlock(self, table: str, key: str) -> int | None:
        """End a key's lockout in the listener: the failures forgotten, None without one."""
        return None if self._unlock is None else self._unlock(table, key)
