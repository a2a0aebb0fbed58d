"""Noticing edits to files: a watchdog observer on the directories they live in, plus SIGHUP.

The observer thread only hands events to the reactor; debouncing and the reaction happen on the
reactor thread. Directories are watched, not files, so editors that write a new file and rename
it, and Kubernetes ConfigMap or Secret swaps (``..data``), are seen too. A file may be a symlink
to another directory: every directory on its symlink chain is watched as well, and the chain is
resolved again after every change, so a retargeted link moves the watches with it. The policy
files and the signing keys are watched this way.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.base import DelayedCall
from twisted.logger import Logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

WATCHED_EVENTS = frozenset({"created", "modified", "moved", "closed", "deleted"})
DEFAULT_DEBOUNCE_SECONDS = 0.1
MAX_DELAY_SECONDS = 1.0
"""A stream of edits that never pauses still gets reloaded at least this often."""
POLL_INTERVAL_SECONDS = 1.0
MAX_LINKS = 40
"""Symlinks followed on one path before giving up, as the kernel does (ELOOP)."""

SignalHandler = Callable[[int, FrameType | None], Any] | int | None
Entry = tuple[str, str]
"""A directory and a name in it."""
WatchPlan = Mapping[str, frozenset[str]]
"""For each directory to watch, the names in it whose events matter."""

INACTIVE_EMITTER = "InotifyEmitter.queue_events() called when the thread is inactive"
"""What watchdog's inotify emitter logs (as an error) when an event is read just as its watch
is stopped: at shutdown, or when a retargeted link moves a watch. Nothing is lost (the watch
is going away), yet through the standard library's last-resort handler it reached twistd's
stderr as an error line. The key files' directory often holds a busy file (the log), so the
race is no longer rare."""


class _DropInactiveEmitter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != INACTIVE_EMITTER


def quiet_inactive_emitter() -> None:
    """Drop :data:`INACTIVE_EMITTER` from watchdog's inotify logger (once per process)."""
    emitter_log = logging.getLogger("watchdog.observers.inotify")
    if not any(isinstance(f, _DropInactiveEmitter) for f in emitter_log.filters):
        emitter_log.addFilter(_DropInactiveEmitter())


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where opening a path leads: every symlink on the way and the entry it ends at.

    ``end`` is the file itself when ``exists``; otherwise the first entry that is missing (or
    the link where a loop was given up), whose appearance would change what the path opens.
    """

    links: tuple[Entry, ...]
    end: Entry
    exists: bool


def resolve(path: Path) -> Resolution:
    """Follow ``path`` one component at a time as the kernel does, noting each symlink.

    Each link's directory matters as much as the file's: retargeting a link (or a ConfigMap's
    ``..data``) changes what the path opens without touching the file.
    """
    todo = list(reversed((Path.cwd() / path).parts[1:]))
    current = "/"
    links: list[Entry] = []
    while todo:
        name = todo.pop()
        if name == "..":
            current = os.path.dirname(current)
            continue
        entry = os.path.join(current, name)
        try:
            mode = os.lstat(entry).st_mode
            if not stat.S_ISLNK(mode):
                current = entry
                continue
            links.append((current, name))
            target = os.readlink(entry)
        except OSError:
            return Resolution(tuple(links), (current, name), exists=False)
        if len(links) > MAX_LINKS:
            return Resolution(tuple(links), (current, name), exists=False)
        parts = Path(target).parts
        if os.path.isabs(target):
            current, parts = "/", parts[1:]
        todo.extend(reversed(parts))
    return Resolution(tuple(links), (os.path.dirname(current), os.path.basename(current)), True)


def add_chain(plan: dict[str, set[str]], path: Path) -> Resolution:
    """Add to ``plan`` the directory of every link on ``path``'s chain and of where it ends."""
    resolution = resolve(path)
    for directory, name in (*resolution.links, resolution.end):
        plan.setdefault(directory, set()).add(name)
    return resolution


def files_plan(
    paths: Iterable[Path], directories: Mapping[Path, Iterable[str]] | None = None
) -> WatchPlan:
    """The watches for ``paths`` (each one's symlink chain, and ``..data`` beside it: a mounted
    Secret's swap), and for each of ``directories`` (wherever its chain leads) the names in it
    that matter (``*`` patterns allowed)."""
    plan: dict[str, set[str]] = {}
    for path in paths:
        add_chain(plan, path)
        real_parent = resolve(path.parent)
        if real_parent.exists:
            plan.setdefault(os.path.join(*real_parent.end), set()).add("..data")
    for directory, names in (directories or {}).items():
        resolution = resolve(directory)
        for link_directory, name in resolution.links:
            plan.setdefault(link_directory, set()).add(name)
        if resolution.exists:
            plan.setdefault(os.path.join(*resolution.end), set()).update(names)
        else:
            plan.setdefault(resolution.end[0], set()).add(resolution.end[1])
    return {directory: frozenset(names) for directory, names in plan.items()}


def touches(event: FileSystemEvent, directory: str, names: frozenset[str]) -> bool:
    """True when an event in watched ``directory`` may have changed what the watched files hold:
    one of ``names`` in it changed, or the directory itself went away."""
    if event.event_type not in WATCHED_EVENTS:
        return False
    for raw in (event.src_path, getattr(event, "dest_path", "")):
        path = raw if isinstance(raw, str) else raw.decode()
        if not path:
            continue
        if path == directory:
            if event.event_type in ("deleted", "moved"):
                return True
        elif os.path.dirname(path) == directory and named(os.path.basename(path), names):
            return True
    return False


def named(name: str, names: frozenset[str]) -> bool:
    """Whether ``name`` is one of ``names``, or matches one of them that is a ``*`` pattern."""
    return name in names or any("*" in n and fnmatchcase(name, n) for n in names)


class _Forwarder(FileSystemEventHandler):
    """Runs in the observer thread: passes relevant events to the reactor and nothing else.

    Its directory and names never change; a new plan gets a new forwarder.
    """

    def __init__(
        self, reactor: Any, notify: Callable[[str], None], directory: str, names: frozenset[str]
    ) -> None:
        self._reactor = reactor
        self._notify = notify
        self.directory = directory
        self.names = names

    def on_any_event(self, event: FileSystemEvent) -> None:
        if touches(event, self.directory, self.names):
            self._reactor.callFromThread(self._notify, event.event_type)


class WatchService(Service):
    """Calls ``on_change(reason)`` once a burst of edits (or a SIGHUP) has settled.

    ``plan`` says what to watch now; it is asked again before every ``on_change``. ``what``
    names the files in log lines ("policy", "signing keys"). Each instance chains the SIGHUP
    handler it found, so the policy's and the keys' watches both hear one signal.
    """

    log = Logger()

    def __init__(
        self,
        plan: Callable[[], WatchPlan],
        on_change: Callable[[str], object],
        reactor: Any,
        poll: bool = False,
        debounce: float = DEFAULT_DEBOUNCE_SECONDS,
        what: str = "files",
    ) -> None:
        self._plan = plan
        self._what = what
        self._on_change = on_change
        self._reactor = reactor
        self._poll = poll
        self._debounce = debounce
        self._observer: Any = None
        self._watches: dict[str, tuple[Any, _Forwarder]] = {}
        self._pending: DelayedCall | None = None
        self._reasons: set[str] = set()
        self._burst_started = 0.0
        self._previous_sighup: SignalHandler = None
        self._stopped = False

    def privilegedStartService(self) -> None:
        """Watch from here, before the listener's own privileged start binds the socket: once
        a client can connect, an edit is seen (startService runs after every listen)."""
        super().privilegedStartService()
        self._watch()

    def startService(self) -> None:
        super().startService()
        if self._observer is None:
            self._watch()
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        self.log.info(
            "watching {directories} for {what} changes ({how}); SIGHUP reloads too",
            directories=self.watched(),
            what=self._what,
            how="polling" if self._poll else "inotify",
        )

    def _watch(self) -> None:
        self._stopped = False
        quiet_inactive_emitter()
        observer = PollingObserver(timeout=POLL_INTERVAL_SECONDS) if self._poll else Observer()
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._arm()

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
        self._watches.clear()
        if signal.getsignal(signal.SIGHUP) == self._on_sighup:
            signal.signal(signal.SIGHUP, self._previous_sighup or signal.SIG_DFL)

    def watched(self) -> list[str]:
        """The directories watched right now."""
        return sorted(self._watches)

    def _arm(self) -> None:
        """Reactor thread: watch what the files' symlink chains lead to now, drop the rest.

        A few ``lstat``/``readlink`` calls per file. It runs before each reload reads
        the files, so an edit in a newly watched directory is either seen by its watch or
        already on disk when the reload reads.
        """
        observer = self._observer
        if observer is None:
            return
        plan = self._plan()
        before = self.watched()
        for directory in set(self._watches) - set(plan):
            watch, _ = self._watches.pop(directory)
            try:
                observer.unschedule(watch)
            except KeyError:
                pass  # its emitter is already gone
        for directory, names in plan.items():
            handler = _Forwarder(self._reactor, self.changed, directory, names)
            current = self._watches.get(directory)
            if current is not None:
                watch, previous = current
                if previous.names != names:
                    observer.add_handler_for_watch(handler, watch)
                    observer.remove_handler_for_watch(previous, watch)
                    self._watches[directory] = (watch, handler)
                continue
            try:
                watch = observer.schedule(handler, directory, recursive=False)
            except OSError as e:
                self.log.warn(
                    "cannot watch {directory} for {what} changes: {error}",
                    directory=directory,
                    what=self._what,
                    error=str(e),
                )
                continue
            self._watches[directory] = (watch, handler)
        if before and self.watched() != before:
            self.log.info(
                "now watching {directories} for {what} changes",
                directories=self.watched(),
                what=self._what,
            )

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
        self._arm()
        self._on_change(reason)
