"""The yardstick: a bare Klein route that signs an ES256 token with joserfc, nothing else.

    python3 bench/bare_klein.py PORT KEY.pem

No policy, no parsing, no logging: what Twisted + Klein + one ECDSA signature cost on this
machine, so tokend's figures can be read against what the stack itself allows. Listens on
127.0.0.1:PORT until SIGTERM.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.jwk import ECKey
from klein import Klein
from twisted.internet import reactor as global_reactor
from twisted.web.server import Site


def main() -> None:
    port, key_path = int(sys.argv[1]), Path(sys.argv[2])
    private_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    key = ECKey.import_key(cast(Any, private_key))
    reactor: Any = global_reactor
    app = Klein()

    @app.route("/v2/token")
    def token(request: Any) -> bytes:
        now = int(time.time())
        claims = {
            "iss": "tokend",
            "sub": "",
            "aud": "registry",
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now - 10,
            "jti": secrets.token_hex(16),
            "access": [],
        }
        payload = json.dumps(claims, separators=(",", ":")).encode()
        signed = jws.serialize_compact({"typ": "JWT", "alg": "ES256"}, payload, key, ["ES256"])
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"token": signed, "access_token": signed}).encode()

    site: Any = Site(app.resource())  # type: ignore[no-untyped-call]
    site.log = lambda request: None
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
