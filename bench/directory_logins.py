"""Directory logins/s next to anonymous tokens/s, and the latency of a directory login the
credential cache does not answer (issue 14).

    python3 bench/directory_logins.py [--duration 5] [--warmup 1] [--rounds 1] [--cost 10]

Starts a real slapd (tests/ldap_server.py: the test directory, mozart in ou=musicians) and two
real daemons on UNIX sockets with --ldap-url pointing at it (throttling off, as in bench/run):

  anonymous        ``GET`` for ``repository:public/hello:pull`` (the yardstick);
  ldap-cached      ``GET`` with mozart's Basic credentials, answered from the credential cache
                   (goal: at least 80 % of the anonymous rate: a busy CI must not cost the
                   directory, nor the daemon, much more than anonymous pulls);
  ldap-uncached    the same on a daemon with ``--credential-cache-ttl 0``: a search on the
                   shared service connection, then a bind on a connection of its own;
  file-uncached    a users.json account on that daemon: one bcrypt at ``--cost``, for scale.

Prints a table (req/s, p50, p99, daemon CPU share and CPU per request, status counts), the
cached/anonymous ratio against the goal, and the uncached latencies. The timing never fails the
run; it exits 1 only if a request was answered with anything but 200 or failed at transport.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen
from ldap_server import BASE, PASSWORD, SERVICE_DN, start_slapd  # tests/, on the path
from refresh_grant import Row, measure, print_table

GOAL = 0.80
ACCOUNT = "mozart"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_measurement_options(parser)
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the file user")
    args = parser.parse_args()

    requests = {
        "anonymous": loadgen.anonymous_request(),
        "ldap-cached": loadgen.authenticated_request("ldap-cached", ACCOUNT, PASSWORD),
        "ldap-uncached": loadgen.authenticated_request("ldap-uncached", ACCOUNT, PASSWORD),
        "file-uncached": loadgen.authenticated_request(
            "file-uncached", harness.USER, harness.PASSWORD
        ),
    }
    best: dict[tuple[str, int], Row] = {}
    bad = 0
    with harness.temporary_directory() as root:
        slapd = start_slapd(root / "slapd")
        try:
            config = root / "config"
            harness.write_bench_policy(config, args.cost)
            (config / "groups.json").write_text(
                '{"everyone": {"ldap_groups": ["*"], "repositories": {"*": ["pull"]}}}'
            )
            directory = [
                *("--ldap-url", slapd.url, "--ldap-base", BASE, "--ldap-bind-dn", SERVICE_DN),
                *("--ldap-bind-password-file", str(slapd.bind_password_file)),
            ]
            # No per-address share: every bench connection comes from the one UNIX peer.
            limits = [*harness.generous_limits(), "--bcrypt-per-address", "0", *directory]
            with (
                harness.daemon(root, "cached", config=config, extra=limits) as cached,
                harness.daemon(
                    root,
                    "uncached",
                    config=config,
                    extra=[*limits, "--credential-cache-ttl", "0"],
                ) as uncached,
            ):
                plan = [
                    (cached, "anonymous"),
                    (cached, "ldap-cached"),
                    (uncached, "ldap-uncached"),
                    (uncached, "file-uncached"),
                ]
                for running, kind in plan:
                    assert running.socket is not None
                    warm = loadgen.run(
                        loadgen.unix_connector(running.socket),
                        [requests[kind]],
                        concurrency=1,
                        total=3,
                    )
                    bad += sum(n for (_, status), n in warm.statuses.items() if status != 200)
                for _ in range(args.rounds):
                    for concurrency in (1, 8):
                        for running, kind in plan:
                            row = measure(
                                running, requests[kind], concurrency, args.duration, args.warmup
                            )
                            bad += row.bad()
                            key = (kind, concurrency)
                            if key not in best or row.rate > best[key].rate:
                                best[key] = row
        finally:
            slapd.stop()
    kinds = [kind for _, kind in plan]
    print(
        f"two tokend daemons over UNIX sockets, a real slapd on 127.0.0.1; bcrypt cost "
        f"{args.cost}; {args.duration:g} s per row after {args.warmup:g} s warm-up; "
        f"best of {args.rounds} round(s)"
    )
    print_table([best[kind, concurrency] for concurrency in (1, 8) for kind in kinds])
    for concurrency in (1, 8):
        anonymous, ldap_cached = best["anonymous", concurrency], best["ldap-cached", concurrency]
        ratio = ldap_cached.rate / anonymous.rate if anonymous.rate else float("nan")
        verdict = "met" if ratio >= GOAL else "missed"
        uncached_row = best["ldap-uncached", concurrency]
        print(
            f"c={concurrency}: cached directory logins/anonymous {100 * ratio:.0f} % "
            f"(goal >= {100 * GOAL:.0f} %: {verdict}); uncached directory login p50 "
            f"{uncached_row.result.percentile_ms(0.5, 'ldap-uncached'):.2f} ms, p99 "
            f"{uncached_row.result.percentile_ms(0.99, 'ldap-uncached'):.2f} ms"
        )
    return harness.exit_status(bad)


if __name__ == "__main__":
    sys.exit(main())
