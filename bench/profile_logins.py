"""CPU per token request through the real Site: anonymous, a cached password login and a cached
access token login, side by side (issues 26 and 28).

    python3 bench/profile_logins.py [--rounds 10] [--requests 400] [--cprofile KIND]

Builds the daemon's tree with ``tokend.tap.makeService`` (the options, policy, key and SQLite
database of a daemon; its log under logs/, away from the watched directories) and feeds each
kind of request through an in-memory transport, interleaved in rounds; the minimum per kind is
kept, which filters out other processes' noise. No sockets and no load generator compete, so
the figures are what the reactor thread spends on one request, and their ratios what
bench/access_tokens.py's rates come down to once the system calls (the same for every kind)
are set aside.

The token lookups are answered from the database on the reactor thread rather than through
the store's pool: the door asks at most twice a second per token, and a thread's hop is not
what this measures. The first password login runs its bcrypt on the pool (the reactor runs
for a moment); the credential cache answers the rest.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support import hash_password, write_key_pair
from twisted.internet import reactor
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogBeginner

from tokend.access_tokens.secrets import new_secret
from tokend.login.access_tokens import AccessTokenAccounts
from tokend.logs import text_lines
from tokend.store.database import connect, locate
from tokend.store.migrating import upgrade
from tokend.store.queries import AccessTokens, secret_hash
from tokend.tap import Options, makeService

USER, PASSWORD = "bench", "bench-password"
KINDS = ("anonymous", "password", "token")


def request(scope: str, credentials: str | None = None) -> bytes:
    header = b""
    if credentials is not None:
        header = b"Authorization: Basic " + base64.b64encode(credentials.encode()) + b"\r\n"
    return (
        f"GET /v2/token?service=registry&scope={scope} HTTP/1.1\r\nHost: localhost\r\n".encode()
        + header
        + b"\r\n"
    )


class AtOnce:
    """The store's queries answered on the calling thread (see the module's docstring)."""

    def __init__(self, queries: AccessTokens) -> None:
        self._queries = queries

    def find_by_hash(self, hashed: str) -> Deferred[Any]:
        return succeed(self._queries.find_by_hash(hashed))

    def list(self, owner: str | None = None) -> Deferred[Any]:
        return succeed(self._queries.list(owner))

    def touch(self, token_id: str, now: int, address: str | None) -> Deferred[bool]:
        return succeed(self._queries.touch(token_id, now, address))


class Bench:
    def __init__(self, root: Path) -> None:
        config = root / "config"
        config.mkdir()
        rules = {"bench/*": ["pull", "push"]}
        users = {USER: {"pass_hash": hash_password(PASSWORD, 4), "repositories": rules}}
        (config / "users.json").write_text(json.dumps(users))
        anonymous = {"blacklist": False, "repositories": ["bench/app"]}
        (config / "repositories.json").write_text(json.dumps(anonymous))
        key_path, cert_path = write_key_pair(root)
        (root / "logs").mkdir()
        log = (root / "logs" / "tokend.log").open("w")
        globalLogBeginner.beginLoggingTo([text_lines.text_observer_to(log)], False, False)
        (root / "state").mkdir(mode=0o700)
        database = root / "state" / "tokend.db"
        location = locate(str(database))
        upgrade(location)
        queries = AccessTokens(connect(location), location)
        secret = new_secret()
        now = int(time.time())
        queries.create(USER, "bench", secret_hash(secret), {"bench/*": ("pull", "push")},
                       now - 10, now + 86_400)  # fmt: skip
        options = Options(environ={})
        options.parseOptions(
            ["--listen", f"unix:{root}/tokend.sock", "--config-dir", str(config),
             "--key", str(key_path), "--cert", str(cert_path), "--database", str(database)]
        )  # fmt: skip
        self.service = makeService(options, reactor)
        self.site = next(s.factory for s in self.service if hasattr(s, "factory"))
        api = self.site.resource._wrapped._app._instance
        for authenticator in api._logins._authenticators:
            if isinstance(authenticator, AccessTokenAccounts):
                authenticator._tokens = AtOnce(queries)
        self.transport = StringTransport()
        self.transport.getPeer = lambda: UNIXAddress(None)  # type: ignore[method-assign]
        self.protocol = self.site.buildProtocol(UNIXAddress(None))
        self.protocol.makeConnection(self.transport)
        authenticated = "repository:bench/app:pull,push"
        self.requests = {
            "anonymous": request("repository:bench/app:pull"),
            "password": request(authenticated, f"{USER}:{PASSWORD}"),
            "token": request(authenticated, f"{USER}:{secret}"),
        }

    def status(self, kind: str) -> bytes:
        self.protocol.dataReceived(self.requests[kind])
        status = self.transport.value().split(b"\r\n", 1)[0]
        self.transport.clear()
        return status

    def per_request(self, kind: str, count: int) -> float:
        data = self.requests[kind]
        began = time.process_time()
        for _ in range(count):
            self.protocol.dataReceived(data)
        spent = time.process_time() - began
        self.transport.clear()
        return spent / count


def measure(bench: Bench, args: argparse.Namespace) -> int:
    statuses = {kind: bench.status(kind) for kind in KINDS}
    if any(b" 200 " not in status for status in statuses.values()):
        print(f"unexpected answers: {statuses}")
        return 1
    best = dict.fromkeys(KINDS, float("inf"))
    for _ in range(args.rounds):
        for kind in KINDS:
            best[kind] = min(best[kind], bench.per_request(kind, args.requests))
    print("CPU per token request through the real Site (min over rounds):")
    for kind in KINDS:
        ratio = best[kind] / best["anonymous"]
        print(f"  {kind:10s}{best[kind] * 1e6:6.0f} µs  {100 * ratio:4.0f} % of anonymous")
    if args.cprofile:
        profiler = cProfile.Profile()
        profiler.enable()
        bench.per_request(args.cprofile, args.requests * 4)
        profiler.disable()
        output = io.StringIO()
        pstats.Stats(profiler, stream=output).sort_stats("tottime").print_stats(35)
        print(output.getvalue())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=400, help="per kind and round")
    parser.add_argument("--cprofile", choices=KINDS, help="also print a cProfile of one kind")
    args = parser.parse_args()
    outcome: list[int] = []
    with tempfile.TemporaryDirectory(prefix="tokend-profile-") as temp:
        bench = Bench(Path(temp))
        bench.service.startService()

        def run() -> None:
            try:
                outcome.append(measure(bench, args))
            finally:
                maybeDeferred(bench.service.stopService).addBoth(lambda _: reactor.stop())

        bench.status("password")  # its bcrypt runs on the pool while the reactor runs
        reactor.callLater(1.0, run)
        reactor.run()
    return outcome[0] if outcome else 1


if __name__ == "__main__":
    sys.exit(main())
