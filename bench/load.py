"""Load script: 10,000 token requests at concurrency 50 over the UNIX socket of the real daemon.

    python3 bench/load.py [--requests 10000] [--concurrency 50] [--mix 70,25,5] [--cost 10]
                          [--keep-limits] [--socket PATH --user U --password P]

A reproducible shuffle of anonymous requests, authenticated ones with the same good credentials
(answered from the credential cache once warm, where the daemon has one) and wrong passwords
(always a full bcrypt). Prints throughput, latency percentiles per kind and counts by status
class. Exits 1 if any 5xx other than 503 or any transport error occurred: a 429 (throttled) or
503 (bcrypt queue full) is a designed answer and is counted apart. Not a timed unit test: the
figures depend on the machine.

Without ``--socket`` it starts its own daemon in a temporary directory, with throttling off and
a deep bcrypt queue where the daemon has those options (``--keep-limits`` keeps its defaults),
and stops it by its PID afterwards.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen

KINDS = ("anonymous", "cached", "wrong-password")


def schedule(
    mix: tuple[int, int, int], user: str, password: str, seed: int = 7
) -> list[loadgen.Request]:
    """One hundred requests in the ``mix`` proportions, shuffled; repeated round-robin."""
    requests = (
        [loadgen.anonymous_request()] * mix[0]
        + [loadgen.authenticated_request("cached", user, password)] * mix[1]
        + [loadgen.authenticated_request("wrong-password", user, password + "-wrong")] * mix[2]
    )
    random.Random(seed).shuffle(requests)
    return requests


def parse_mix(text: str) -> tuple[int, int, int]:
    try:
        a, c, w = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("--mix is three whole numbers, e.g. 70,25,5") from None
    if min(a, c, w) < 0 or a + c + w == 0:
        raise argparse.ArgumentTypeError("--mix needs non-negative parts, not all zero")
    return a, c, w


def report(result: loadgen.Result, concurrency: int) -> int:
    """Print the figures; return the exit status (1 on any unexpected 5xx or transport error)."""
    total = result.count()
    print(
        f"{total} requests at concurrency {concurrency} in {result.elapsed:.2f} s: "
        f"{result.rate():.0f} requests/s"
    )
    print(f"{'kind':<16}{'count':>7}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}  statuses")
    for kind in (*KINDS, None):
        count = result.count(kind)
        if not count:
            continue
        classes = ", ".join(f"{name}: {n}" for name, n in sorted(result.by_class(kind).items()))
        latencies = result.sorted_latencies(kind)
        print(
            f"{kind or 'all':<16}{count:>7}"
            f"{result.percentile_ms(0.50, kind):>9.1f}{result.percentile_ms(0.90, kind):>9.1f}"
            f"{result.percentile_ms(0.99, kind):>9.1f}{latencies[-1] * 1000:>9.1f}  {classes}"
        )
    for error, n in sorted(result.errors.items()):
        print(f"transport error {error}: {n}")
    server_errors = sum(
        n for (_, status), n in result.statuses.items() if status >= 500 and status != 503
    )
    designed = sum(n for (_, status), n in result.statuses.items() if status in (429, 503))
    if designed:
        print(f"429/503 from throttling or overload protection: {designed} (not failures)")
    unexpected = [
        f"{kind} {status}: {n}"
        for (kind, status), n in sorted(result.statuses.items())
        if status not in (429, 503)
        and status != {"anonymous": 200, "cached": 200, "wrong-password": 401}[kind]
    ]
    if unexpected:
        print("unexpected statuses: " + ", ".join(unexpected))
    if server_errors or result.errors:
        transport = sum(result.errors.values())
        print(f"FAIL: {server_errors} 5xx responses, {transport} transport errors")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=(70, 25, 5),
        help="anonymous,cached,wrong-password proportions (default 70,25,5)",
    )
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the bench user")
    parser.add_argument(
        "--keep-limits", action="store_true", help="keep the daemon's throttling and queue defaults"
    )
    parser.add_argument("--socket", type=Path, help="use this running daemon instead")
    parser.add_argument("--user", default=harness.USER)
    parser.add_argument("--password", default=harness.PASSWORD)
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    requests = schedule(args.mix, args.user, args.password)

    def drive(socket: Path) -> loadgen.Result:
        # One request first so that the cache is warm: "cached" means what it says.
        loadgen.run(
            loadgen.unix_connector(socket), [requests_by_kind["cached"]], concurrency=1, total=1
        )
        return loadgen.run(
            loadgen.unix_connector(socket),
            requests,
            concurrency=args.concurrency,
            total=args.requests,
        )

    requests_by_kind = {request.kind: request for request in requests}
    requests_by_kind.setdefault(
        "cached", loadgen.authenticated_request("cached", args.user, args.password)
    )
    if args.socket is not None:
        return report(drive(args.socket), args.concurrency)
    extra = [] if args.keep_limits else harness.generous_limits()
    with harness.temporary_directory() as root:
        harness.write_bench_policy(root / "config", args.cost)
        with harness.daemon(root, config=root / "config", extra=extra) as running:
            options = " ".join(extra) or "none"
            print(
                f"daemon pid {running.pid} on {running.socket} (extra options: {options}), "
                f"started in {running.startup_seconds:.2f} s"
            )
            result = drive(running.socket)  # type: ignore[arg-type]
    return report(result, args.concurrency)


if __name__ == "__main__":
    sys.exit(main())
