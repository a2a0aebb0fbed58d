"""Anonymous latency while one address floods logins against a 100,000-user policy (issue 12.1).

    python3 bench/login_attack.py [--users 100000] [--duration 5] [--cost 10] [--strict]

Three scenarios, each on a freshly started daemon (``twistd -n registry-token`` with its default
limits, so the throttle starts empty) behind a UNIX socket:

  (a) no attack: one anonymous client, sequential;
  (b) the same client while 4 connections from one address (``X-Real-IP: 203.0.113.66``; the
      UNIX peer is a trusted proxy) send ``alice:<73-byte password>`` as fast as they can;
  (c) the same with wrong 8-byte passwords, so that bcrypt really runs until the address is
      throttled.

The attackers run in a process of their own, so that their event loop does not delay the
measuring client's. The issue's acceptance: under (b), the anonymous p50 stays under 5 ms and the
attacking address gets 429. The script prints whether it holds; it exits 1 if an attacker never
got 429 or an anonymous request failed (behaviour), and for a p50 at or over 5 ms only with
``--strict`` (timing depends on the machine). Everything talks to UNIX sockets in a temporary
directory; each daemon and the attacker process are stopped by their PID; about 35 s in all.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen

ATTACKER_ADDRESS = "203.0.113.66"
VICTIM, VICTIM_PASSWORD = "alice", "alice-password"
LONG_PASSWORD = "x" * 73
"""One byte over bcrypt's 72: refused before any per-user work, and counted as a failure."""
WRONG_PASSWORDS = tuple(f"wrong{n:03d}" for n in range(100))
"""8 bytes each, all wrong: every one costs a full bcrypt check until the throttle answers."""
ATTACK_CONNECTIONS = 4
ATTACK_LIMIT = 200_000
"""Requests the attacker process sends at most, whatever the window."""
P50_TARGET_MS = 5.0
WARMUP = 1.0


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    passwords: tuple[str, ...]
    """The attackers' passwords, round-robin; none: no attack."""


SCENARIOS = (
    Scenario("a", "(a) no attack", ()),
    Scenario("b", "(b) 4x alice, 73-byte password", (LONG_PASSWORD,)),
    Scenario("c", "(c) 4x alice, wrong 8-byte passwords", WRONG_PASSWORDS),
)


@dataclass(frozen=True)
class Attack:
    """What the attacker process saw: statuses, transport errors, and when 429 first came."""

    statuses: Counter[int]
    errors: Counter[str]
    seconds: float
    first_429_after: int | None
    """Requests answered before the first 429 (None: never)."""

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    anonymous: loadgen.Result
    attack: Attack | None
    daemon_cpu: float
    """The daemon's CPU time over the anonymous client's run (warm-up included), per second."""


def attack_requests(passwords: tuple[str, ...]) -> list[loadgen.Request]:
    headers = {"X-Real-IP": ATTACKER_ADDRESS}
    return [
        loadgen.get_request(
            "attack", "/v2/token?service=registry", {**loadgen.basic(VICTIM, p), **headers}
        )
        for p in passwords
    ]


async def flood(socket: Path, requests: list[loadgen.Request], seconds: float) -> Attack:
    """``ATTACK_CONNECTIONS`` keep-alive connections, each sending as fast as it is answered,
    until ``seconds`` have passed or ``ATTACK_LIMIT`` requests were sent."""
    answered = 0
    first_429: int | None = None

    def seen(status: int) -> None:
        nonlocal answered, first_429
        if status == 429 and first_429 is None:
            first_429 = answered
        answered += 1

    result = await loadgen.drive(
        loadgen.unix_connector(socket),
        requests,
        concurrency=ATTACK_CONNECTIONS,
        total=ATTACK_LIMIT,
        duration=seconds,
        on_status=seen,
    )
    statuses: Counter[int] = Counter()
    for (_, status), count in result.statuses.items():
        statuses[status] += count
    return Attack(statuses, result.errors, result.elapsed, first_429)


def attacker(
    socket: Path,
    passwords: tuple[str, ...],
    seconds: float,
    ready: Event,
    results: multiprocessing.Queue[Attack],
) -> None:
    """The attacker process: says it is under way, floods, sends back what it saw."""
    ready.set()
    results.put(asyncio.run(flood(socket, attack_requests(passwords), seconds)))


def run_scenario(
    root: Path, config: Path, key_pair: tuple[Path, Path], scenario: Scenario, duration: float
) -> Outcome:
    context = multiprocessing.get_context("spawn")
    with harness.daemon(root, f"tokend-{scenario.key}", config=config, key_pair=key_pair) as d:
        assert d.socket is not None
        process = None
        if scenario.passwords:
            ready = context.Event()
            results: multiprocessing.Queue[Attack] = context.Queue()
            process = context.Process(
                target=attacker,
                args=(d.socket, scenario.passwords, WARMUP + duration + 1.0, ready, results),
                daemon=True,
            )
            process.start()
            if not ready.wait(30):
                raise harness.StartFailed("the attacker process did not start")
        try:
            cpu, wall = d.cpu_seconds(), time.perf_counter()
            anonymous = loadgen.run(
                loadgen.unix_connector(d.socket),
                [loadgen.anonymous_request()],
                concurrency=1,
                duration=duration,
                warmup=WARMUP,
            )
            cpu = (d.cpu_seconds() - cpu) / (time.perf_counter() - wall)
            attack = results.get(timeout=30) if process is not None else None
        finally:
            if process is not None:
                process.join(5)
                if process.is_alive():
                    process.terminate()
                    process.join(5)
    return Outcome(scenario, anonymous, attack, cpu)


def table(outcomes: list[Outcome]) -> str:
    header = (
        "scenario",
        "anonymous p50 ms",
        "p99 ms",
        "anonymous req/s",
        "daemon CPU",
        "attacker 401",
        "429",
        "503",
        "other",
        "attacker req/s",
        "first 429 after",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for outcome in outcomes:
        anonymous, attack = outcome.anonymous, outcome.attack
        cells = [
            outcome.scenario.label,
            f"{anonymous.percentile_ms(0.5):.2f}",
            f"{anonymous.percentile_ms(0.99):.2f}",
            f"{anonymous.rate():,.0f}",
            f"{100 * outcome.daemon_cpu:.0f} %",
        ]
        if attack is None:
            cells += ["", "", "", "", "", ""]
        else:
            other = {s: n for s, n in attack.statuses.items() if s not in (401, 429, 503)}
            other_text = ", ".join(f"{s}: {n}" for s, n in sorted(other.items()))
            if attack.errors:
                other_text = ", ".join([*filter(None, [other_text]), str(dict(attack.errors))])
            cells += [
                f"{attack.statuses[401]:,}",
                f"{attack.statuses[429]:,}",
                f"{attack.statuses[503]:,}",
                other_text,
                f"{attack.total / attack.seconds:,.0f}",
                "never" if attack.first_429_after is None else f"{attack.first_429_after} requests",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(outcomes: list[Outcome], strict: bool) -> int:
    """Print whether the acceptance holds; return the exit status."""
    status = 0
    for outcome in outcomes:
        bad = {s: n for (_, s), n in outcome.anonymous.statuses.items() if s != 200}
        if bad or outcome.anonymous.errors or not outcome.anonymous.count():
            print(
                f"{outcome.scenario.label}: anonymous requests failed: statuses {bad}, "
                f"errors {dict(outcome.anonymous.errors)}"
            )
            status = 1
        attack = outcome.attack
        if attack is None:
            continue
        throttled = attack.statuses[429] > 0
        print(
            f"{outcome.scenario.label}: attacker got 429: "
            f"{'yes' if throttled else 'NO'} ({attack.statuses[429]:,} of {attack.total:,})"
        )
        if not throttled:
            status = 1
        if any(s >= 500 and s != 503 for s in attack.statuses):
            print(f"{outcome.scenario.label}: attacker got a 5xx other than 503")
            status = 1
    under_attack = next(o for o in outcomes if o.scenario.key == "b")
    p50 = under_attack.anonymous.percentile_ms(0.5)
    fast = p50 < P50_TARGET_MS
    assert under_attack.attack is not None
    holds = fast and under_attack.attack.statuses[429] > 0
    print(
        f"{under_attack.scenario.label}: anonymous p50 {p50:.2f} ms < {P50_TARGET_MS:.0f} ms: "
        f"{'yes' if fast else 'NO'}"
    )
    print(f"acceptance (issue 12 point 1): {'holds' if holds else 'DOES NOT HOLD'}")
    if strict and not fast:
        status = 1
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="users in users.json")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of alice's hash")
    parser.add_argument("--strict", action="store_true", help="also exit 1 on a slow p50")
    args = parser.parse_args()
    if args.users < 2 or not 0 < args.duration <= 15 or not 4 <= args.cost <= 14:
        parser.error("--users ≥ 2, 0 < --duration ≤ 15, 4 ≤ --cost ≤ 14")
    began = time.perf_counter()
    print(f"issue 12 point 1: login attack — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    with harness.temporary_directory("tokend-attack-") as root:
        config = root / "config"
        # write_bench_policy adds its own bench user beside alice: 2 + the cost-4 bulk.
        harness.write_bench_policy(
            config, args.cost, extra_users=args.users - 2, users={VICTIM: VICTIM_PASSWORD}
        )
        key_pair = harness.write_key_pair(root)
        size = (config / "users.json").stat().st_size / 1e6
        print(
            f"policy: {args.users:,} users ({size:.1f} MB; alice cost {args.cost}, the rest one "
            f"cost-4 hash); daemon limits: its defaults; anonymous: 1 client, sequential, "
            f"{args.duration:g} s after a {WARMUP:g} s warm-up; attacker: "
            f"{ATTACK_CONNECTIONS} connections as X-Real-IP {ATTACKER_ADDRESS}",
            flush=True,
        )
        outcomes = []
        for scenario in SCENARIOS:
            outcome = run_scenario(root, config, key_pair, scenario, args.duration)
            print(f"  {scenario.label}: done", flush=True)
            outcomes.append(outcome)
    print()
    print(table(outcomes))
    print()
    status = verdict(outcomes, args.strict)
    print(f"total {time.perf_counter() - began:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
