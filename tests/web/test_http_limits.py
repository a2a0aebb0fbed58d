"""The transport's limits (tokend.web.transport): slow clients are cut off, oversized bodies
refused unread.

In memory: the real Site and channel over a StringTransport, time on a Clock. One test drives
the real daemon over 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from realms import realm_api
from support import (
    free_port,
    load_certificate,
    parsed_options,
    port_open,
    start_twistd,
    stop_process,
    verify_jwt,
    write_key_pair,
    write_policy,
)
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import tokend.daemon.serving_tree
from tokend.tap import Options, makeService
from tokend.web.transport import (
    MAX_REQUEST_BODY_BYTES,
    BoundedChannel,
    ConnectionLimits,
    limit_connections,
)

LIMITS = ConnectionLimits(request_timeout=10, idle_timeout=30)
GET = b"GET /echo HTTP/1.1\r\nHost: tokend\r\n\r\n"


class Echo(Resource):
    """Answers with what it saw, and remembers the requests it rendered."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list[Request] = []

    def render(self, request: Request) -> bytes:
        self.rendered.append(request)
        assert request.content is not None
        body = request.content.read()
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"method": request.method.decode(), "body": len(body)}).encode()


def bounded_site(resource: Resource, clock: Clock, limits: ConnectionLimits = LIMITS) -> Site:
    site = Site(resource, reactor=clock)
    limit_connections(site, limits)
    return site


class Connection:
    """One client connection to ``site``, in memory."""

    def __init__(self, site: Site) -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.channel = site.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting or self.transport.disconnected)

    def answers(self) -> list[tuple[int, dict[bytes, bytes], bytes]]:
        """The responses written so far: status, headers, body."""
        data = self.transport.value()
        parsed = []
        while data:
            head, _, rest = data.partition(b"\r\n\r\n")
            status_line, *lines = head.split(b"\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if headers.get(b"transfer-encoding") == b"chunked":
                body = b""
                while True:
                    size, _, rest = rest.partition(b"\r\n")
                    length = int(size, 16)
                    body, rest = body + rest[:length], rest[length + 2 :]
                    if length == 0:
                        break
            else:
                length = int(headers.get(b"content-length", b"0"))
                body, rest = rest[:length], rest[length:]
            parsed.append((int(status_line.split()[1]), headers, body))
            data = rest
        return parsed


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def no_temporary_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twisted stores a body of unknown or large length in tempfile.TemporaryFile: forbid it."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a request body went to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


# Point 6: slow clients


def test_a_request_trickled_in_is_cut_off_at_the_deadline(clock: Clock) -> None:
    echo = Echo()
    client = Connection(bounded_site(echo, clock))
    client.send(b"GET /echo HTTP/1.1\r\n")
    for second in range(1, 10):
        clock.advance(1)
        client.send(b"X-Slow-%d: y\r\n" % second)
        assert not client.closed, f"closed after {second} s"
    with capturedLogs() as events:
        clock.advance(1)
    assert client.closed
    [event] = [e for e in events if e["log_format"].startswith("closing connection")]
    assert (event["peer"], event["reason"]) == ("192.0.2.7", "request not received within 10 s")
    [(status, headers, body)] = client.answers()
    assert status == 408
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"connection"] == b"close"
    assert json.loads(body)["errors"][0]["code"] == "BAD_REQUEST"
    assert echo.rendered == []


def test_the_deadline_counts_from_the_connection_when_nothing_arrives(clock: Clock) -> None:
    client = Connection(bounded_site(Echo(), clock))
    clock.advance(9.9)
    assert not client.closed
    clock.advance(0.1)
    assert client.closed
    assert client.transport.value() == b"", "nothing was asked, so nothing is answered"


def test_a_quick_request_is_answered_and_its_connection_kept_until_idle(clock: Clock) -> None:
    echo = Echo()
    client = Connection(bounded_site(echo, clock))
    clock.advance(9)
    client.send(GET)
    assert [status for status, _, _ in client.answers()] == [200]
    clock.advance(29)
    assert not client.closed, "the request deadline no longer applies once it has arrived"
    client.send(GET)
    clock.advance(29)
    assert not client.closed
    assert [status for status, _, _ in client.answers()] == [200, 200]
    clock.advance(1)
    assert client.closed, "idle for --idle-timeout"
    assert len(client.answers()) == 2, "an idle connection is closed without an answer"


def test_each_keep_alive_request_gets_its_own_deadline(clock: Clock) -> None:
    client = Connection(bounded_site(Echo(), clock))
    client.send(GET)
    clock.advance(20)
    client.send(b"GET /echo HTTP/1.1\r\n")
    for _ in range(9):
        clock.advance(1)
        client.send(b"X: y\r\n")
    assert not client.closed
    clock.advance(1)
    assert client.closed
    assert [status for status, _, _ in client.answers()] == [200, 408]


def test_a_pipelined_request_parsed_from_earlier_bytes_has_a_deadline(clock: Clock) -> None:
    """The second request's first line arrives with the first request, then it trickles."""
    client = Connection(bounded_site(Echo(), clock))
    client.send(GET + b"GET /echo HTTP/1.1\r\n")
    for _ in range(9):
        clock.advance(1)
        client.send(b"X: y\r\n")
    clock.advance(1)
    assert client.closed
    assert [status for status, _, _ in client.answers()] == [200, 408]


def test_a_peer_that_reads_nothing_is_aborted(clock: Clock) -> None:
    client = Connection(bounded_site(Echo(), clock))
    client.send(b"GET /echo HTTP/1.1\r\n")
    clock.advance(10)
    assert client.transport.disconnecting
    clock.advance(BoundedChannel.abortTimeout)
    assert client.transport.disconnected, "aborted when the 408 was never read"


# Point 7: bodies


def test_an_announced_oversized_body_is_refused_from_its_headers(
    clock: Clock, no_temporary_files: None
) -> None:
    echo = Echo()
    client = Connection(bounded_site(echo, clock))
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: tokend\r\nContent-Length: 200000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert client.closed
    [(status, headers, body)] = client.answers()
    assert status == 413
    assert headers[b"content-type"] == b"application/json"
    error = json.loads(body)["errors"][0]
    assert error["code"] == "BAD_REQUEST"
    assert str(MAX_REQUEST_BODY_BYTES) in error["message"]
    assert b"100 Continue" not in client.transport.value()
    [request] = client.channel.requests
    assert request.content is None, "no place was made for the body"
    client.send(b"x" * 65536)
    assert len(client.answers()) == 1
    assert echo.rendered == []


def test_a_body_just_at_the_cap_is_accepted(clock: Clock, no_temporary_files: None) -> None:
    client = Connection(bounded_site(Echo(), clock))
    body = b"x" * MAX_REQUEST_BODY_BYTES
    client.send(b"POST /echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    [(status, _, answer)] = client.answers()
    assert (status, json.loads(answer)["body"]) == (200, MAX_REQUEST_BODY_BYTES)


def test_a_chunked_body_is_cut_off_once_past_the_cap(
    clock: Clock, no_temporary_files: None
) -> None:
    echo = Echo()
    client = Connection(bounded_site(echo, clock))
    client.send(b"POST /echo HTTP/1.1\r\nHost: tokend\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (8192, b"x" * 8192)
    for _ in range(MAX_REQUEST_BODY_BYTES // 8192):
        client.send(chunk)
    assert client.answers() == [] and not client.closed, "up to the cap is fine"
    client.send(chunk + chunk + b"0\r\n\r\n")
    assert client.closed
    [(status, headers, body)] = client.answers()
    assert status == 413
    assert headers[b"content-type"] == b"application/json"
    assert "errors" in json.loads(body)
    [request] = client.channel.requests
    assert len(request.content.getvalue()) <= MAX_REQUEST_BODY_BYTES
    assert echo.rendered == [], "the request never reached the resource"


def test_a_small_chunked_body_still_works(clock: Clock, no_temporary_files: None) -> None:
    client = Connection(bounded_site(Echo(), clock))
    client.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    [(status, _, body)] = client.answers()
    assert (status, json.loads(body)) == (200, {"method": "POST", "body": 5})


# The realm behind the limits


class Realm:
    """A TokenAPI (POST grant included) served by a bounded Site, in memory."""

    def __init__(self, tmp_path: Path, clock: Clock) -> None:
        config = tmp_path / "config"
        write_policy(config, {"bar": ("bar", {"*": ["pull", "push"]})})
        key_path, cert_path = write_key_pair(tmp_path)
        self.certificate = load_certificate(cert_path)
        api = realm_api(config, (key_path, cert_path), clock=clock)
        self.site = bounded_site(api.resource(), clock)

    def post(self, body: bytes, headers: bytes = b"") -> tuple[int, dict[bytes, bytes], Any]:
        client = Connection(self.site)
        client.send(
            b"POST /v2/token HTTP/1.1\r\nHost: tokend\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (len(body), headers) + body
        )
        [(status, response_headers, content)] = client.answers()
        assert response_headers[b"content-type"] == b"application/json"
        return status, response_headers, json.loads(content)


FORM = urlencode(
    {
        "grant_type": "password",
        "username": "bar",
        "password": "bar",
        "client_id": "containerd-client",
        "service": "registry.test",
        "scope": "repository:team/app:pull",
    }
).encode()


def test_a_token_form_posted_through_the_limits_gets_a_token(
    tmp_path: Path, clock: Clock, no_temporary_files: None
) -> None:
    realm = Realm(tmp_path, clock)
    status, _, body = realm.post(FORM)
    assert status == 200, body
    _, claims = verify_jwt(body["access_token"], realm.certificate)
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]


def test_the_realm_refuses_a_long_form_below_the_transport_cap_itself(
    tmp_path: Path, clock: Clock, no_temporary_files: None
) -> None:
    status, _, body = Realm(tmp_path, clock).post(FORM + b"&pad=" + b"x" * 20_000)
    assert status == 400
    assert body["error"] == "invalid_request"
    assert "16384" in body["error_description"]


def test_an_oversized_post_to_the_realm_gets_the_oauth_error(
    tmp_path: Path, clock: Clock, no_temporary_files: None
) -> None:
    client = Connection(Realm(tmp_path, clock).site)
    client.send(b"POST /v2/token?x=1 HTTP/1.1\r\nContent-Length: 200000000\r\n\r\n")
    [(status, headers, body)] = client.answers()
    assert status == 413
    assert headers[b"content-type"] == b"application/json"
    error = json.loads(body)
    assert error["error"] == "invalid_request"
    assert str(MAX_REQUEST_BODY_BYTES) in error["error_description"]


# The daemon's options and wiring


def parsed(tmp_path: Path, *args: str, environ: dict[str, str] | None = None) -> Options:
    options: Options = parsed_options(tmp_path, *args, environ=environ)
    return options


def test_timeout_options(tmp_path: Path) -> None:
    defaults = parsed(tmp_path / "a").settings.listen
    assert (defaults.request_timeout, defaults.idle_timeout) == (10, 30)
    environ = {"TOKEND_IDLE_TIMEOUT": "7"}
    given = parsed(tmp_path / "b", "--request-timeout", "3", environ=environ).settings.listen
    assert (given.request_timeout, given.idle_timeout) == (3, 7)
    for args in (["--request-timeout", "0"], ["--idle-timeout", "x"]):
        with pytest.raises(usage.UsageError, match=args[0].lstrip("-")):
            parsed(tmp_path / "c", *args)


def test_the_daemon_site_applies_the_options(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokend.daemon.serving_tree, "keep_out_of_gc", lambda: None)
    options = parsed(tmp_path, "--request-timeout", "3", "--idle-timeout", "7")
    root = makeService(options, reactor=clock)
    [site] = [s.factory for s in root if isinstance(getattr(s, "factory", None), Site)]
    client = Connection(site)
    client.send(b"GET /healthz HTTP/1.1\r\n")
    clock.advance(2)
    client.send(b"X: y\r\n")
    clock.advance(1)
    assert client.closed
    assert [status for status, _, _ in client.answers()] == [408]
    idle = Connection(site)
    idle.send(b"GET /healthz HTTP/1.1\r\n\r\n")
    assert [status for status, _, _ in idle.answers()] == [200]
    clock.advance(6.9)
    assert not idle.closed
    clock.advance(0.1)
    assert idle.closed


def test_the_real_daemon_closes_a_trickling_connection(tmp_path: Path) -> None:
    write_policy(tmp_path / "config", {"bar": ("bar", {"*": ["pull"]})})
    key_path, cert_path = write_key_pair(tmp_path)
    port = free_port()
    process = start_twistd(
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--config-dir", str(tmp_path / "config"),
        "--key", str(key_path), "--cert", str(cert_path), "--request-timeout", "1",
        log=tmp_path / "tokend.log",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert process.poll() is None, (tmp_path / "tokend.log").read_text()
            assert time.monotonic() < deadline, "not listening after 30 s"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            started = time.monotonic()
            client.sendall(b"GET /healthz HTTP/1.1\r\n")
            received = b""
            try:
                while time.monotonic() - started < 5:
                    time.sleep(0.3)
                    client.sendall(b"X: y\r\n")
            except OSError:
                pass
            client.settimeout(5)
            while chunk := client.recv(4096):
                received += chunk
            elapsed = time.monotonic() - started
        assert received.startswith(b"HTTP/1.1 408 "), received
        assert b"application/json" in received
        assert elapsed < 3, f"closed after {elapsed:.1f} s"
    finally:
        stop_process(process)
