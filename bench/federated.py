"""Federated (workload identity) tokens/s next to anonymous tokens/s, and the cost of a first
RS256 and ES256 verification (issue 25).

    python3 bench/federated.py [--duration 5] [--warmup 1] [--rounds 1] [--fresh 1000]

A CI job asks for a token for each push and pull with the same platform JWT, and the daemon
remembers a verified JWT until it expires: the goal is that those requests run at least 80 % of
the anonymous rate. This starts one real daemon on a UNIX socket (throttling off, as in
bench/run) with two trusts in issuers.json, one RS256 and one ES256 issuer, their keys given as
``jwks_file`` (nothing is fetched), then measures with bench/loadgen.py:

  anonymous     ``GET`` for ``repository:public/hello:pull`` (the yardstick);
  cached-basic  ``GET`` with Basic of the users.json bench account, its password remembered by
                the credential cache: what any login costs beyond an anonymous request;
  fed-basic     ``GET`` with Basic ``bench-rs:JWT`` (what docker login and skopeo send), one
                RS256 JWT for every request: remembered after the first;
  fed-exchange  ``POST`` of the token-exchange grant with that JWT;
  rs256-first   ``--fresh`` distinct RS256 JWTs, each sent once: a verification every time;
  es256-first   the same with ES256 JWTs.

The cost of a first verification is the daemon CPU per request of the ``*-first`` rows minus
that of ``fed-basic``; for scale, the same signature checked by ``cryptography`` alone in this
process is printed beside it. The timing never fails the run; it exits 1 only if a request was
answered with anything but 200 or failed at the transport.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen
from e2e.issuer import SigningKey, github_claims, signed  # tests/, on the path since harness
from refresh_grant import Row, best_of_rounds, post_request, print_table

GOAL = 0.80
AUDIENCE = "https://registry.bench"
REPOSITORY = "bench/app"
SCOPE = f"repository:{REPOSITORY}:pull,push"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
TRUSTS = {"bench-rs": "https://ci.bench.invalid/rs", "bench-es": "https://ci.bench.invalid/es"}


def write_trusts(config: Path, keys: dict[str, SigningKey]) -> None:
    """issuers.json with one trust per key, each reading its JWKS from a file beside it."""
    trusts: dict[str, Any] = {}
    for name, key in keys.items():
        (config / f"{name}-jwks.json").write_text(json.dumps({"keys": [key.jwk()]}))
        trusts[name] = {
            "issuer": TRUSTS[name],
            "audience": AUDIENCE,
            "jwks_file": f"{name}-jwks.json",
            "conditions": {"repository_owner": "bench"},
            "account": "ci:${claim.repository}",
            "rules": {"${claim.repository}": ["pull", "push"]},
        }
    (config / "issuers.json").write_text(json.dumps({"trusts": trusts}, indent=1))


def mint(name: str, key: SigningKey) -> str:
    """A GitHub Actions shaped JWT of the bench repository, valid for an hour."""
    return signed(key, github_claims(TRUSTS[name], AUDIENCE, REPOSITORY, lifetime=3600))


def basic_request(kind: str, trust: str, token: str) -> loadgen.Request:
    query = f"{loadgen.AUTHENTICATED_QUERY}&account={quote(trust)}"
    return loadgen.get_request(kind, query, loadgen.basic(trust, token))


def exchange_request(token: str) -> loadgen.Request:
    form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", token),
        ("subject_token_type", JWT_TYPE),
        ("service", "registry"),
        ("scope", SCOPE),
    ]
    return post_request("fed-exchange", "/v2/token", form)


def signature_check_seconds(key: SigningKey, count: int = 200) -> float:
    """The median time ``cryptography`` takes to check one signature of ``key``: the floor
    under what a first verification can cost."""
    public: Any = key.private.public_key()
    message = b"x" * 600
    signature = key.private.sign(message, *_sign_arguments(key))
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        public.verify(signature, message, *_sign_arguments(key))
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _sign_arguments(key: SigningKey) -> tuple[Any, ...]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    if key.alg == "RS256":
        return (padding.PKCS1v15(), hashes.SHA256())
    return (ec.ECDSA(hashes.SHA256()),)


def fresh_row(running: harness.Daemon, kind: str, trust: str, key: SigningKey, count: int) -> Row:
    """``count`` distinct JWTs, each sent once on one connection: none is remembered."""
    requests = [basic_request(kind, trust, mint(trust, key)) for _ in range(count)]
    assert running.socket is not None
    cpu_before = running.cpu_seconds()
    result = loadgen.run(
        loadgen.unix_connector(running.socket), requests, concurrency=1, total=count
    )
    return Row(kind, 1, result, (running.cpu_seconds() - cpu_before) / result.elapsed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_measurement_options(parser)
    parser.add_argument("--fresh", type=int, default=1000, help="distinct JWTs per *-first row")
    args = parser.parse_args()

    keys = {"bench-rs": SigningKey.rs256("bench-rs-1"), "bench-es": SigningKey.es256("bench-es-1")}
    token = mint("bench-rs", keys["bench-rs"])
    requests = {
        "anonymous": loadgen.anonymous_request(),
        "cached-basic": loadgen.authenticated_request(
            "cached-basic", harness.USER, harness.PASSWORD
        ),
        "fed-basic": basic_request("fed-basic", "bench-rs", token),
        "fed-exchange": exchange_request(token),
    }
    kinds = tuple(requests)
    with harness.temporary_directory() as root:
        config = root / "config"
        harness.write_bench_policy(config, 4)
        write_trusts(config, keys)
        with harness.daemon(root, config=config, extra=harness.generous_limits()) as running:
            assert running.socket is not None
            best, bad = best_of_rounds(
                running, requests, kinds, args.rounds, args.duration, args.warmup
            )
            first = [
                fresh_row(running, "rs256-first", "bench-rs", keys["bench-rs"], args.fresh),
                fresh_row(running, "es256-first", "bench-es", keys["bench-es"], args.fresh),
            ]
            bad += sum(row.bad() for row in first)
            pid = running.pid
    rows = [best[kind, concurrency] for concurrency in (1, 8) for kind in kinds]
    print(
        f"tokend daemon pid {pid} over its UNIX socket; {args.duration:g} s per row after "
        f"{args.warmup:g} s warm-up; best of {args.rounds} round(s); "
        f"{args.fresh} distinct JWTs per *-first row (c=1)"
    )
    print_table([*rows, *first])
    for concurrency in (1, 8):
        anonymous, cached, basic, exchange = (best[kind, concurrency] for kind in kinds)
        for row in (cached, basic, exchange):
            ratio = row.rate / anonymous.rate if anonymous.rate else float("nan")
            verdict = "met" if ratio >= GOAL else "missed"
            goal = "" if row is cached else f" (goal >= {100 * GOAL:.0f} %: {verdict})"
            print(
                f"c={concurrency}: {row.kind}/anonymous {100 * ratio:.0f} %{goal}; "
                "daemon CPU per request = "
                f"{100 * row.cpu_per_request / anonymous.cpu_per_request:.0f} % of anonymous"
            )
    remembered = best["fed-basic", 1]
    for row, trust in zip(first, ("bench-rs", "bench-es"), strict=True):
        extra = row.cpu_per_request - remembered.cpu_per_request
        floor = signature_check_seconds(keys[trust])
        print(
            f"{row.kind}: a first verification costs {1e6 * extra:.0f} µs of daemon CPU "
            f"beyond a remembered one (p50 {row.result.percentile_ms(0.5, row.kind):.2f} ms "
            f"vs {remembered.result.percentile_ms(0.5, remembered.kind):.2f} ms); "
            f"the bare signature check: {1e6 * floor:.0f} µs"
        )
    return harness.exit_status(bad)


if __name__ == "__main__":
    sys.exit(main())
