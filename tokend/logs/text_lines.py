"""``--log-format text`` (the default): twistd's text log lines, for less CPU per line.

twistd writes each event with ``textFileLogObserver``, which re-parses the event's format
string with the pure-Python ``string.Formatter``, wraps every field for ``formatWithCall`` and
works out the local time zone and ``strftime`` for every line: about a fifth of an anonymous
request's CPU. :func:`format_text_line` writes the same bytes with the work that repeats done
once: the parsed format per distinct ``log_format``, the time stamp per whole second (the
format, ``%Y-%m-%dT%H:%M:%S%z``, has no sub-seconds) and the ``[namespace#level]`` prefix.

Only the plain case takes the short way: a dict event whose format is a ``str`` of ``{name}``
fields without a conversion, a format spec, attribute or index access or ``()`` call, with no
``log_failure`` or ``log_flattened``, and a ``log_system`` (if any) that is a ``str``, as a
worker's ``namespace#level pid N`` is. Each field is then ``format(value, "")``, which is what
Twisted's formatter does with it too. Anything else, and anything that raises on
the way, is handed to Twisted's own ``formatEventAsClassicLogText``, so the line (or the
exception) is Twisted's. A field whose ``__format__`` raises is therefore formatted twice; one
whose ``__format__`` has side effects could tell.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping
from string import Formatter
from typing import IO, Any, cast

from twisted.logger import (
    FileLogObserver,
    LogEvent,
    LogLevel,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.logfile import LogFile

_PLANS_MAX = 512
"""Distinct format strings remembered; tokend's are constants, so this only bounds a stranger
that logs formats made at run time (the cache is then emptied and refilled)."""

_Plan = tuple[tuple[str, str | None], ...]
"""(literal text, field name or None) pairs; the literal has ``{{``/``}}`` already undone."""

_UNSUPPORTED: _Plan = ()
_plans: dict[str, _Plan] = {}
_systems: dict[tuple[str, Any], str] = {}
_stamp: tuple[int, str] = (-1, "")
_PARSER = Formatter()
_CONSTANT = type(LogLevel.info)


def _plain_field(name: str) -> bool:
    """Whether Twisted's formatter would read ``name`` as ``event[name]`` and nothing more (no
    positional index, attribute, item or call)."""
    return (
        name != ""
        and not name.isdecimal()
        and "." not in name
        and "[" not in name
        and not name.endswith("()")
    )


def _plan(log_format: str) -> _Plan:
    try:
        parsed = list(_PARSER.parse(log_format))
    except ValueError:
        return _UNSUPPORTED
    plan: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (spec or conversion is not None or not _plain_field(name)):
            return _UNSUPPORTED
        plan.append((literal, name))
    return tuple(plan) if plan else (("", None),)


def _time_stamp(when: Any) -> str:
    """``formatTime(when)``, computed once per whole second. Only a second fraction below
    0.999999 is cached: above it, the microsecond rounding of ``datetime.fromtimestamp`` may
    carry into the next second."""
    global _stamp
    if type(when) is float and when >= 0.0:
        second = int(when)
        if when - second < 0.999999:
            cached = _stamp
            if cached[0] == second:
                return cached[1]
            text = formatTime(when, timeFormatRFC3339)
            _stamp = (second, text)
            return text
    return formatTime(when, timeFormatRFC3339)


def _system(namespace: str, level: Any) -> str:
    key = (namespace, level)
    system = _systems.get(key)
    if system is None:
        name = "-" if level is None else level.name
        system = f"[{namespace}#{name}] "
        if len(_systems) >= _PLANS_MAX:
            _systems.clear()
        _systems[key] = system
    return system


class _Twisted(Exception):
    """This event is one for Twisted's own formatting."""


def _line(event: LogEvent) -> str | None:
    """The short way, or :class:`_Twisted` where it does not apply."""
    if type(event) is not dict or "log_failure" in event or "log_flattened" in event:
        raise _Twisted
    log_format = event.get("log_format")
    if log_format is None:
        return None
    if type(log_format) is not str:
        raise _Twisted
    plan = _plans.get(log_format)
    if plan is None:
        plan = _plan(log_format)
        if len(_plans) >= _PLANS_MAX:
            _plans.clear()
        _plans[log_format] = plan
    if plan is _UNSUPPORTED:
        raise _Twisted
    parts = []
    for literal, name in plan:
        parts.append(literal)
        if name is not None:
            value = event[name]
            parts.append(value if type(value) is str else format(value, ""))
    text = "".join(parts)
    if not text:
        return None
    system = event.get("log_system")
    if system is None:
        namespace = event.get("log_namespace", "-")
        level = event.get("log_level")
        if type(namespace) is not str or (level is not None and type(level) is not _CONSTANT):
            raise _Twisted
        system = _system(namespace, level)
    elif type(system) is str:
        system = "[" + system + "] "
    else:
        raise _Twisted
    line = _time_stamp(event.get("log_time")) + " " + system + text
    if "\n" in line:
        line = line.replace("\n", "\n\t")
    return line + "\n"


def format_text_line(event: LogEvent) -> str | None:
    """The line ``textFileLogObserver`` writes for ``event`` (newline included), or None when
    it writes nothing: the same text, computed faster in the common case."""
    try:
        return _line(event)
    except BaseException:  # noqa: S110 - Twisted's turn, out of this handler's context
        pass
    return formatEventAsClassicLogText(event, _twisted_time)


def _twisted_time(when: float | None) -> str:
    return formatTime(when, timeFormatRFC3339)


def text_observer_to(out: IO[Any]) -> FileLogObserver:
    """A log observer writing twistd's text lines to ``out``, flushed after each, as
    ``textFileLogObserver(out)`` does."""
    return FileLogObserver(out, format_text_line)


def text_observer_for(twistd_config: Mapping[str, Any] | None) -> FileLogObserver | None:
    """The observer twistd would build for text (``--logfile`` with its rotation and SIGUSR1
    reopening, stdout for ``-`` or ``-n``, else ``twistd.log``), or None where twistd must
    choose itself: ``--logger``, ``--syslog``, or ``--logfile -`` without ``-n`` (which twistd
    refuses with its own sentence)."""
    config = twistd_config or {}
    if config.get("logger") or config.get("syslog"):
        return None
    name = config.get("logfile") or ""
    if name == "-" and config and not config.get("nodaemon"):
        return None
    return text_observer_to(log_file_for(config))


def log_file_for(twistd_config: Mapping[str, Any]) -> IO[str]:
    """Where twistd writes its log: stdout for ``-``, for ``-n`` without a log file or without
    twistd at all, else a rotating ``LogFile`` (``--logfile`` or ``twistd.log``) that SIGUSR1
    rotates, as twistd arranges, unless something else handles that signal."""
    name = twistd_config.get("logfile") or ""
    if name == "-" or (not name and (twistd_config.get("nodaemon") or not twistd_config)):
        return sys.stdout
    log_file = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return cast(IO[str], log_file)
