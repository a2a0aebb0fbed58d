"""What the status line and the ``Server`` header say, over a real socket (Hardening III, 15).

Twisted's table of reasons has no 429, so a throttled client read "429 Unknown Status"; and every
answer announced "Server: TwistedWeb/<version>". Both listeners (the realm's, the metrics') are
served here by the daemon's own Site, on 127.0.0.1, by this process's reactor.
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
import treq
from prometheus_client import CollectorRegistry
from realms import realm_api
from support import write_key_pair, write_policy
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

from tokend.daemon.services import QuietSite
from tokend.login.throttle import LoginThrottle
from tokend.metrics.exposition import metrics_resource


@pytest_twisted.ensureDeferred
async def test_429_says_too_many_requests_and_no_listener_names_twisted(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_policy(config, {"bar": ("bar", {"*": ["pull"]})})
    key_path, cert_path = write_key_pair(tmp_path)
    api = realm_api(
        config,
        (key_path, cert_path),
        clock=reactor,
        issuer="iss",
        services=["svc"],
        throttle=LoginThrottle(per_account=1, per_address=100, window=300),
    )
    realm = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        QuietSite(api.resource(), reactor=reactor)
    )
    metrics = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        QuietSite(metrics_resource(CollectorRegistry()), reactor=reactor)
    )
    url = f"http://127.0.0.1:{realm.getHost().port}/v2/token?service=svc"
    try:
        wrong = await treq.get(url, auth=("bar", "wrong"))
        await wrong.content()
        assert (wrong.code, wrong.phrase) == (401, b"Unauthorized")
        throttled = await treq.get(url, auth=("bar", "bar"))
        body = await throttled.json()
        assert (throttled.code, throttled.phrase) == (429, b"Too Many Requests"), body
        assert int(throttled.headers.getRawHeaders("Retry-After")[0]) > 1
        assert throttled.headers.getRawHeaders("Server") == ["tokend"]
        scraped = await treq.get(f"http://127.0.0.1:{metrics.getHost().port}/metrics")
        await scraped.content()
        assert scraped.code == 200
        assert scraped.headers.getRawHeaders("Server") == ["tokend"]
    finally:
        await realm.stopListening()
        await metrics.stopListening()
