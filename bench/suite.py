"""The benchmark suite behind ``bench/run``: starts the real daemon, measures, prints a table.

    python3 bench/suite.py [--duration 5] [--quick] [--only anonymous,auth,storm,...]

Rows (issue 7):
  anonymous  tokens/s and p50/p99 over the UNIX socket at concurrency 1, 8 and 64 (this
             package's asyncio load generator), and the same over TCP with wrk (keep-alive and
             ``Connection: close``), plus a bare Klein route signing ES256 as a yardstick;
  auth       authenticated tokens/s with the credential cache warm (bcrypt cost 10);
  storm      anonymous p50/p99 while wrong passwords (bcrypt cost 12) keep the bcrypt pool busy;
  attack     bench/login_attack.py: anonymous p50/p99 with 100,000 users while one address
             floods logins (73-byte and wrong passwords), with the daemon's default limits;
  reload     bench/reload_latency.py;
  users      start-up time and resident memory with 100,000 users, and bench/policy_eval.py;
  multicore  N daemons (N = CPUs) behind nginx on one 127.0.0.1 port, driven by wrk;
  profile    bench/profile_web.py: CPU per request on the reactor thread, and what-ifs.

The load generators share the machine's CPUs with the daemon: on a 2-core machine the daemon
gets at most one core while the Python load generator takes the other, which is why the wrk
figures (a C load generator using far less CPU) are reported beside the socket ones.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402 - bench/ is not a package
import loadgen  # noqa: E402

SECTIONS = ("anonymous", "auth", "storm", "attack", "reload", "users", "multicore", "profile")
TARGETS = {
    "anonymous": "≥ 5,000/s at c=8",
    "auth": "≥ 80 % of anonymous",
    "storm": "p99 < 50 ms",
    "attack": "p50 < 5 ms under (b), attacker gets 429",
    "users": "start < 3 s, RSS < 200 MB",
}


@dataclass
class Row:
    section: str
    what: str
    tool: str
    rate: float | None = None
    p50: float | None = None
    p99: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        def number(value: float | None, digits: int) -> str:
            return "" if value is None else f"{value:,.{digits}f}"

        return [
            self.section,
            self.what,
            self.tool,
            number(self.rate, 0),
            number(self.p50, 1),
            number(self.p99, 1),
            self.note,
        ]


class Table:
    """Rows printed as they come (a long run shows progress) and again at the end, aligned."""

    header = ("section", "measurement", "tool", "req/s", "p50 ms", "p99 ms", "note")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print("  " + " | ".join(cell for cell in row.cells() if cell), flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row.cells()) + " |" for row in self.rows]
        return "\n".join(lines)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --- wrk --------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    rate: float
    p50: float
    p99: float
    non_2xx: int
    errors: str


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, connections: int, duration: float, headers: dict[str, str]) -> WrkResult:
    """wrk with one thread (it leaves the daemon the most CPU), after a 1 s warm-up run."""
    options = [f"-H{name}: {value}" for name, value in headers.items()]
    for seconds, keep in ((1, False), (duration, True)):
        done = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                *options,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
        if not keep:
            continue
        out = done.stdout
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        errors = re.search(r"Socket errors:.*", out)
        return WrkResult(
            rate,
            p50,
            p99,
            int(non_2xx.group(1)) if non_2xx else 0,
            errors.group(0) if errors else "",
        )
    raise AssertionError("unreachable")


def wrk_note(result: WrkResult) -> str:
    parts = [f"{result.non_2xx} non-2xx"] if result.non_2xx else []
    return "; ".join([*parts, *([result.errors] if result.errors else [])])


# --- the sections -----------------------------------------------------------------------------


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.duration: float = args.duration
        self.table = Table()
        self.has_wrk = shutil.which("wrk") is not None
        self.anonymous_c8: dict[str, float] = {}
        self.outputs: dict[str, str] = {}
        """Other scripts' own reports, printed after the table."""

    @contextmanager
    def daemon(self, cost: int = 10, **kwargs: object) -> Iterator[harness.Daemon]:
        with harness.temporary_directory() as root:
            harness.write_bench_policy(root / "config", cost)
            extra = [*harness.generous_limits(), *kwargs.pop("extra", [])]  # type: ignore[misc]
            with harness.daemon(root, config=root / "config", extra=extra, **kwargs) as running:  # type: ignore[arg-type]
                yield running

    def socket_row(
        self, section: str, what: str, running: harness.Daemon, request: loadgen.Request, c: int
    ) -> loadgen.Result:
        assert running.socket is not None
        result = loadgen.run(
            loadgen.unix_connector(running.socket),
            [request],
            concurrency=c,
            duration=self.duration,
            warmup=1.0,
        )
        bad = {f"{s}": n for (_, s), n in result.statuses.items() if s != 200}
        note = f"statuses {bad}" if bad else ""
        if result.errors:
            note += f" errors {dict(result.errors)}"
        self.table.add(
            Row(
                section,
                what,
                "loadgen unix",
                result.rate(),
                result.percentile_ms(0.5),
                result.percentile_ms(0.99),
                note.strip(),
            )
        )
        return result

    def wrk_row(
        self,
        section: str,
        what: str,
        url: str,
        c: int,
        headers: dict[str, str] | None = None,
        tool: str = "wrk tcp",
    ) -> WrkResult:
        result = wrk(url, c, self.duration, headers or {})
        self.table.add(
            Row(section, what, tool, result.rate, result.p50, result.p99, wrk_note(result))
        )
        return result

    def anonymous(self) -> None:
        request = loadgen.anonymous_request()
        with self.daemon() as running:
            for c in (1, 8, 64):
                result = self.socket_row("anonymous", f"c={c}", running, request, c)
                if c == 8:
                    self.anonymous_c8["loadgen unix"] = result.rate()
        if not self.has_wrk:
            self.table.note("wrk not installed: TCP rows skipped")
            return
        port = harness.free_port()
        url = f"http://127.0.0.1:{port}{loadgen.ANONYMOUS_QUERY}"
        with self.daemon(port=port):
            for c in (1, 8, 64):
                measured = self.wrk_row("anonymous", f"c={c} keep-alive", url, c)
                if c == 8:
                    self.anonymous_c8["wrk tcp"] = measured.rate
            self.wrk_row("anonymous", "c=8 Connection: close", url, 8, {"Connection": "close"})
        self.bare_klein()

    def bare_klein(self) -> None:
        """The yardstick the target was set from: Klein + joserfc ES256, nothing else."""
        port = harness.free_port()
        with harness.temporary_directory() as root:
            key_path, _ = harness.write_key_pair(root)
            process = subprocess.Popen(
                [sys.executable, str(BENCH / "bare_klein.py"), str(port), str(key_path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + 20
                while not harness.port_open(port):
                    if process.poll() is not None or time.monotonic() > deadline:
                        self.table.note("bare Klein yardstick did not start")
                        return
                    time.sleep(0.05)
                self.wrk_row(
                    "yardstick",
                    "bare Klein ES256 route c=8",
                    f"http://127.0.0.1:{port}/v2/token",
                    8,
                )
            finally:
                harness.stop_process(process)

    def auth(self) -> None:
        cached = harness.has_option("--credential-cache-ttl")
        what = "cost 10, cache warm" if cached else "cost 10, no cache option: bcrypt each"
        if not cached:
            self.table.note("--credential-cache-ttl not in this daemon: every request runs bcrypt")
        request = loadgen.authenticated_request("auth", harness.USER, harness.PASSWORD)
        headers = loadgen.basic(harness.USER, harness.PASSWORD)
        with self.daemon(cost=10) as running:
            assert running.socket is not None
            loadgen.run(loadgen.unix_connector(running.socket), [request], concurrency=1, total=1)
            result = self.socket_row("auth", f"c=8 {what}", running, request, 8)
            self.ratio("loadgen unix", result.rate())
        if not self.has_wrk:
            return
        port = harness.free_port()
        url = f"http://127.0.0.1:{port}{loadgen.AUTHENTICATED_QUERY}&account={harness.USER}"
        with self.daemon(cost=10, port=port):
            wrk_result = self.wrk_row("auth", f"c=8 {what}", url, 8, headers)
            self.ratio("wrk tcp", wrk_result.rate)

    def ratio(self, tool: str, rate: float) -> None:
        anonymous = self.anonymous_c8.get(tool)
        if anonymous:
            row = self.table.rows[-1]
            row.note = f"{100 * rate / anonymous:.0f} % of anonymous c=8 ({tool})"

    def storm(self) -> None:
        """Anonymous probes while 16 clients send wrong passwords against a cost-12 hash."""
        anonymous = [loadgen.anonymous_request()]
        wrong = [loadgen.authenticated_request("wrong", harness.USER, "wrong-password")]
        with self.daemon(cost=12) as running:
            assert running.socket is not None
            connect = loadgen.unix_connector(running.socket)

            async def measure() -> list[tuple[int, loadgen.Result]]:
                span = 2 * (self.duration + 1) + 2
                storm = asyncio.ensure_future(
                    loadgen.drive(connect, wrong, concurrency=16, duration=span)
                )
                await asyncio.sleep(2)  # the bcrypt pool is full and its queue long
                probes = []
                for c in (1, 8):
                    probe = await loadgen.drive(
                        connect, anonymous, concurrency=c, duration=self.duration, warmup=1.0
                    )
                    probes.append((c, probe))
                storm_result = await storm
                self.storm_rate = storm_result.rate()
                self.storm_statuses = dict(storm_result.statuses)
                return probes

            for c, probe in asyncio.run(measure()):
                self.table.add(
                    Row(
                        "storm",
                        f"anonymous c={c} during storm",
                        "loadgen unix",
                        probe.rate(),
                        probe.percentile_ms(0.5),
                        probe.percentile_ms(0.99),
                        f"max {probe.sorted_latencies()[-1] * 1000:.0f} ms",
                    )
                )
        statuses = ", ".join(f"{s}: {n}" for (_, s), n in sorted(self.storm_statuses.items()))
        self.table.add(
            Row(
                "storm",
                "wrong passwords, cost 12, c=16",
                "loadgen unix",
                self.storm_rate,
                note=f"bcrypt checks/s; {statuses}",
            )
        )

    def attack(self) -> None:
        """Issue 12 point 1: its own daemons (defaults, 100,000 users); rows from its table."""
        done = subprocess.run(
            [sys.executable, str(BENCH / "login_attack.py"), "--duration", f"{self.duration:g}"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        for line in done.stdout.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) != 11 or not cells[0].startswith("("):
                continue
            label, p50, p99, rate, cpu, *attacker = cells
            statuses = ", ".join(
                f"{status}: {count}"
                for status, count in zip(("401", "429", "503"), attacker, strict=False)
                if count
            )
            note = f"daemon CPU {cpu}"
            if statuses:
                note += f"; attacker {statuses}; first 429 after {attacker[5]}"
            self.table.add(
                Row(
                    "attack",
                    f"anonymous c=1, 100,000 users, {label}",
                    "loadgen unix",
                    float(rate.replace(",", "")),
                    float(p50),
                    float(p99),
                    note,
                )
            )
        verdict = [line for line in done.stdout.splitlines() if line.startswith("acceptance")]
        status = "" if done.returncode == 0 else f" (exit {done.returncode})"
        tail = (done.stdout + done.stderr)[-500:]
        self.table.note(f"bench/login_attack.py{status}: {verdict[0] if verdict else tail}")

    def reload(self) -> None:
        done = subprocess.run(
            [sys.executable, str(BENCH / "reload_latency.py"), "--edits", "20"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        figures = dict(re.findall(r"^\s+(median|p99|max|min|p90)\s+([\d.]+)", done.stdout, re.M))
        if done.returncode != 0 or "median" not in figures:
            self.table.note(f"reload_latency.py failed: {(done.stdout + done.stderr)[-500:]}")
            return
        self.table.add(
            Row(
                "reload",
                "users.json replace → new token, 20 edits",
                "reload_latency.py",
                None,
                float(figures["median"]),
                float(figures["p99"]),
                f"max {figures['max']} ms, 100 ms debounce included",
            )
        )

    def users(self) -> None:
        shapes = (
            (0, False, "bench user only"),
            (100_000, False, 'seed rules {"*": ["pull"]}'),
            (100_000, True, "each with a repository of its own"),
        )
        for count, own_rules, shape in shapes:
            with harness.temporary_directory() as root:
                began = time.perf_counter()
                harness.write_bench_policy(
                    root / "config", 10, extra_users=count, own_rules=own_rules
                )
                written = time.perf_counter() - began
                size = (root / "config" / "users.json").stat().st_size
                with harness.daemon(
                    root, config=root / "config", extra=harness.generous_limits()
                ) as running:
                    assert running.socket is not None
                    sample = loadgen.run(
                        loadgen.unix_connector(running.socket),
                        [loadgen.anonymous_request()],
                        concurrency=8,
                        total=500,
                    )
                    memory = running.memory_kib()
                self.table.add(
                    Row(
                        "users",
                        f"{count + 1:,} users, {shape} ({size / 1e6:.1f} MB)",
                        "twistd start",
                        None,
                        None,
                        None,
                        f"start-up {running.startup_seconds:.2f} s (until /healthz 200), "
                        f"RSS {memory['VmRSS'] / 1024:.0f} MB, "
                        f"peak {memory['VmHWM'] / 1024:.0f} MB after 500 tokens "
                        f"({sample.rate():.0f}/s); file written in {written:.1f} s",
                    )
                )
        script = BENCH / "policy_eval.py"
        if not script.exists():
            self.table.note("bench/policy_eval.py does not exist yet: policy evaluation skipped")
            return
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False
        )
        self.outputs["bench/policy_eval.py"] = (done.stdout + done.stderr).rstrip()
        status = "" if done.returncode == 0 else f" (exit {done.returncode})"
        self.table.note(f"bench/policy_eval.py{status}: output below the table")

    def profile(self) -> None:
        done = subprocess.run(
            [sys.executable, str(BENCH / "profile_web.py")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        self.outputs["bench/profile_web.py"] = (done.stdout + done.stderr).rstrip()
        status = "" if done.returncode == 0 else f" (exit {done.returncode})"
        self.table.note(f"bench/profile_web.py{status}: output below the table")

    def multicore(self) -> None:
        """N daemons behind one nginx upstream, as docs/scaling.md sets it up."""
        if not (self.has_wrk and harness.nginx_available()):
            self.table.note("multicore skipped: needs wrk and nginx")
            return
        cores = os.cpu_count() or 1
        for count in sorted({1, cores}):
            with harness.temporary_directory() as root:
                harness.write_bench_policy(root / "config", 10)
                key_pair = harness.write_key_pair(root)
                factories = [
                    functools.partial(
                        harness.daemon,
                        root,
                        f"tokend{i}",
                        config=root / "config",
                        key_pair=key_pair,
                        extra=harness.generous_limits(),
                        listen_options=":backlog=1024",
                    )
                    for i in range(count)
                ]
                with ExitStack() as stack:
                    daemons = [stack.enter_context(factory()) for factory in factories]
                    port = harness.free_port()
                    sockets = [d.socket for d in daemons if d.socket is not None]
                    stack.enter_context(harness.nginx(root, port, sockets))
                    url = f"http://127.0.0.1:{port}{loadgen.ANONYMOUS_QUERY}"
                    for c in (8, 64):
                        before = [d.cpu_seconds() for d in daemons]
                        began = time.perf_counter()
                        self.wrk_row(
                            "multicore",
                            f"{count} daemon(s) behind nginx, c={c}",
                            url,
                            c,
                            tool="wrk→nginx",
                        )
                        # wrk's 1 s warm-up run is included: a rough share, not exact.
                        spent = [d.cpu_seconds() - b for d, b in zip(daemons, before, strict=True)]
                        wall = time.perf_counter() - began
                        shares = " + ".join(f"{100 * cpu / wall:.0f}" for cpu in spent)
                        row = self.table.rows[-1]
                        row.note = "; ".join(
                            part for part in (row.note, f"daemon CPU {shares} %") if part
                        )
                errors = root / "nginx" / "nginx-error.log"
                text = errors.read_text(errors="replace") if errors.exists() else ""
                upstream = text.count("upstream")
                if upstream:
                    first = next(line for line in text.splitlines() if "upstream" in line)
                    self.table.note(f"nginx logged {upstream} upstream errors, e.g. {first[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    suite = Suite(args)
    began = time.perf_counter()
    print(f"tokend benchmarks — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"load average before: {loadavg()}"
    )
    limits = " ".join(harness.generous_limits()) or "none (options absent)"
    print(f"daemon options added for the benches: {limits}")
    for section in chosen:
        print(f"\n[{section}] load average {loadavg()}", flush=True)
        try:
            getattr(suite, section)()
        except (harness.StartFailed, subprocess.SubprocessError, OSError) as e:
            suite.table.note(f"{section} failed: {e}")
    print(
        f"\nResults ({time.perf_counter() - began:.0f} s in all; load average now {loadavg()}; "
        f"targets: {'; '.join(f'{k} {v}' for k, v in TARGETS.items())}):\n"
    )
    print(suite.table.markdown())
    for note in suite.table.notes:
        print(f"\n- {note}")
    for script, output in suite.outputs.items():
        print(f"\n{script}:\n{output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
