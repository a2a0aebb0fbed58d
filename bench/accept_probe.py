"""Why ``--workers 2`` gains little or loses with a new connection per request (issue 28): one
hypothesis per row, switched on in the real daemon's processes at start-up.

    python3 bench/accept_probe.py [--duration 5] [--warmup 1] [--rounds 2] [--only a,b]

Each row is a real ``twistd registry-token`` (throttling off, TCP on 127.0.0.1, as
bench/peer.py runs it) measured with wrk in two modes: a new connection per request
(``Connection: close``, c=8) and keep-alive with as few connections as workers (c=2). A
``sitecustomize`` written to a temporary directory and put first on PYTHONPATH (the workers
inherit it) changes one thing after the module that holds it is imported, and counts, in each
process, the listening port's wake-ups (``doRead``) and the connections it accepted; each
process writes its counts on SIGUSR2, before and after the measured run. The changes are
measurements, not proposals of code:

  as is            today's workers: one accept() per wake-up, then the port left alone for
                   ACCEPT_PAUSE (1 ms) so the other worker takes the next connection;
  pause 0          the same with ACCEPT_PAUSE = 0 (still stopReading, callLater(0), startReading);
  one, no pause    one accept() per wake-up, the port never paused;
  twisted accept   Twisted's own port: up to numberAccepts (starting at 100, learnt) per wake-up;
  no issued log    the ``issued`` event not emitted, so no line goes through the first process;
  log beside keys  the log file in the directory of the key and certificate, as bench/harness
                   and every other bench put it (every row else has the keys in a directory of
                   their own): each line written wakes the key watcher's thread in every process;
  and ``1 process`` rows, as is and without the issued event, to compare with.

Prints rate, CPU per request (all processes, the first alone), wrk's CPU per request, each
worker's share of the connections and requests, and wake-ups per accepted connection.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen
import support
from peer import cpu_by_process, settle, wait_for_announcement, written_since

SITECUSTOMIZE = textwrap.dedent(
    '''
    """Written by bench/accept_probe.py: patches one module after import and counts accepts."""
    import importlib.abc, importlib.util, json, os, signal, sys

    VARIANT = os.environ.get("ACCEPT_PROBE", "")
    OUT = os.environ.get("ACCEPT_PROBE_OUT", "")
    COUNTS = {"wakeups": 0, "accepted": 0}

    def _tcp(module):
        port_read, server_init = module.Port.doRead, module.Server.__init__
        def doRead(self):
            COUNTS["wakeups"] += 1
            return port_read(self)
        def __init__(self, *args, **kwargs):
            COUNTS["accepted"] += 1
            server_init(self, *args, **kwargs)
        module.Port.doRead, module.Server.__init__ = doRead, __init__

    def _worker_process(module):
        fair = module._OneAccept
        if VARIANT == "pause 0":
            module.ACCEPT_PAUSE = 0
        elif VARIANT == "one, no pause":
            fair.doRead = lambda self: super(fair, self).doRead()
        elif VARIANT == "twisted accept":
            fair.doRead = lambda self: super(fair, self).doRead()
            fair.numberAccepts = property(
                lambda self: self.__dict__.get("_accepts", 100),
                lambda self, value: self.__dict__.__setitem__("_accepts", value),
            )

    def _realm(module):
        if VARIANT == "no issued log":
            from twisted.logger import Logger
            module.TokenAPI.log = Logger(observer=lambda event: None)

    PATCHES = {
        "twisted.internet.tcp": _tcp,
        "tokend.daemon.worker_process": _worker_process,
        "tokend.web.realm": _realm,
    }

    class _After(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in PATCHES:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            run = spec.loader.exec_module
            def exec_module(module):
                run(module)
                PATCHES[name](module)
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _After())

    def _write(*ignored):
        if OUT and COUNTS["wakeups"]:
            with open(os.path.join(OUT, f"{os.getpid()}.json"), "w") as f:
                json.dump(COUNTS, f)

    signal.signal(signal.SIGUSR2, _write)
    '''
)

ROWS = (
    ("1 process", "as is", 1),
    ("1 process", "no issued log", 1),
    ("1 process", "log beside keys", 1),
    ("--workers 2", "as is", 2),
    ("--workers 2", "pause 0", 2),
    ("--workers 2", "one, no pause", 2),
    ("--workers 2", "twisted accept", 2),
    ("--workers 2", "no issued log", 2),
    ("--workers 2", "log beside keys", 2),
)
MODES = (("close", 8), ("keep-alive", 2))


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    mode: str
    rate: float
    cpu_us: float
    first_us: float
    wrk_us: float
    requests_by_worker: tuple[int, ...]
    accepted_by_worker: tuple[int, ...]
    wakeups_per_accept: float
    switches: float
    """Context switches (voluntary + not) of all the daemon's processes per request."""


@contextmanager
def probed(variant: str, counts: Path) -> Iterator[None]:
    """The next daemons start with ``variant`` and write their counts to ``counts``."""
    saved = harness.start_twistd

    def start(*args: str, log: Path, output: Path | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
        env.update(
            PYTHONPATH=f"{counts.parent / 'probe'}{os.pathsep}{support.REPO}",
            ACCEPT_PROBE=variant,
            ACCEPT_PROBE_OUT=str(counts),
        )
        command = [support.TWISTD, "-n", "--pidfile=", "--logfile", str(log), "registry-token"]
        sink = subprocess.PIPE if output is None else output.open("wb")
        return subprocess.Popen(
            [*command, *args], cwd=support.REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
        )

    harness.start_twistd = start  # type: ignore[attr-defined]
    try:
        yield
    finally:
        harness.start_twistd = saved  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="whole seconds")
    parser.add_argument("--warmup", type=int, default=1, help="whole seconds")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per row; best kept")
    parser.add_argument("--only", default="", help="comma-separated variants to run")
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.only or r[1] in args.only.split(",")]
    load_before = os.getloadavg()
    results: list[Row] = []
    with harness.temporary_directory("tokend-accept-") as root:
        (root / "probe").mkdir()
        (root / "probe" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        config = root / "config"
        harness.write_bench_policy(config, cost=4)
        (root / "keys").mkdir()
        apart = support.write_key_pair(root / "keys")
        beside = support.write_key_pair(root)
        for index, (name, variant, workers) in enumerate(rows):
            for mode, connections in MODES:
                best: Row | None = None
                for attempt in range(args.rounds):
                    counts = root / f"counts-{index}-{mode}-{attempt}"
                    counts.mkdir()
                    key_pair = beside if variant == "log beside keys" else apart
                    row = run_one(root, config, key_pair, counts, name, variant, workers, mode,
                                  connections, args)  # fmt: skip
                    if best is None or row.rate > best.rate:
                        best = row
                assert best is not None
                results.append(best)
    load_after = os.getloadavg()
    print(
        f"anonymous tokens, wrk -t2 -d{args.duration}s (close: c=8, keep-alive: c=2), best of "
        f"{args.rounds}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(
        f"{'row':<28} {'mode':<10} {'req/s':>6} {'CPU µs/req':>10} {'1st proc':>8} "
        f"{'wrk µs':>6}  {'requests by worker':<18} {'accepted by worker':<18} wake-ups/accept"
        f"  switches/req"
    )
    for row in results:
        print(
            f"{row.name:<28} {row.mode:<10} {row.rate:>6.0f} {row.cpu_us:>10.0f} "
            f"{row.first_us:>8.0f} {row.wrk_us:>6.0f}  {split(row.requests_by_worker):<18} "
            f"{split(row.accepted_by_worker):<18} {row.wakeups_per_accept:>15.2f}  "
            f"{row.switches:>12.2f}"
        )
    return 0


def run_one(
    root: Path,
    config: Path,
    key_pair: tuple[Path, Path],
    counts: Path,
    name: str,
    variant: str,
    workers: int,
    mode: str,
    connections: int,
    args: argparse.Namespace,
) -> Row:
    """One fresh daemon, one warm-up and one measured wrk run; its counts once it stopped."""
    port = harness.free_port()
    with ExitStack() as stack:
        stack.enter_context(probed(variant, counts))
        running = stack.enter_context(
            harness.daemon(
                root, f"probe-{counts.name}", config=config, key_pair=key_pair, port=port,
                extra=[*harness.generous_limits(), "--workers", str(workers)],
            )
        )  # fmt: skip
        wait_for_announcement(running.log)
        url = f"http://127.0.0.1:{port}{loadgen.ANONYMOUS_QUERY}"
        close = ["-H", "Connection: close"] if mode == "close" else []
        command = ["wrk", "-t2", f"-c{connections}", *close]
        subprocess.run([*command, f"-d{args.warmup}s", url], capture_output=True, check=True)
        # The counters count from start-up: the warm-up's accepts are taken off below.
        settle(running.log)
        before_counts = _live_counts(running.pid, counts)
        mark = running.log.stat()
        before = cpu_by_process(running.pid)
        switched = context_switches(running.pid)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        text = subprocess.run(
            [*command, f"-d{args.duration}s", url], capture_output=True, text=True, check=True
        ).stdout
        after_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = cpu_by_process(running.pid)
        switched = context_switches(running.pid) - switched
        settle(running.log)
        written = written_since(running.log, mark)
        final = _live_counts(running.pid, counts)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    per = 1e6 / max(requests, 1)
    by_pid: dict[str, int] = {}
    for found in re.finditer(r" pid (\d+)\] issued", written):
        by_pid[found.group(1)] = by_pid.get(found.group(1), 0) + 1
    accepted = {
        pid: c["accepted"] - before_counts.get(pid, {}).get("accepted", 0)
        for pid, c in final.items()
    }
    wakeups = sum(
        c["wakeups"] - before_counts.get(pid, {}).get("wakeups", 0) for pid, c in final.items()
    )
    wrk_cpu = (after_usage.ru_utime + after_usage.ru_stime) - (usage.ru_utime + usage.ru_stime)
    return Row(
        name=f"{name}, {variant}",
        mode=mode,
        rate=rate,
        cpu_us=(sum(after.values()) - sum(before.get(p, 0.0) for p in after)) * per,
        first_us=(after.get(running.pid, 0.0) - before.get(running.pid, 0.0)) * per,
        wrk_us=wrk_cpu * per,
        requests_by_worker=tuple(sorted(by_pid.values(), reverse=True)),
        accepted_by_worker=tuple(sorted(accepted.values(), reverse=True)),
        wakeups_per_accept=wakeups / max(sum(accepted.values()), 1),
        switches=switched / max(requests, 1),
    )


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of ``pid`` and its descendants so far."""
    total = 0
    for each in cpu_by_process(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        total += sum(
            int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line
        )
    return total


def _live_counts(pid: int, counts: Path) -> dict[int, dict[str, int]]:
    """The counts so far of ``pid`` and its children, which write them on SIGUSR2."""
    pids = list(cpu_by_process(pid))
    for each in pids:
        os.kill(each, signal.SIGUSR2)
    time.sleep(0.5)
    found = {int(path.stem): json.loads(path.read_text()) for path in counts.glob("*.json")}
    for path in counts.glob("*.json"):
        path.unlink()
    return found


def split(counts: tuple[int, ...]) -> str:
    return "/".join(str(n) for n in counts) or "-"


if __name__ == "__main__":
    sys.exit(main())
