"""bcrypt runs off the reactor: anonymous requests are answered while logins are checked."""

from __future__ import annotations

import time
from pathlib import Path

import bcrypt
import pytest_twisted
import treq
from realms import realm_api
from support import load_certificate, verify_jwt, write_key_pair, write_policy
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

from tokend.policy.files import load_policy
from tokend.threads import ThreadPoolService

REAL_COST = 12


@pytest_twisted.ensureDeferred
async def test_anonymous_answered_while_four_slow_logins_are_in_flight(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_policy(config, {"slow": ("right", {"*": ["pull"]})}, {"repositories": ["pub"]}, REAL_COST)
    key_path, cert_path = write_key_pair(tmp_path)
    started = time.perf_counter()
    bcrypt.checkpw(b"wrong", load_policy(config).policy.users["slow"].pass_hash)
    one_bcrypt = time.perf_counter() - started

    pool = ThreadPoolService(reactor, 4, "test-bcrypt")
    pool.startService()
    api = realm_api(
        config, (key_path, cert_path), clock=reactor, workers=pool, issuer="iss", services=["svc"]
    )
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(api.resource()))
    base = f"http://127.0.0.1:{port.getHost().port}/v2/token?service=svc"
    try:
        logins = [treq.get(base, auth=("slow", "wrong")) for _ in range(4)]
        finished_logins: list[object] = []
        for login in logins:
            login.addBoth(lambda result: finished_logins.append(result) or result)
        await treq.get(base.replace("/v2/token", "/healthz"))

        started = time.perf_counter()
        response = await treq.get(base + "&scope=repository:pub:pull")
        body = await response.json()
        anonymous = time.perf_counter() - started

        assert response.code == 200
        _, claims = verify_jwt(body["token"], load_certificate(cert_path))
        assert claims["access"] == [{"type": "repository", "name": "pub", "actions": ["pull"]}]
        assert not finished_logins, "the slow logins should still be running"
        assert anonymous < one_bcrypt / 2, (anonymous, one_bcrypt)

        results = await DeferredList(logins, consumeErrors=True)
        assert [r.code for _, r in results] == [401] * 4
    finally:
        await port.stopListening()
        pool.stopService()
