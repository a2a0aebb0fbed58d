"""One run at a time: a trigger during a run schedules exactly one more, however many arrive.

For reloads (the policy files, the signing keys): a burst of edits during a slow load costs one
more load, not one per edit, and each trigger's Deferred fires once a load that began after it
has been applied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger


class Coalescing:
    """Calls ``run(reason)`` (async, on the reactor thread) at most once at a time."""

    def __init__(self, run: Callable[[str], Awaitable[None]], log: Logger, what: str) -> None:
        """An exception from ``run`` is logged as ``what`` going wrong; later runs still run."""
        self._run_once = run
        self._log = log
        self._what = what
        self._busy = False
        self._again: str | None = None
        self._waiting: list[Deferred[None]] = []

    def __call__(self, reason: str) -> Deferred[None]:
        """Run now (or right after the run in progress); fires when that run has finished."""
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        if self._busy:
            self._again = reason
        else:
            self._busy = True
            ensureDeferred(self._run(reason))
        return done

    async def _run(self, reason: str) -> None:
        while True:
            waiting, self._waiting = self._waiting, []
            try:
                await self._run_once(reason)
            except Exception:
                self._log.failure("{what} ({reason}) went wrong", what=self._what, reason=reason)
            for done in waiting:
                done.callback(None)
            if self._again is None:
                break
            reason, self._again = self._again, None
        self._busy = False
