"""The workers' log, as the parent writes it: their lines marked with the worker's pid, and
the parent's observer that writes finished lines as they come (one file, rotated by one process).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.logger import FileLogObserver, LogEvent
from twisted.python.compat import ioType

from tokend.logs.text_lines import format_text_line, log_file_for


def marked(event: LogEvent, pid: int, index: int | None = None) -> LogEvent:
    """``event`` with ``pid N`` added to its system, as a worker's text line shows it, and
    the pid and the worker's index as fields (a JSON line's ``pid`` and ``worker``)."""
    system = event.get("log_system")
    if not system or system == "-":
        level = getattr(event.get("log_level"), "name", "-")
        system = f"{event.get('log_namespace', '-')}#{level}"
    return {**event, "log_system": f"{system} pid {pid}", "worker_pid": pid, "worker_index": index}


class ParentLog(FileLogObserver):
    """The parent's log observer with ``--workers N``: its own events formatted as twistd (or
    ``--log-format json``) would, and the workers' finished lines written as they come."""

    def __init__(self, out: IO[Any], format_event: Callable[[LogEvent], str | None]) -> None:
        super().__init__(out, format_event)
        self._out = out
        self._binary = ioType(out) is not str

    def write_lines(self, lines: bytes) -> None:
        self._out.write(lines if self._binary else lines.decode("utf-8", "replace"))
        self._out.flush()


def parent_log(
    log_format: str,
    twistd_config: Mapping[str, Any] | None,
    format_json: Callable[[LogEvent], str | None],
) -> ParentLog | None:
    """Where workers' lines can go straight to the log: twistd writes a file or stdout (its
    ``--logfile`` rules, rotation on SIGUSR1 as twistd arranges). None under ``--syslog`` or
    ``--logger`` (or without twistd): then workers send events to the parent's observer."""
    config = twistd_config
    if not config or config.get("logger") or config.get("syslog"):
        return None
    if config.get("logfile") == "-" and not config.get("nodaemon"):
        return None  # twistd refuses this with its own sentence
    out: IO[Any] = log_file_for(config)
    return ParentLog(out, format_json if log_format == "json" else format_text_line)
