"""A real HTTPS OpenID issuer on 127.0.0.1 for the federation tests: Twisted's own TLS listener
with a certificate from a test CA (``localhost`` and ``127.0.0.1``), serving the discovery
document and a JWKS with ``Cache-Control``, counting what it was asked. ``stop()`` and
``start()`` again on the same port, for outage and recovery tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldap_server import TestCA, make_ca, write_server_certificate
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


@dataclass
class IssuerState:
    """What the issuer serves; tests change it as they go."""

    jwks: dict[str, Any]
    cache_control: str | None = "max-age=300"
    discovery_issuer: str | None = None
    """The ``issuer`` the discovery document names; None: the server's own URL."""
    padding: int = 0
    """Bytes of whitespace added to the JWKS answer (the size limit)."""
    chunked: bool = False
    """Send the JWKS without Content-Length."""
    asked: list[str] = field(default_factory=list)

    def count(self, path: str) -> int:
        return self.asked.count(path)


class _Document(Resource):
    isLeaf = True

    def __init__(self, issuer: Issuer, which: str) -> None:
        super().__init__()
        self._issuer = issuer
        self._which = which

    def render_GET(self, request: Request) -> Any:
        state = self._issuer.state
        state.asked.append(self._which)
        request.setHeader(b"content-type", b"application/json")
        if self._which == "discovery":
            body = json.dumps(
                {
                    "issuer": state.discovery_issuer or self._issuer.url,
                    "jwks_uri": f"{self._issuer.url}/jwks",
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            ).encode()
        else:
            if state.cache_control is not None:
                request.setHeader(b"cache-control", state.cache_control.encode())
            body = json.dumps(state.jwks).encode() + b" " * state.padding
        if not state.chunked:
            return body
        for start in range(0, len(body), 64 * 1024):
            request.write(body[start : start + 64 * 1024])
        request.finish()
        return NOT_DONE_YET


class _QuietSite(Site):
    noisy = False

    def log(self, request: Request) -> None:
        """No access log: the tests read what tokend logs."""


class Issuer:
    """The HTTPS issuer at :attr:`url` (``https://localhost:PORT``)."""

    def __init__(self, reactor: Any, directory: Path, jwks: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.reactor = reactor
        self.ca: TestCA = make_ca(directory, "issuer-ca")
        self.other_ca: TestCA = make_ca(directory, "other-ca")
        key_path, cert_path = write_server_certificate(directory, self.ca)
        self._options = ssl.PrivateCertificate.loadPEM(
            cert_path.read_bytes() + key_path.read_bytes()
        ).options()
        self.state = IssuerState(jwks)
        root = Resource()
        well_known = Resource()
        root.putChild(b".well-known", well_known)
        well_known.putChild(b"openid-configuration", _Document(self, "discovery"))
        root.putChild(b"jwks", _Document(self, "jwks"))
        self._site = _QuietSite(root)
        self._port: Any = None
        self.port_number = 0
        self.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port_number}"

    @property
    def ca_file(self) -> Path:
        return self.ca.path

    def start(self) -> None:
        self._port = self.reactor.listenSSL(
            self.port_number, self._site, self._options, interface="127.0.0.1"
        )
        self.port_number = self._port.getHost().port

    def stop(self) -> Deferred[None]:
        port, self._port = self._port, None
        return Deferred.fromCoroutine(_stopped(port))


async def _stopped(port: Any) -> None:
    if port is not None:
        await port.stopListening()
