"""The HTTPS client of the issuers' keys against real listeners: a server that never answers is
given up on, a redirect is not followed, a URL no trust may name is not even tried."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.util import Redirect

from tokend.login.federation.fetch import FetchFailed
from tokend.web.issuer_fetch import AgentFetch

reactor: Any = global_reactor


class _Silent(Protocol):
    def dataReceived(self, data: bytes) -> None:
        """Reads the request and never answers."""


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_answers_is_given_up_on() -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
    try:
        fetch = AgentFetch(reactor, timeout=0.5)
        with pytest.raises(FetchFailed, match=r"^no answer within 0\.5 s$"):
            await fetch(f"http://127.0.0.1:{port.getHost().port}/jwks", None)
    finally:
        await port.stopListening()


class _Moved(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return Redirect(b"https://attacker.example/jwks").render(request)


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_not_followed() -> None:
    site = Site(_Moved())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        with pytest.raises(FetchFailed, match=r"^HTTP 302$"):
            await AgentFetch(reactor)(f"http://localhost:{port.getHost().port}/jwks", None)
    finally:
        await port.stopListening()


@pytest.mark.parametrize(
    "url", ["http://issuer.example.com/jwks", "ftp://127.0.0.1/jwks", "file:///etc/passwd"]
)
@pytest_twisted.ensureDeferred
async def test_only_https_or_the_loopback_is_tried(url: str) -> None:
    with pytest.raises(FetchFailed, match=r"^not an https:// URL$"):
        await AgentFetch(reactor)(url, None)
