"""The realm's own dispatch (TokenAPI.serve_realm, past Klein's URL mapping): a login whose
client goes away is no longer waited for, but its check runs on and keeps its share of the
bcrypt queue until it ends (Hardening III); an unexpected error is a logged 500 and never a
hung connection, and the answer is framed with a Content-Length."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from realms import HandFiredWorkers, realm_api
from support import write_key_pair, write_policy
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.server import Site

from tokend.login.in_flight import InFlight
from tokend.login.throttle import LoginThrottle
from tokend.web.requests import FormlessRequest

SERVICE = "registry.test"


class Edge:
    def __init__(self, tmp_path: Path) -> None:
        config = tmp_path / "config"
        write_policy(config, {"alice": ("alice-pw", {"*": ["pull"]})})
        key_path, cert_path = write_key_pair(tmp_path)
        self.workers = HandFiredWorkers()
        self.in_flight = InFlight(4)
        self.throttle = LoginThrottle(per_account=1, per_address=100, window=300)
        realm = realm_api(
            config,
            (key_path, cert_path),
            workers=self.workers,
            services=[SERVICE],
            throttle=self.throttle,
            in_flight=self.in_flight,
        )
        self.tokens = realm.tokens
        self.api = realm.api
        self.site = Site(self.api.resource())
        self.site.requestFactory = FormlessRequest

    def connect(self, request: bytes) -> tuple[Any, StringTransport]:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        protocol = self.site.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.dataReceived(request)
        return protocol, transport


def get(user: str | None = None) -> bytes:
    lines = [f"GET /v2/token?service={SERVICE}&scope=repository:a/b:pull HTTP/1.1", "Host: t"]
    if user is not None:
        basic = base64.b64encode(f"{user}:alice-pw".encode()).decode()
        lines.append(f"Authorization: Basic {basic}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def edge(tmp_path: Path) -> Edge:
    return Edge(tmp_path)


def test_a_login_whose_client_left_keeps_its_share_until_its_check_ends(edge: Edge) -> None:
    """It used to be cancelled: its share came back while bcrypt still ran, and it counted
    neither as a failure nor as a success."""
    protocol, transport = edge.connect(get("alice"))
    assert len(edge.workers.pending) == 1 and edge.in_flight.total == 1
    check, function, args = edge.workers.pending[0]
    protocol.connectionLost(Failure(ConnectionDone()))
    assert not check.called, "the check itself is never cancelled"
    assert edge.in_flight.total == 1, "its share is held while bcrypt runs"
    check.callback(function(*args))
    assert edge.in_flight.total == 0
    assert transport.value() == b""
    assert edge.throttle.known.knows("alice", "127.0.0.1", 0), "it counted as a success"


def test_a_deferred_answer_is_written_with_its_length(edge: Edge) -> None:
    _, transport = edge.connect(get("alice"))
    deferred, function, args = edge.workers.pending[0]
    deferred.callback(function(*args))
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"Content-Length: {len(body)}".encode() in head
    assert body.startswith(b'{"access_token":')


def test_an_unexpected_error_is_a_logged_500(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("signing broke")

    monkeypatch.setattr(edge.tokens, "issue", broken)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        _, transport = edge.connect(get())
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert transport.value().startswith(b"HTTP/1.1 500 ")
    assert b"signing broke" not in transport.value()
    failures = [e for e in events if "log_failure" in e]
    assert failures and failures[0]["log_failure"].check(RuntimeError)
