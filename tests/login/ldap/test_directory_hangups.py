"""Hang-ups during directory logins, against the suite's real slapd (Hardening III, item 5).

A cancelled login used to cancel the LDAP search under it, which dropped the one service
connection every login shares: 61 of 251 correct logins got 503 during 8 s of hang-ups, with
720 CRITICAL tracebacks. The realm is served on a real socket by this process's reactor; the
clients that hang up write their request and close at once, the others wait for their token.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from ldap_server import BASE, PASSWORD, SERVICE_DN, Slapd
from realms import realm_api
from support import hash_password, load_certificate, verify_jwt, write_key_pair
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from tokend.client_address import TrustedProxies, parse_networks
from tokend.login.credential_cache import CredentialCache
from tokend.login.ldap.accounts import DirectoryAccounts
from tokend.login.ldap.client import Directory
from tokend.login.ldap.config import DirectoryConfig
from tokend.login.throttle import LoginThrottle, address_key
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.signing.keys import load_signing_key
from tokend.threads import BoundedThreadQueue, ThreadPoolService

SERVICE = "registry.test"
GUESSER = "203.0.113.66"
OWNER = "192.0.2.10"
HANG_UPS = 90
LOGINS = 30


class HangUp(Protocol):
    """Writes a credentialed request and closes at once, before any answer."""

    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)
        self.transport.loseConnection()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest_twisted.ensureDeferred
async def test_hang_ups_leave_the_directory_connection_alone_and_count(
    tmp_path: Path, slapd: Slapd
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    users = {"alice": {"pass_hash": hash_password("alice-pw"), "repositories": {"*": ["pull"]}}}
    (config / "users.json").write_text(json.dumps(users))
    (config / "repositories.json").write_text(json.dumps({"repositories": []}))
    key_path, cert_path = write_key_pair(tmp_path)
    key = load_signing_key(key_path, cert_path)
    holder = PolicyHolder(load_policy(config).policy, reactor.seconds())
    pool = ThreadPoolService(reactor, 2, "test-bcrypt")
    pool.startService()
    cache = CredentialCache(ttl=0)  # every login asks the directory
    directory = Directory(
        DirectoryConfig(
            urls=(slapd.url,),
            base=BASE,
            bind_dn=SERVICE_DN,
            bind_password=slapd.bind_password,
            timeout=5.0,
        ),
        reactor,
    )
    throttle = LoginThrottle(per_account=HANG_UPS, per_address=HANG_UPS, window=300)
    api = realm_api(
        holder,
        key,
        clock=reactor,
        workers=BoundedThreadQueue(pool, limit=2, queue=4 * HANG_UPS),
        services=[SERVICE],
        throttle=throttle,
        credential_cache=cache,
        trusted_proxies=TrustedProxies(networks=parse_networks(["127.0.0.0/8"])),
        directory=DirectoryAccounts(directory, lambda: holder.current, cache, reactor.seconds, 5.0),
    )
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(api.resource()))
    number = port.getHost().port
    url = f"http://127.0.0.1:{number}/v2/token?service={SERVICE}&scope=repository:music/x:pull"
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", number)
    guess = (
        f"GET /v2/token?service={SERVICE} HTTP/1.1\r\nHost: tokend\r\n"
        f"Authorization: {basic('bach', 'wrong')}\r\nX-Real-IP: {GUESSER}\r\n\r\n"
    ).encode()
    connections = HTTPConnectionPool(reactor, persistent=False)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        logins = []
        for n in range(HANG_UPS):
            await connectProtocol(endpoint, HangUp(guess))
            if n % (HANG_UPS // LOGINS) == 0:
                logins.append(
                    treq.get(
                        url,
                        headers={"Authorization": basic("mozart", PASSWORD), "X-Real-IP": OWNER},
                        pool=connections,
                    )
                )
        answers = await DeferredList(logins, consumeErrors=True)
        codes = [response.code for _, response in answers]
        assert codes == [200] * len(logins), codes
        body = await answers[-1][1].json()
        _, claims = verify_jwt(body["token"], load_certificate(cert_path))
        assert claims["sub"] == "mozart"

        # Every abandoned guess ran to its end and failed: the guesser is at its limit.
        for _ in range(600):
            wait = throttle.addresses.retry_after(address_key(GUESSER), reactor.seconds())
            if wait is not None and wait > 1:
                break
            await deferLater(reactor, 0.05, lambda: None)
        else:
            raise AssertionError(f"the guesser's address is not locked: {wait}")
        left = [e for e in events if "the client left before its answer" in e.get("log_format", "")]
        assert left, "no hang-up reached a check in flight"
        assert all(e["log_level"] == LogLevel.info for e in left)
        loud = [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
        assert not loud, loud[:3]
    finally:
        globalLogPublisher.removeObserver(events.append)
        await connections.closeCachedConnections()
        await port.stopListening()
        directory.close()
        pool.stopService()
