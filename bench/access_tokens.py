"""Access token logins per second next to anonymous ones, and the database writes a token's
last use costs under steady load (issue 26).

    python3 bench/access_tokens.py [--duration 5] [--warmup 1] [--rounds 1]
                                   [--tokens 10] [--steady 125] [--database sqlite|postgresql]

A script logs in with the same token for every push and pull, and the daemon keeps a token's
lookup for a second: the goal is that those logins run at least 80 % of the anonymous rate.
Its last use is written at most once a minute per token, whatever the load: the goal is at most
one write per token per minute. This starts one real daemon on a UNIX socket (throttling off,
as in bench/run) on a SQLite file of its own, or with ``--database postgresql`` on a PostgreSQL
the bench starts (tests/postgres_server.py, stopped by its PID), makes tokens with the
operator's tool (``tokend token create --json``), then measures with bench/loadgen.py:

  anonymous     ``GET`` for ``repository:public/hello:pull`` (the yardstick);
  cached-basic  ``GET`` with Basic of the users.json bench account, its password remembered by
                the credential cache;
  token         ``GET`` with Basic ``bench:tkd_at_…``, one token for every request (its lookup
                cached, its last use written at most once a minute);
  steady        ``--tokens`` fresh tokens taking turns at concurrency 8 for ``--steady``
                seconds, while a trigger of the bench's own counts every row the daemon
                updates in ``access_tokens``.

The writes are reported whole, per token, and per token per minute after each token's first
write (the first use of a token is always written); the smallest gap between two writes of one
token must be at least 60 s. The timing never fails the run; it exits 1 if a request was
answered with anything but 200 or failed at the transport, or a token was written more often
than once a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen
from refresh_grant import Row, best_of_rounds, print_table
from support import REPO  # tests/, on the path since harness

GOAL = 0.80
TOUCH_INTERVAL = 60
"""Seconds between two writes of one token's last use, at the most (the issue's bound)."""
SCOPE = "bench/*:pull,push"
KINDS = ("anonymous", "cached-basic", "token")

SQLITE_COUNTER = (
    "CREATE TABLE bench_writes (token_id TEXT NOT NULL, last_used_at INTEGER)",
    "CREATE TRIGGER bench_count_writes AFTER UPDATE ON access_tokens FOR EACH ROW "
    "BEGIN INSERT INTO bench_writes VALUES (new.id, new.last_used_at); END",
)
POSTGRESQL_COUNTER = (
    "CREATE TABLE bench_writes (token_id TEXT NOT NULL, last_used_at BIGINT)",
    "CREATE FUNCTION bench_count_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO bench_writes VALUES (NEW.id, NEW.last_used_at); RETURN NEW; END $$",
    "CREATE TRIGGER bench_count_writes AFTER UPDATE ON access_tokens FOR EACH ROW "
    "EXECUTE FUNCTION bench_count_write()",
)
"""A row trigger counts the daemon's writes as they happen (pg_stat_user_tables lags)."""


@contextlib.contextmanager
def database(kind: str, root: Path) -> Iterator[str]:
    """The ``--database`` value: a SQLite file in ``root``, or a PostgreSQL of the bench's own."""
    if kind == "sqlite":
        yield str(root / "tokens.db")
        return
    from postgres_server import PostgresServer  # tests/; imports pytest (for its skip)

    server = PostgresServer()
    try:
        server.initialise()
        yield server.url
    finally:
        server.remove()


def create_token(config: Path, where: str, name: str) -> str:
    """A token of the bench account made by ``tokend token create --json``: its secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    done = subprocess.run(
        [
            sys.executable, "-m", "tokend", "token", "create", "--config-dir", str(config),
            "--database", where, "--owner", harness.USER, "--name", name, "--expires", "1d",
            "--scope", SCOPE, "--json",
        ],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"tokend token create failed:\n{done.stdout}{done.stderr}")
    return str(json.loads(done.stdout)["secret"])


def execute(where: str, statements: tuple[str, ...]) -> list[tuple[object, ...]]:
    """Run statements on the daemon's database through tokend's own engine; the last one's
    rows."""
    from sqlalchemy import text

    from tokend.store.database import connect, locate

    engine = connect(locate(where), create=False)
    try:
        with engine.begin() as connection:
            rows: list[tuple[object, ...]] = []
            for statement in statements:
                result = connection.execute(text(statement))
                rows = [tuple(row) for row in result] if result.returns_rows else []
            return rows
    finally:
        engine.dispose()


def steady(
    running: harness.Daemon, where: str, secrets: list[str], seconds: float
) -> tuple[Row, list[tuple[object, ...]]]:
    """``secrets`` taking turns at concurrency 8 for ``seconds``; every write counted."""
    requests = [loadgen.authenticated_request("steady", harness.USER, secret) for secret in secrets]
    assert running.socket is not None
    cpu_before = running.cpu_seconds()
    result = loadgen.run(
        loadgen.unix_connector(running.socket), requests, concurrency=8, duration=seconds
    )
    row = Row("steady", 8, result, (running.cpu_seconds() - cpu_before) / result.elapsed)
    time.sleep(0.5)  # the last touches leave the daemon's store pool
    writes = execute(where, ("SELECT token_id, last_used_at FROM bench_writes",))
    return row, writes


def report_writes(writes: list[tuple[object, ...]], tokens: int, seconds: float) -> bool:
    """Print the write figures; False when a token was written twice within a minute."""
    times: dict[str, list[int]] = {}
    for token_id, used_at in writes:
        if isinstance(used_at, int):
            times.setdefault(str(token_id), []).append(used_at)
    gaps = [b - a for t in times.values() for a, b in zip(sorted(t), sorted(t)[1:], strict=False)]
    after_first = sum(len(t) for t in times.values()) - len(times)
    per_minute = after_first / tokens / (seconds / 60)
    bound = int(seconds // TOUCH_INTERVAL) + 1
    busiest = max((len(t) for t in times.values()), default=0)
    print(
        f"steady: {len(writes)} writes for {tokens} tokens used for {seconds:g} s "
        f"({len(times)} tokens written; at most {busiest} writes of one token, bound {bound}); "
        f"{per_minute:.2f} writes per token per minute after the first "
        f"(goal <= 1: {'met' if per_minute <= 1 else 'missed'}); "
        f"smallest gap between two writes of one token: "
        f"{f'{min(gaps)} s' if gaps else 'none (run --steady above 60 s to see one)'}"
    )
    return all(gap >= TOUCH_INTERVAL for gap in gaps) and busiest <= bound


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_measurement_options(parser)
    parser.add_argument("--tokens", type=int, default=10, help="tokens in the steady load")
    parser.add_argument("--steady", type=float, default=125.0, help="seconds of steady load")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()

    with harness.temporary_directory() as root, database(args.database, root) as where:
        config = root / "config"
        harness.write_bench_policy(config, 4)
        extra = [*harness.generous_limits(), "--database", where]
        with harness.daemon(root, config=config, extra=extra) as running:
            assert running.socket is not None
            secret = create_token(config, where, "bench-rate")
            requests = {
                "anonymous": loadgen.anonymous_request(),
                "cached-basic": loadgen.authenticated_request(
                    "cached-basic", harness.USER, harness.PASSWORD
                ),
                "token": loadgen.authenticated_request("token", harness.USER, secret),
            }
            best, bad = best_of_rounds(
                running, requests, KINDS, args.rounds, args.duration, args.warmup
            )
            fresh = [create_token(config, where, f"bench-steady-{n}") for n in range(args.tokens)]
            counter = SQLITE_COUNTER if args.database == "sqlite" else POSTGRESQL_COUNTER
            execute(where, counter)
            load, writes = steady(running, where, fresh, args.steady)
            bad += load.bad()
            pid = running.pid
    rows = [best[kind, concurrency] for concurrency in (1, 8) for kind in KINDS]
    print(
        f"tokend daemon pid {pid} over its UNIX socket, --database {args.database}; "
        f"{args.duration:g} s per row after {args.warmup:g} s warm-up; "
        f"best of {args.rounds} round(s); steady: {args.tokens} tokens, {args.steady:g} s, c=8"
    )
    print_table([*rows, load])
    for concurrency in (1, 8):
        anonymous, cached, token = (best[kind, concurrency] for kind in KINDS)
        ratio = token.rate / anonymous.rate if anonymous.rate else float("nan")
        print(
            f"c={concurrency}: token/anonymous {100 * ratio:.0f} % "
            f"(goal >= {100 * GOAL:.0f} %: {'met' if ratio >= GOAL else 'missed'}); "
            f"cached-basic/anonymous {100 * cached.rate / anonymous.rate:.0f} %; daemon CPU "
            f"per token login = {100 * token.cpu_per_request / anonymous.cpu_per_request:.0f} % "
            "of per anonymous"
        )
    within_bound = report_writes(writes, args.tokens, load.result.elapsed)
    if not within_bound:
        print("a token's last use was written more than once a minute")
    return max(harness.exit_status(bad), 0 if within_bound else 1)


if __name__ == "__main__":
    sys.exit(main())
