"""Anonymous tokens/s from one daemon with 1, 2 and one-per-CPU workers, and from two daemons
behind nginx, in one run (issue 16).

    python3 bench/workers.py [--duration 5] [--connections 32] [--threads 2]

Each configuration is a real ``twistd registry-token`` (throttling off, as in bench/run) on
127.0.0.1, measured with wrk over TCP (wrk is not in the daemon's process, but it shares the
machine's cores: on a 2-core machine, the load generator takes part of the CPU the workers would
use). The daemon rows list ``--workers``; the nginx row is two single-worker daemons on UNIX
sockets behind one nginx worker (the multi-replica shape, on one machine). The goal: 2 workers
at least 1.5 times 1 worker. Prints a table and the ratio, and for each ``--workers`` above 1
the CPU time the first process (the supervisor, which writes the workers' log lines) spent
during the measured run; it never fails on timing, only if wrk is missing or a daemon does not
start.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen
from support import free_port, write_key_pair

GOAL = 1.5


@dataclass(frozen=True)
class Row:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: str


def wrk(port: int, seconds: float, connections: int, threads: int) -> Row:
    done = subprocess.run(
        [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            f"http://127.0.0.1:{port}{loadgen.ANONYMOUS_QUERY}",
        ],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )  # fmt: skip
    text = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]

    def percentile(name: str) -> float:
        found = re.search(rf"^\s+{name}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if found is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return float(found.group(1)) * scale

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    problems = ", ".join(
        part
        for part in (
            f"{errors.group(1)} non-2xx" if errors else "",
            socket_errors.group(1) if socket_errors else "",
        )
        if part
    )
    return Row("", rate, percentile("50"), percentile("99"), problems or "-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk (apt-get install wrk)", file=sys.stderr)
        return 1
    cpus = os.cpu_count() or 1
    counts = sorted({1, 2, cpus})
    rows: list[Row] = []
    parent_cpu: list[str] = []
    with harness.temporary_directory() as root:
        config = root / "config"
        harness.write_bench_policy(config, cost=4)
        key_pair = write_key_pair(root)
        limits = harness.generous_limits()
        for count in counts:
            port = free_port()
            with harness.daemon(
                root, f"w{count}", config=config, key_pair=key_pair, port=port,
                extra=[*limits, "--workers", str(count)],
            ) as running:  # fmt: skip
                _all_workers_ready(running)
                wrk(port, args.warmup, args.connections, args.threads)
                before = _cpu_seconds(running.pid)
                row = wrk(port, args.duration, args.connections, args.threads)
                rows.append(Row(f"1 daemon, --workers {count}", *_values(row)))
                if count > 1:
                    spent = _cpu_seconds(running.pid) - before
                    requests = row.requests_per_second * args.duration
                    parent_cpu.append(
                        f"--workers {count}: first process {spent:.2f} s CPU in "
                        f"{args.duration:g} s ({100 * spent / args.duration:.1f} % of a core, "
                        f"{1e6 * spent / max(requests, 1):.0f} us per request)"
                    )
        if harness.nginx_available():
            with (
                harness.daemon(root, "a", config=config, key_pair=key_pair, extra=limits) as a,
                harness.daemon(root, "b", config=config, key_pair=key_pair, extra=limits) as b,
            ):
                assert a.socket is not None and b.socket is not None
                port = free_port()
                with harness.nginx(root, port, [a.socket, b.socket]):
                    wrk(port, args.warmup, args.connections, args.threads)
                    row = wrk(port, args.duration, args.connections, args.threads)
                    rows.append(Row("2 daemons behind nginx", *_values(row)))
    print(f"anonymous tokens, wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
          f"{cpus} CPUs")  # fmt: skip
    print(f"{'configuration':<28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  errors")
    for row in rows:
        print(
            f"{row.name:<28} {row.requests_per_second:>9.0f} {row.p50_ms:>8.2f} "
            f"{row.p99_ms:>8.2f}  {row.errors}"
        )
    for line in parent_cpu:
        print(line)
    one = next(r for r in rows if r.name.endswith("--workers 1"))
    two = next(r for r in rows if r.name.endswith("--workers 2"))
    ratio = two.requests_per_second / one.requests_per_second
    verdict = "met" if ratio >= GOAL else "missed"
    print(f"2 workers / 1 worker: {ratio:.2f} (goal >= {GOAL}: {verdict})")
    return 0


def _all_workers_ready(running: harness.Daemon) -> None:
    """/healthz answers as soon as one worker serves; the announcement follows all of them."""
    deadline = time.monotonic() + 60
    while "tokend listening on" not in running.log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise harness.StartFailed("the workers did not all start in 60 s")
        time.sleep(0.05)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of one process (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _values(row: Row) -> tuple[float, float, float, str]:
    return row.requests_per_second, row.p50_ms, row.p99_ms, row.errors


if __name__ == "__main__":
    sys.exit(main())
