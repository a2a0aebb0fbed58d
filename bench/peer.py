"""Anonymous tokens/s from SushiTee's Flask + uWSGI token server and from tokend, side by side on
the same cores in one run (issue 28).

    python3 bench/peer.py PEER_CHECKOUT [--duration 5] [--warmup 1] [--rounds 3]
                          [--connections 8] [--threads 2] [--peer-venv DIR]

PEER_CHECKOUT is a checkout of github.com/SushiTee/docker-registry-token-auth-service; nothing
of it is copied here. Its dependencies go into a separate venv (``--peer-venv``, by default
``$XDG_CACHE_HOME/tokend-bench/peer-venv``) as its own ``scripts/install-deps.sh`` puts them:
``pip install -r requirements.txt`` then ``pip install uwsgi``. It runs as its
``uwsgi.ini.example`` says (master, 2 processes x 2 threads), with ``http11-socket`` on
127.0.0.1 in place of the uwsgi-protocol socket (wrk speaks HTTP only, and keep-alive needs
HTTP/1.1) and ``die-on-term`` so that SIGTERM stops it (uWSGI reloads on it otherwise). Its
``config/`` is written to a temporary directory with the same users.json, repositories.json and
P-256 key as tokend's, so both answer the same anonymous pull of ``public/hello``. The key and
certificate live in a directory of their own, not beside tokend's log: tokend watches the key's
directory, and a log written there wakes the watcher's thread for every line (see
bench/accept_probe.py's "log beside keys").

Three servers run at once on 127.0.0.1 (wrk cannot reach a UNIX socket): the peer, one tokend
process and ``tokend --workers 2`` (throttling off, as in bench/run; tokend's default token
header with ``x5c``). Measurements are interleaved: in each round, keep-alive (``-c``
connections) then a new connection per request (``-H 'Connection: close'``, what nginx does
without upstream ``keepalive``), each server in turn after a warm-up; the best of the rounds is
kept. Besides the rate it reads, for each measurement, the CPU time of every process of the
server (from /proc) and of wrk (which shares the cores), and each worker's share of the requests
from the log lines (uWSGI's ``[pid: N|``, tokend's ``pid N``). Prints a table and the ratios
issue 28 names; the timing never fails it, only a server that does not start or answer 200.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen
from support import free_port, write_key_pair

MODES = ("keep-alive", "close")


@dataclass(frozen=True, slots=True)
class Server:
    """One server under test: where it listens, its first PID and its log."""

    name: str
    port: int
    pid: int
    log: Path
    worker_mark: re.Pattern[str]

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{loadgen.ANONYMOUS_QUERY}"


@dataclass(frozen=True, slots=True)
class Measurement:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: str
    server_cpu: float
    """Seconds of CPU of all the server's processes during the run."""
    first_cpu: float
    """Seconds of CPU of the server's first process (uWSGI's master, tokend's supervisor)."""
    wrk_cpu: float
    requests: int
    shares: tuple[int, ...]
    """Requests per worker, most first, from the log lines written during the run."""
    log_lag: float
    """Seconds after wrk ended until the log stopped growing (lines still on their way)."""


@dataclass
class Results:
    by_key: dict[tuple[str, str], list[Measurement]] = field(default_factory=dict)

    def add(self, server: str, mode: str, measurement: Measurement) -> None:
        self.by_key.setdefault((server, mode), []).append(measurement)

    def best(self, server: str, mode: str) -> Measurement:
        return max(self.by_key[server, mode], key=lambda m: m.rate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", type=Path, help="checkout of docker-registry-token-auth-service")
    parser.add_argument("--duration", type=int, default=5, help="whole seconds (wrk's unit)")
    parser.add_argument("--warmup", type=int, default=1, help="whole seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    parser.add_argument("--peer-venv", type=Path, default=cache / "tokend-bench" / "peer-venv")
    args = parser.parse_args()
    checkout = args.peer.resolve()
    if not (checkout / "token_auth_server.py").is_file():
        parser.error(f"{checkout} has no token_auth_server.py: not the peer's checkout")
    if shutil.which("wrk") is None:
        print("needs wrk (apt-get install wrk)", file=sys.stderr)
        return 1
    uwsgi = peer_venv(args.peer_venv, checkout)
    load_before = os.getloadavg()
    results = Results()
    with harness.temporary_directory("tokend-peer-") as root, ExitStack() as stack:
        config = root / "config"
        harness.write_bench_policy(config, cost=4)
        (root / "keys").mkdir()
        key_pair = write_key_pair(root / "keys")
        limits = harness.generous_limits()
        servers = [stack.enter_context(peer(root, checkout, uwsgi, key_pair[0], config))]
        for name, count in (("tokend 1 process", 1), ("tokend --workers 2", 2)):
            port = free_port()
            running = stack.enter_context(
                harness.daemon(
                    root, f"w{count}", config=config, key_pair=key_pair, port=port,
                    extra=[*limits, "--workers", str(count)],
                )
            )  # fmt: skip
            wait_for_announcement(running.log)
            servers.append(
                Server(name, port, running.pid, running.log, re.compile(r" pid (\d+)\]"))
            )
        sizes = {server.name: answer_size(server) for server in servers}
        for _ in range(args.rounds):
            for mode in MODES:
                for server in servers:
                    wrk(server, mode, args.warmup, args)
                    results.add(server.name, mode, measure(server, mode, args))
    load_after = os.getloadavg()
    report(results, [s.name for s in servers], sizes, args, load_before, load_after)
    return 0


def peer_venv(venv: Path, checkout: Path) -> Path:
    """The venv with the peer's requirements and uWSGI, made the first time; its uwsgi."""
    uwsgi = venv / "bin" / "uwsgi"
    if uwsgi.exists():
        return uwsgi
    print(f"installing the peer's requirements and uWSGI into {venv} (a minute)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-r", str(checkout / "requirements.txt")], check=True)
    subprocess.run([*pip, "uwsgi"], check=True)
    return uwsgi


@contextmanager
def peer(root: Path, checkout: Path, uwsgi: Path, key: Path, policy: Path) -> Iterator[Server]:
    """The peer under uWSGI as its uwsgi.ini.example runs it, over HTTP on 127.0.0.1."""
    home = root / "peer"
    (home / "config").mkdir(parents=True)
    for name in ("users.json", "repositories.json"):
        shutil.copy(policy / name, home / "config" / name)
    (home / "config" / "config.py").write_text(
        f"AUDIENCE = 'registry'\nISSUER = 'tokend-bench'\nKEY_PATH = {str(key)!r}\nPORT = 0\n"
    )
    port = free_port()
    log = home / "uwsgi.log"
    command = [
        str(uwsgi), "--master", "--processes", "2", "--threads", "2", "--die-on-term",
        "--http11-socket", f"127.0.0.1:{port}", "--module", "token_auth_server:app",
        "--chdir", str(home), "--pythonpath", str(home), "--pythonpath", str(checkout),
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    server = Server("peer (uWSGI 2x2)", port, process.pid, log, re.compile(r"^\[pid: (\d+)\|"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer_size(server)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise harness.StartFailed(f"the peer did not start:\n{tail}") from None
                time.sleep(0.1)
        yield server
    finally:
        harness.stop_process(process)


def wait_for_announcement(log: Path) -> None:
    """/healthz answers as soon as one worker serves; the announcement follows all of them."""
    deadline = time.monotonic() + 60
    while "tokend listening on" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise harness.StartFailed("the workers did not all start in 60 s")
        time.sleep(0.05)


def answer_size(server: Server) -> int:
    """Bytes of one anonymous answer's body; raises unless it is a 200."""
    with urllib.request.urlopen(server.url(), timeout=5) as answer:
        return len(answer.read())


def measure(server: Server, mode: str, args: argparse.Namespace) -> Measurement:
    settle(server.log)
    mark = server.log.stat()
    before = cpu_by_process(server.pid)
    wrk_before = children_cpu()
    text = wrk(server, mode, args.duration, args)
    wrk_cpu = children_cpu() - wrk_before
    after = cpu_by_process(server.pid)
    log_lag = settle(server.log)
    written = written_since(server.log, mark)
    shares = Counter(
        found.group(1)
        for line in written.splitlines()
        if (found := server.worker_mark.search(line)) and ("issued" in line or "GET" in line)
    )
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    return Measurement(
        rate=rate,
        p50_ms=percentile(text, "50"),
        p99_ms=percentile(text, "99"),
        errors=problems(text),
        server_cpu=sum(after.values()) - sum(before.get(pid, 0.0) for pid in after),
        first_cpu=after.get(server.pid, 0.0) - before.get(server.pid, 0.0),
        wrk_cpu=wrk_cpu,
        requests=requests,
        shares=tuple(sorted(shares.values(), reverse=True)),
        log_lag=log_lag,
    )


def written_since(log: Path, mark: os.stat_result) -> str:
    """What was appended to ``log`` since ``mark`` (its stat then), across rotations: twistd
    renames a full log (1 MB) to ``.1``, ``.1`` to ``.2`` and so on."""
    files = [log]
    for number in range(1, 100):
        rotated = log.with_name(f"{log.name}.{number}")
        if not rotated.exists():
            break
        files.append(rotated)
    files.reverse()
    start = next((i for i, f in enumerate(files) if f.stat().st_ino == mark.st_ino), None)
    if start is None:
        raise RuntimeError(f"{log} rotated out of reach during the run")
    parts = []
    for i, path in enumerate(files[start:]):
        with path.open("rb") as f:
            f.seek(mark.st_size if i == 0 else 0)
            parts.append(f.read())
    return b"".join(parts).decode("utf-8", "replace")


def settle(log: Path, quiet: float = 0.3, longest: float = 30.0) -> float:
    """Wait until ``log`` has not grown for ``quiet`` seconds; how long its last line took.

    tokend's workers send their lines to the first process, which writes them: under load
    they reach the file late, and a run's share is only known once they all have."""
    began = time.monotonic()
    size, changed = log.stat().st_size, began
    while time.monotonic() - changed < quiet and time.monotonic() - began < longest:
        time.sleep(0.05)
        if (now := log.stat().st_size) != size:
            size, changed = now, time.monotonic()
    return changed - began


def wrk(server: Server, mode: str, seconds: int, args: argparse.Namespace) -> str:
    close = ["-H", "Connection: close"] if mode == "close" else []
    done = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency",
         *close, server.url()],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )  # fmt: skip
    return done.stdout


def percentile(text: str, name: str) -> float:
    found = re.search(rf"^\s+{name}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if found is None:
        return float("nan")
    return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]


def problems(text: str) -> str:
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    found = [
        f"{errors.group(1)} non-2xx" if errors else "",
        socket_errors.group(1) if socket_errors else "",
    ]
    return ", ".join(part for part in found if part) or "-"


def cpu_by_process(pid: int) -> dict[int, float]:
    """User + system CPU seconds of ``pid`` and every descendant still running, by PID."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: dict[int, float] = {}
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        seconds[current] = (int(fields[11]) + int(fields[12])) / ticks
        pending += [int(child) for child in children]
    return seconds


def children_cpu() -> float:
    """CPU seconds of the children this process has waited for (wrk, here)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def report(
    results: Results,
    names: list[str],
    sizes: dict[str, int],
    args: argparse.Namespace,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    print(
        f"anonymous tokens, wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
        f"best of {args.rounds} interleaved rounds, {os.cpu_count()} CPUs; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(
        f"{'server':<20} {'mode':<10} {'req/s':>7} {'rounds':>19} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'CPU µs/req':>10} {'1st proc':>8} {'wrk µs/req':>10} {'log lag':>7}  per-worker share"
        f"  errors"
    )
    for mode in MODES:
        for name in names:
            best = results.best(name, mode)
            rounds = "/".join(f"{m.rate:.0f}" for m in results.by_key[name, mode])
            per = 1e6 / max(best.requests, 1)
            print(
                f"{name:<20} {mode:<10} {best.rate:>7.0f} {rounds:>19} {best.p50_ms:>7.2f} "
                f"{best.p99_ms:>7.2f} {best.server_cpu * per:>10.0f} "
                f"{best.first_cpu * per:>8.0f} {best.wrk_cpu * per:>10.0f} {best.log_lag:>7.2f}  "
                f"{share(best.shares):<17} {best.errors}"
            )
    print("answer body bytes: " + ", ".join(f"{name} {size}" for name, size in sizes.items()))
    peer_name, one, two = names
    for mode in MODES:
        rate = {name: results.best(name, mode).rate for name in names}
        print(
            f"{mode}: 1 process / peer {rate[one] / rate[peer_name]:.2f} (goal >= 1.5), "
            f"workers 2 / peer {rate[two] / rate[peer_name]:.2f} (goal >= 2), "
            f"workers 2 / 1 process {rate[two] / rate[one]:.2f} (goal >= 1.7)"
        )


def share(counts: tuple[int, ...]) -> str:
    """``a/b (x %)``: requests per worker and how far the least is below the most."""
    if len(counts) < 2:
        return "-"
    spread = 100 * (counts[0] - counts[-1]) / counts[0]
    return "/".join(str(n) for n in counts) + f" ({spread:.0f} %)"


if __name__ == "__main__":
    sys.exit(main())
