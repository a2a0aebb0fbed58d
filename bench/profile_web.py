"""Where an anonymous token request's CPU time goes, and what each proposed change would save.

    python3 bench/profile_web.py [--rounds 12] [--requests 500] [--cprofile]

Builds the daemon's real ``Site`` with ``tokend.tap.makeService`` (the same options, policy and
key as a daemon) and feeds it requests through an in-memory transport: no sockets, no reactor
and no load generator compete, so the figure is the CPU cost of one request on the reactor
thread. Logging goes to a text file as under ``twistd --logfile``, written by the daemon's
text observer (``tokend.logs.text_lines``).

Then it measures "what if" variants by switching parts off at run time, interleaved in rounds
(the minimum per variant is kept, which filters out other processes' noise):

  access-log      Twisted's per-request access line (``Site.log``) written again, as before
                  tokend's Site dropped it (what dropping it saved);
  no-issued-log   the ``issued …`` event of ``TokenAPI`` not emitted;
  no-log-file     events still emitted, but the file observer does nothing;
  twisted-text    Twisted's own ``textFileLogObserver`` (what twistd installed before
                  ``tokend.logs.text_lines``; the same bytes);
  json-log        a ``jsonFileLogObserver`` instead of the text one;
  no-klein        the route coroutine called from a plain ``Resource`` (no Klein/werkzeug
                  routing, no Klein response handling);
  and combinations.

These patch tokend.web.realm's objects from outside and are measurements, not proposals of code.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support import hash_password, write_key_pair
from twisted.internet import reactor
from twisted.internet.address import UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.logger import (
    Logger,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tokend.logs import text_lines
from tokend.tap import Options, makeService
from tokend.web import realm

REQUEST = (
    b"GET /v2/token?service=registry&scope=repository:public/hello:pull HTTP/1.1\r\n"
    b"Host: localhost\r\n\r\n"
)
VARIANTS = (
    "as is",
    "access-log",
    "no-issued-log",
    "access-log+no-issued-log",
    "no-log-file",
    "twisted-text",
    "json-log",
    "no-klein",
    "no-klein+no-issued-log",
)


class Bench:
    def __init__(self, root: Path) -> None:
        config = root / "config"
        config.mkdir()
        users = {"bench": {"pass_hash": hash_password("bench", 4), "repositories": {"*": ["pull"]}}}
        (config / "users.json").write_text(json.dumps(users))
        anonymous = {"blacklist": False, "repositories": ["public/hello"]}
        (config / "repositories.json").write_text(json.dumps(anonymous))
        key_path, cert_path = write_key_pair(root)
        self.text_log = (root / "tokend.log").open("w")
        self.json_log = (root / "tokend.json").open("w")
        self.observer: Callable[[Any], None] = text_lines.text_observer_to(self.text_log)
        globalLogBeginner.beginLoggingTo([lambda event: self.observer(event)], False, False)
        options = Options(environ={})
        options.parseOptions(
            ["--listen", f"unix:{root}/tokend.sock", "--config-dir", str(config),
             "--key", str(key_path), "--cert", str(cert_path)]
        )  # fmt: skip
        service = makeService(options, reactor)
        self.site = next(s.factory for s in service if hasattr(s, "factory"))
        self.site.doStart()  # opens the access log, as listening does
        self.no_access_log = self.site.log
        self.access_log = partial(Site.log, self.site)
        self.resource = self.site.resource
        klein_resource = getattr(self.resource, "_wrapped", self.resource)
        self.api = klein_resource._app._instance
        api = self.api

        class Direct(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                def written(body: bytes) -> None:
                    request.write(body)
                    request.finish()

                answer = api.realm(request)
                if isinstance(answer, bytes):
                    return answer
                answer.addCallback(written)
                return NOT_DONE_YET

        self.direct = Direct()
        self.quiet = Logger(observer=lambda event: None)
        self.transport = StringTransport()
        self.transport.getPeer = lambda: UNIXAddress(None)  # type: ignore[method-assign]
        self.protocol = self.site.buildProtocol(UNIXAddress(None))
        self.protocol.makeConnection(self.transport)

    def use(self, variant: str) -> None:
        parts = set(variant.split("+"))
        self.site.log = self.access_log if "access-log" in parts else self.no_access_log
        realm.TokenAPI.log = self.quiet if "no-issued-log" in parts else Logger()
        self.site.resource = self.direct if "no-klein" in parts else self.resource
        if "no-log-file" in parts:
            self.observer = lambda event: None
        elif "json-log" in parts:
            self.observer = jsonFileLogObserver(self.json_log)
        elif "twisted-text" in parts:
            self.observer = textFileLogObserver(self.text_log)
        else:
            self.observer = text_lines.text_observer_to(self.text_log)

    def one(self) -> None:
        self.protocol.dataReceived(REQUEST)
        self.transport.clear()

    def check(self) -> None:
        self.protocol.dataReceived(REQUEST)
        status = self.transport.value().split(b"\r\n", 1)[0]
        self.transport.clear()
        if b" 200 " not in status:
            raise SystemExit(f"unexpected answer {status!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=500, help="per variant and round")
    parser.add_argument("--cprofile", action="store_true", help="also print a cProfile, as is")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tokend-profile-") as temp:
        bench = Bench(Path(temp))
        for variant in VARIANTS:
            bench.use(variant)
            bench.check()
        best = dict.fromkeys(VARIANTS, float("inf"))
        for _ in range(args.rounds):
            for variant in VARIANTS:
                bench.use(variant)
                began = time.process_time()
                for _ in range(args.requests):
                    bench.one()
                best[variant] = min(best[variant], (time.process_time() - began) / args.requests)
        base = best[VARIANTS[0]]
        print("CPU per anonymous token request through the real Site (min over rounds):")
        for variant in VARIANTS:
            saved = base - best[variant]
            print(f"  {variant:40s}{best[variant] * 1e6:6.0f} µs"
                  f"  saves {saved * 1e6:4.0f} µs ({100 * saved / base:3.0f} %)")  # fmt: skip
        if args.cprofile:
            bench.use("as is")
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.requests * 4):
                bench.one()
            profiler.disable()
            output = io.StringIO()
            pstats.Stats(profiler, stream=output).sort_stats("cumulative").print_stats(40)
            print(output.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
