"""``--log-format json``: one JSON object per line, for Loki, ELK or journald.

Each line holds the time (RFC 3339, UTC), the level, the event's text as the text format would
write it, the logger's namespace and the structured fields a log pipeline filters on
(``outcome``, ``account``, ``client``…), read from the event rather than from the text.
Client-supplied values are already escaped with :func:`tokend.logs.escaping.printable`; JSON
escaping (ASCII only) does the rest, so a line break or U+2028 in a user name cannot split a line.

twistd picks its log observer before the service starts, from ``--logger`` or from an
``ILogObserver`` component of the application. :func:`observer` is for ``twistd --logger
tokend.json_log.observer`` (stdout); ``--log-format json`` instead builds one with
:func:`json_observer_for` that writes where ``--logfile`` says, and :class:`LoggingRoot` hands it to
twistd's application as that component.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.application.service import MultiService
from twisted.logger import FileLogObserver, ILogObserver, LogEvent, LogLevel, formatEvent
from twisted.python.components import Componentized

from tokend.logs import text_lines
from tokend.logs.text_lines import log_file_for

FIELDS = (
    "outcome",
    "grant",
    "flow",
    "account",
    "client",
    "client_id",
    "asked",
    "granted",
    "status",
    "reason",
    "method",
    "path",
    "refresh_token",
    "generation",
    "error",
)
"""Structured fields copied into the line when an event carries them and they are not None (a
refresh token's fingerprint, never a token: the realm logs nothing else under that name)."""

WORKER_FIELDS = {"pid": "worker_pid", "worker": "worker_index"}
"""With ``--workers N``, which worker wrote the line: its pid and its index (0 … N-1, stable
across restarts, as the metrics' ``worker`` label), as the text format's ``pid N`` marks it
(:func:`tokend.daemon.worker_logs.marked` sets them)."""

_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)


def rfc3339(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_as_json(event: LogEvent) -> str:
    """One event as one line of JSON, newline included."""
    level = event.get("log_level", LogLevel.info)
    record: dict[str, Any] = {
        "time": rfc3339(event.get("log_time", 0.0)),
        "level": level.name,
        "text": formatEvent(event),
        "namespace": event.get("log_namespace"),
    }
    for name, key in WORKER_FIELDS.items():
        if event.get(key) is not None:
            record[name] = event[key]
    for name in FIELDS:
        field = event.get(name)
        if field is not None:
            record[name] = field
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return _ENCODER.encode(record) + "\n"


def json_observer_to(out: IO[str]) -> FileLogObserver:
    """A log observer writing JSON lines to ``out``, flushed after each."""
    return FileLogObserver(out, event_as_json)


def observer() -> FileLogObserver:
    """For ``twistd --logger tokend.json_log.observer``: JSON lines on standard output
    (``twistd -n`` under systemd or in a container)."""
    return json_observer_to(sys.stdout)


def json_observer_for(twistd_config: Mapping[str, Any] | None) -> FileLogObserver:
    """JSON lines where twistd would have written text: ``--logfile``, stdout for ``-`` or
    for ``-n`` without a log file, else ``twistd.log``. A log file is reopened on SIGUSR1,
    as twistd's own is, unless something else handles that signal."""
    return json_observer_to(log_file_for(twistd_config or {}))


def observer_for_format(
    log_format: str, twistd_config: Mapping[str, Any] | None
) -> Callable[[LogEvent], None] | None:
    """The observer ``--log-format`` asks for, for :class:`LoggingRoot` to hand twistd: JSON
    lines, or twistd's own text lines written by :mod:`tokend.logs.text_lines` (None: twistd's
    choice stands, e.g. ``--syslog``)."""
    if log_format == "json":
        return json_observer_for(twistd_config)
    return text_lines.text_observer_for(twistd_config)


class LoggingRoot(MultiService):
    """The root of the service tree, handing twistd's application a log observer.

    twistd adds the tree to its application and only then reads the application's
    ``ILogObserver`` component to start logging; ``--logger`` still wins over it.
    """

    def __init__(self, observer: Callable[[LogEvent], None] | None = None) -> None:
        super().__init__()
        self.log_observer = observer

    def setServiceParent(self, parent: Any) -> Any:
        if (
            self.log_observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver) is None
        ):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)
