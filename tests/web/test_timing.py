"""Response time does not tell which accounts exist: an unknown user costs one bcrypt check too.

Real bcrypt at a real cost, in the real worker pool, through a real socket; the two kinds of
failed login are interleaved so that load from elsewhere falls on both alike.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import bcrypt
import pytest_twisted
import treq
from realms import realm_api
from support import hash_password, write_key_pair
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.threads import ThreadPoolService

COST = 8
"""About 20 ms per check: large against the HTTP round trip, small enough for many trials."""
WARM_UP = 4
TRIALS = 40
TOLERANCE = 1.2


def write_users(config: Path) -> None:
    config.mkdir()
    users = {
        name: {"pass_hash": hash_password(f"{name}-right", COST), "repositories": {"*": ["pull"]}}
        for name in ("alice", "bob", "carol")
    }
    (config / "users.json").write_text(json.dumps(users))
    (config / "repositories.json").write_text(json.dumps({"repositories": []}))


def one_bcrypt_check(pass_hash: bytes) -> float:
    started = time.perf_counter()
    bcrypt.checkpw(b"not the password", pass_hash)
    return time.perf_counter() - started


@pytest_twisted.ensureDeferred
async def test_unknown_users_take_as_long_as_wrong_passwords(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_users(config)
    policy = load_policy(config).policy
    assert policy.dummy_cost("ghost") == COST, "one cost in use (mixed costs: test_hashes.py)"
    checks = [one_bcrypt_check(policy.users["alice"].pass_hash) for _ in range(3)]

    key_path, cert_path = write_key_pair(tmp_path)
    workers = ThreadPoolService(reactor, 2, "timing-bcrypt")
    workers.startService()
    api = realm_api(
        PolicyHolder(policy, reactor.seconds()),
        (key_path, cert_path),
        clock=reactor,
        workers=workers,
        issuer="tokend-timing",
        services=["svc"],
    )
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(api.resource()))
    url = f"http://127.0.0.1:{port.getHost().port}/v2/token?service=svc"
    connections = HTTPConnectionPool(reactor, persistent=True)
    rng = random.Random()

    async def failed_login(kind: str, trial: int) -> float:
        if kind == "unknown":
            auth = (f"ghost{trial}-{rng.randrange(10**6)}", "alice-right")
        else:
            auth = (rng.choice(["alice", "bob"]), f"wrong-{rng.randrange(10**6)}")
        started = time.perf_counter()
        response = await treq.get(url, auth=auth, pool=connections)
        body = await response.json()
        elapsed = time.perf_counter() - started
        assert response.code == 401, (kind, body)
        assert body["errors"][0]["code"] == "UNAUTHORIZED"
        return elapsed

    times: dict[str, list[float]] = {"unknown": [], "wrong": []}
    try:
        for trial in range(WARM_UP + TRIALS):
            for kind in rng.sample(sorted(times), 2):
                elapsed = await failed_login(kind, trial)
                if trial >= WARM_UP:
                    times[kind].append(elapsed)
            # One bcrypt's cost sampled throughout: its quickest is the machine's unloaded cost,
            # whatever load came and went (three samples at the start once met a burst and
            # said 64 ms of a 19 ms check).
            checks.append(one_bcrypt_check(policy.users["alice"].pass_hash))
    finally:
        await connections.closeCachedConnections()
        await port.stopListening()
        workers.stopService()

    one_check = min(checks)
    unknown = statistics.median(times["unknown"])
    wrong = statistics.median(times["wrong"])
    summary = f"median unknown {unknown * 1000:.1f} ms, wrong password {wrong * 1000:.1f} ms"
    assert min(unknown, wrong) > one_check / 2, f"{summary}: bcrypt ({one_check * 1000:.1f} ms)"
    assert max(unknown, wrong) / min(unknown, wrong) <= TOLERANCE, summary
