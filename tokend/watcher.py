"""Noticing policy edits: a watchdog observer on the config directory, plus SIGHUP.

The observer thread only hands events to the reactor; debouncing and the reload itself happen on
the reactor thread. The directory is watched, not the files, so editors that write a new file and
rename it, and Kubernetes ConfigMap swaps (``..data``), are seen too.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.base import DelayedCall
from twisted.logger import Logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from tokend.policy_files import POLICY_FILES

WATCHED_NAMES = frozenset({*POLICY_FILES, "..data"})
WATCHED_EVENTS = frozenset({"created", "modified", "moved", "closed", "deleted"})
DEFAULT_DEBOUNCE_SECONDS = 0.1
MAX_DELAY_SECONDS = 1.0
"""A stream of edits that never pauses still gets reloaded at least this often."""
POLL_INTERVAL_SECONDS = 1.0

SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def touches_policy(event: FileSystemEvent) -> bool:
    """True when an event may have changed what the policy files hold."""
    if event.event_type not in WATCHED_EVENTS or (
        event.is_directory and event.event_type != "moved"
    ):
        return False
    paths = [event.src_path, getattr(event, "dest_path", "")]
    return any(
        Path(p if isinstance(p, str) else p.decode()).name in WATCHED_NAMES for p in paths if p
    )


class _Forwarder(FileSystemEventHandler):
    """Runs in the observer thread: passes relevant events to the reactor and nothing else."""

    def __init__(self, reactor: Any, notify: Callable[[str], None]) -> None:
        self._reactor = reactor
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if touches_policy(event):
            self._reactor.callFromThread(self._notify, event.event_type)


class PolicyWatchService(Service):
    """Calls ``on_change(reason)`` once a burst of edits (or a SIGHUP) has settled."""

    log = Logger()

    def __init__(
        self,
        config_dir: Path,
        on_change: Callable[[str], object],
        reactor: Any,
        poll: bool = False,
        debounce: float = DEFAULT_DEBOUNCE_SECONDS,
    ) -> None:
        self._config_dir = config_dir
        self._on_change = on_change
        self._reactor = reactor
        self._poll = poll
        self._debounce = debounce
        self._observer: Any = None
        self._pending: DelayedCall | None = None
        self._reasons: set[str] = set()
        self._burst_started = 0.0
        self._previous_sighup: SignalHandler = None
        self._stopped = False

    def startService(self) -> None:
        super().startService()
        self._stopped = False
        observer = PollingObserver(timeout=POLL_INTERVAL_SECONDS) if self._poll else Observer()
        observer.schedule(
            _Forwarder(self._reactor, self.changed), str(self._config_dir), recursive=False
        )
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        self.log.info(
            "watching {directory} for policy changes ({how}); SIGHUP reloads too",
            directory=str(self._config_dir),
            how="polling" if self._poll else "inotify",
        )

    def stopService(self) -> None:
        super().stopService()
        self._stopped = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=POLL_INTERVAL_SECONDS * 2)
            self._observer = None
        if signal.getsignal(signal.SIGHUP) == self._on_sighup:
            signal.signal(signal.SIGHUP, self._previous_sighup or signal.SIG_DFL)

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self.changed, "SIGHUP")
        if callable(self._previous_sighup):
            self._previous_sighup(signum, frame)

    def changed(self, reason: str) -> None:
        """Reactor thread: (re)start the debounce timer; the reload runs when it expires.

        Events the observer queued with ``callFromThread`` before it stopped arrive after
        ``stopService``; they are dropped rather than starting a reload on stopped workers.
        """
        if self._stopped:
            return
        self._reasons.add(reason)
        now = self._reactor.seconds()
        if self._pending is None or not self._pending.active():
            self._burst_started = now
            self._pending = self._reactor.callLater(self._debounce, self._fire)
        elif now - self._burst_started + self._debounce <= MAX_DELAY_SECONDS:
            self._pending.reset(self._debounce)

    def _fire(self) -> None:
        self._pending = None
        reason = ", ".join(sorted(self._reasons))
        self._reasons.clear()
        self._on_change(reason)
