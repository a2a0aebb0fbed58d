"""The wire between a ``--workers N`` parent and each worker: frames over one socketpair.

A frame is a length, a kind and the payload (:func:`frame`), so bytes (an exposition, a log
line) travel as they are; :class:`Framed` is either end of the socketpair.

The parent keeps one socketpair per worker; what travels on it:

- worker → parent: ``{"ready": pid}`` once it serves; every log line, formatted by the worker
  as twistd's text observer (marked ``pid N``) or ``--log-format json`` would write it, which
  the parent only writes to its log (:class:`tokend.daemon.worker_logs.ParentLog`: one log
  file, rotated by one process);
  or, where twistd logs elsewhere (``--syslog``, ``--logger``), every log event for the
  parent's observer; ``{"news": ...}`` for each failed or successful login
  (:mod:`tokend.login.shared_limits.redis_store` spells it); its metrics exposition when asked;
- parent → worker: ``{"news": ...}`` that another worker (or another daemon, through Redis)
  saw; a request for its metrics (``--metrics``: the parent serves the union, see
  :mod:`tokend.metrics.exposition`).
- with ``--redis``, worker → parent ``{"ask": n, "keys": [...]}`` before its first check of a
  key, answered ``{"answer": n, "seen": [...]}`` with what Redis holds; parent → worker
  ``{"rejoined": true}`` when Redis is back (keys are to be asked about again);
- ``tokend unlock`` (the control socket is the parent's): parent → worker ``{"unlock": [table,
  key], "n": n}``, answered ``{"unlocked": n, "cleared": count}``.

So the login throttle counts every worker's failures in each worker, and the limits hold in
total for the daemon, not N times over (modulo messages in flight, a millisecond).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol

MAX_FRAME = 16 * 1024 * 1024
"""One message at most (a log event with a long policy error, an exposition, fit)."""

CONTROL = ord("J")
"""Both ways: one JSON object (ready, news)."""
LOG_EVENT = ord("E")
"""Worker → parent: one log event, as twisted.logger's eventAsJSON."""
LOG_LINES = ord("L")
"""Worker → parent: finished log lines (UTF-8), to be written as they are."""
SCRAPE = ord("S")
"""Parent → worker: a request for its metrics; the payload is the request's number."""
HEALTH = ord("H")
"""Parent → worker: a request for its /healthz details; the payload is the request's number."""
EXPOSITION = ord("M")
"""Worker → parent: the request's number, a newline, the answer (the Prometheus text
exposition, or the health details as JSON)."""

_HEADER = struct.Struct("!IB")


def frame(kind: int, payload: bytes) -> bytes:
    """One message: the payload's length, its kind, the payload."""
    return _HEADER.pack(len(payload), kind) + payload


def control(message: Mapping[str, Any]) -> bytes:
    return frame(CONTROL, json.dumps(message, separators=(",", ":")).encode())


def split_frames(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole frames at the start of ``buffer``, and what is left of it. A frame longer
    than :data:`MAX_FRAME` is a broken peer: ``ValueError``."""
    frames: list[tuple[int, bytes]] = []
    offset, size = 0, len(buffer)
    while size - offset >= _HEADER.size:
        length, kind = _HEADER.unpack_from(buffer, offset)
        if length > MAX_FRAME:
            raise ValueError(f"a {length}-byte message")
        end = offset + _HEADER.size + length
        if end > size:
            break
        frames.append((kind, buffer[offset + _HEADER.size : end]))
        offset = end
    return frames, buffer[offset:]


class Framed(TwistedProtocol):
    """Either end of a socketpair: frames in, frames out."""

    _buffer = b""

    def dataReceived(self, data: bytes) -> None:
        try:
            frames, self._buffer = split_frames(self._buffer + data)
        except ValueError:
            transport: Any = self.transport
            if transport is not None:
                transport.loseConnection()
            return
        if frames:
            self.framesReceived(frames)

    def framesReceived(self, frames: list[tuple[int, bytes]]) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Send one or more ready-made frames."""
        transport: Any = self.transport
        if transport is not None:
            transport.write(data)


class OneProtocol(Factory):
    """A factory for adoptStreamConnection that hands out one protocol made beforehand."""

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Any:
        self._protocol.factory = self
        return self._protocol
