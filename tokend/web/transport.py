"""The HTTP transport's own limits, for when clients may reach the listener directly.

Twisted's idle timeout restarts with every byte, so a client trickling one header line every
20 s holds a connection (a file descriptor) forever; and Twisted buffers a request body whole,
above 100 kB in a temporary file, before any resource can look at its size. Here a request
must arrive whole within a deadline that bytes do not extend, an idle kept-alive connection
closes, and a body above a cap is refused from its headers (or, chunked, as soon as the cap is
passed) without being stored. Refusals are answered with the spec's JSON error body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from io import BytesIO
from typing import Any, cast

from twisted.internet.base import DelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from tokend.logs.namespaces import NamedLogger
from tokend.web.errors import RequestError, error_body
from tokend.web.requests import FormlessRequest

MAX_REQUEST_BODY_BYTES = 65536
"""Above the realm's form limit (``web.MAX_BODY_BYTES``), so the realm still answers its own
400 in between; no request tokend serves needs more, and up to this much stays in memory."""

_REASONS = {408: b"Request Timeout", 413: b"Content Too Large"}


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """``request_timeout``: seconds from a connection's opening, or from the first byte of a
    later request, until that request (line, headers and body) has arrived whole.
    ``idle_timeout``: seconds a kept-alive connection may wait for its next request.
    ``realm_path`` picks RFC 6749's error body for POSTs to the realm, as the realm does."""

    request_timeout: float
    idle_timeout: float
    max_body_bytes: int = MAX_REQUEST_BODY_BYTES
    realm_path: bytes = b"/v2/token"


def limit_connections(site: Site, limits: ConnectionLimits) -> None:
    """Serve ``site``'s connections with :class:`BoundedChannel` and :class:`BoundedRequest`.

    HTTP/1.1 only: tokend never negotiates TLS (and so HTTP/2) itself.
    """
    cast(Any, site).protocol = partial(BoundedChannel, limits)
    site.timeOut = limits.idle_timeout
    site.requestFactory = BoundedRequest


class BoundedChannel(HTTPChannel):
    """An HTTPChannel whose requests must arrive within a deadline and under a size cap.

    The deadline runs from the connection's opening, or from the first byte or line of each
    later request, until the request's body is complete; Twisted's own timeout (set to the
    idle timeout) still closes a connection on which nothing arrives between requests.
    """

    log = NamedLogger("tokend.http.BoundedChannel")

    def __init__(self, limits: ConnectionLimits) -> None:
        super().__init__()
        self.limits = limits
        self._timer: DelayedCall | None = None
        """The request deadline; once closing, the deadline to abort a peer that does not read."""
        self._closing = False
        self._silent = True
        """Nothing has arrived on this connection yet: it is closed without an answer."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self._await_request()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._silent = False
        self._await_request()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        # A pipelined request may be parsed from bytes that arrived with the previous one.
        self._await_request()
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._closing:
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        length = self.length
        if length is not None and length > self.limits.max_body_bytes:
            self.body_too_large()
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self._closing:
            return
        self._cancel_timer()
        super().allContentReceived()

    def body_too_large(self) -> None:
        """Refuse the request being received: its body passes ``limits.max_body_bytes``."""
        self._refuse(413, f"request body larger than {self.limits.max_body_bytes} bytes")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        super().connectionLost(reason)

    def _await_request(self) -> None:
        if self._timer is None and not self._closing and not self._handlingRequest:
            self._timer = self.callLater(self.limits.request_timeout, self._request_timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _request_timed_out(self) -> None:
        self._timer = None
        transport: Any = self.transport
        if transport is None:
            return
        if self._closing or transport.disconnecting:
            # Closing after an answer (ours or Twisted's 400) that the peer does not read.
            transport.abortConnection()
        elif self._silent:
            self._close("nothing received", None)
        else:
            self._refuse(408, f"request not received within {self.limits.request_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        if self._closing:
            return
        oauth = (
            getattr(self, "_command", None) == b"POST" and self._target() == self.limits.realm_path
        )
        body = error_body(RequestError(message), oauth=oauth)
        content = json.dumps(body, separators=(",", ":")).encode("utf-8")
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(content)
        head += b"Connection: close\r\n\r\n"
        self._close(message, head + content)

    def _target(self) -> bytes:
        path: bytes = getattr(self, "_path", b"")
        return path.partition(b"?")[0]

    def _close(self, reason: str, answer: bytes | None) -> None:
        """Answer, close once written, and abort after ``abortTimeout`` if the peer never reads."""
        transport: Any = self.transport
        self._closing = True
        self._cancel_timer()
        self.setTimeout(None)
        peer = transport.getPeer()
        self.log.info(
            "closing connection from {peer}: {reason}",
            peer=getattr(peer, "host", None) or "unix",
            reason=reason,
        )
        if answer is not None:
            transport.write(answer)
        if self.abortTimeout is not None:
            self._timer = self.callLater(self.abortTimeout, self._request_timed_out)
        self.loseConnection()


class BoundedRequest(FormlessRequest):
    """Keeps the body in memory, and cuts a chunked one off at its channel's cap.

    Twisted stores a body of unknown length (chunked) or above 100 kB in a temporary file;
    under a :class:`BoundedChannel` no body grows past ``max_body_bytes``, so memory suffices.
    """

    def gotLength(self, length: int | None) -> None:
        if isinstance(self.channel, BoundedChannel):
            self.content = BytesIO()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if isinstance(channel, BoundedChannel):
            content: Any = self.content
            if content.tell() + len(data) > channel.limits.max_body_bytes:
                channel.body_too_large()
                return
        super().handleContentChunk(data)
