"""Starting and stopping the real daemon (and nginx) for the benchmarks.

The daemon is ``twistd -n --pidfile= registry-token`` from this checkout, started exactly as the
daemon tests start it (``tests/support.py``); every process is stopped by its own PID on the way
out of a ``with`` block, errors and Ctrl-C included. Everything listens on a UNIX socket in a
temporary directory or on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import (
    REPO,
    TWISTD,
    UnixHTTPConnection,
    free_port,
    hash_password,
    port_open,
    start_twistd,
    stop_process,
    write_key_pair,
)

__all__ = [
    "Daemon",
    "StartFailed",
    "daemon",
    "daemon_help",
    "free_port",
    "generous_limits",
    "has_option",
    "nginx",
    "nginx_available",
    "port_open",
    "stop_process",
    "temporary_directory",
    "write_bench_policy",
    "write_key_pair",
]

USER, PASSWORD = "bench", "bench"
GENEROUS_LIMITS = (
    ("--max-failures-per-account", "0"),
    ("--max-failures-per-address", "0"),
    ("--bcrypt-queue", "10000"),
)
"""Throttling off and a deep bcrypt queue, where the daemon has these options: the benches
measure bcrypt and the event loop, not the protections (which would answer 429/503 at once)."""


@functools.cache
def daemon_help() -> str:
    """``twistd registry-token --help``, to use options only where this checkout has them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [TWISTD, "registry-token", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


def has_option(option: str) -> bool:
    """Whether the daemon accepts ``option`` (e.g. ``--credential-cache-ttl``)."""
    return f"{option}=" in daemon_help() or f"{option} " in daemon_help()


def generous_limits() -> list[str]:
    present = [(option, value) for option, value in GENEROUS_LIMITS if has_option(option)]
    return [arg for pair in present for arg in pair]


def add_measurement_options(parser: argparse.ArgumentParser, rounds: int = 1) -> None:
    """--duration, --warmup and --rounds, as every interleaving bench takes them."""
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds; best kept")


def exit_status(bad: int) -> int:
    """1 (and why) when any answer was not 200 or failed at the transport, else 0: the timing
    never fails a bench."""
    if bad:
        print(f"{bad} request(s) answered other than 200 or failed: see the status column")
        return 1
    return 0


def write_bench_policy(
    config: Path,
    cost: int,
    extra_users: int = 0,
    users: dict[str, str] | None = None,
    own_rules: bool = False,
) -> None:
    """users.json with the bench user (bcrypt ``cost``) and ``extra_users`` sharing one hash.

    Hashing 100,000 passwords would take hours; one hash reused keeps the file realistic in
    size and shape (the daemon parses and validates every entry) and quick to write. The extra
    users have the seed file's rules (``{"*": ["pull"]}``), or with ``own_rules`` each one a
    repository of its own besides, so that no two users share a rule set.
    """
    config.mkdir(parents=True, exist_ok=True)
    shared = hash_password("not-used", 4)
    document: dict[str, object] = {
        f"user{i:06d}": {
            "pass_hash": shared,
            "repositories": (
                {f"team{i % 100}/app{i}": ["pull", "push"], "*": ["pull"]}
                if own_rules
                else {"*": ["pull"]}
            ),
        }
        for i in range(extra_users)
    }
    for name, password in {USER: PASSWORD, **(users or {})}.items():
        document[name] = {
            "pass_hash": hash_password(password, cost),
            "repositories": {"*": ["pull", "push"]},
        }
    (config / "users.json").write_text(json.dumps(document, indent=1))
    anonymous = {"blacklist": False, "repositories": ["public/hello"]}
    (config / "repositories.json").write_text(json.dumps(anonymous))


@dataclass
class Daemon:
    """A running daemon: its process, where it listens and how long it took to answer."""

    process: subprocess.Popen[bytes]
    socket: Path | None
    port: int | None
    log: Path
    startup_seconds: float

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon has used so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (resident now) and VmHWM (peak resident) from /proc, in KiB."""
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return fields


class StartFailed(RuntimeError):
    pass


def _healthy(sock: Path | None, port: int | None) -> bool:
    import http.client

    connection: http.client.HTTPConnection = (
        UnixHTTPConnection(sock, timeout=5)
        if sock is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    )
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@contextmanager
def temporary_directory(prefix: str = "tokend-bench-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


@contextmanager
def daemon(
    root: Path,
    name: str = "tokend",
    *,
    config: Path,
    key_pair: tuple[Path, Path] | None = None,
    port: int | None = None,
    extra: Sequence[str] = (),
    listen_options: str = "",
    timeout: float = 60,
) -> Iterator[Daemon]:
    """Start the daemon on ``root/name.sock`` (or 127.0.0.1:``port``); stop it on exit.

    ``listen_options`` is appended to the endpoint string, e.g. ``:backlog=1024``.
    """
    key_path, cert_path = key_pair or write_key_pair(root)
    sock = None if port is not None else root / f"{name}.sock"
    listen = f"tcp:{port}:interface=127.0.0.1" if port is not None else f"unix:{sock}"
    listen += listen_options
    # Not beside the key: the daemon watches the key's directory, and a log line written
    # there wakes that watch on every request (half of one process's rate, issue #28).
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    log, output = logs / f"{name}.log", logs / f"{name}.out"
    started = time.perf_counter()
    process = start_twistd(
        "--listen",
        listen,
        "--config-dir",
        str(config),
        "--key",
        str(key_path),
        "--cert",
        str(cert_path),
        *extra,
        log=log,
        output=output,
    )
    try:
        deadline = started + timeout
        while not ((sock is None or sock.exists()) and _healthy(sock, port)):
            if process.poll() is not None or time.perf_counter() > deadline:
                tail = output.read_text(errors="replace")[-2000:]
                if log.exists():
                    tail += log.read_text(errors="replace")[-2000:]
                raise StartFailed(f"the daemon did not start:\n{tail}")
            time.sleep(0.01)
        yield Daemon(process, sock, port, log, time.perf_counter() - started)
    finally:
        stop_process(process)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_temp;
    proxy_temp_path {root}/proxy_temp;
    fastcgi_temp_path {root}/fastcgi_temp;
    uwsgi_temp_path {root}/uwsgi_temp;
    scgi_temp_path {root}/scgi_temp;
    upstream tokend {{
        least_conn;
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /v2/token {{
            proxy_pass http://tokend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def nginx_available() -> bool:
    return shutil.which("nginx") is not None


@contextmanager
def nginx(root: Path, port: int, sockets: Sequence[Path], timeout: float = 20) -> Iterator[int]:
    """nginx in the foreground from its own prefix, balancing over ``sockets``; yields its PID."""
    prefix = root / "nginx"
    prefix.mkdir()
    servers = "\n".join(f"        server unix:{path};" for path in sockets)
    conf = prefix / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(root=prefix, port=port, servers=servers, user=user))
    binary = shutil.which("nginx") or "nginx"
    output = (prefix / "nginx.out").open("wb")
    process = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(prefix)], stdout=output, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + timeout
        while not ((prefix / "nginx.pid").exists() and port_open(port)):
            if process.poll() is not None or time.monotonic() > deadline:
                log = prefix / "nginx-error.log"
                text = log.read_text(errors="replace") if log.exists() else ""
                raise StartFailed(f"nginx did not start:\n{text[-2000:]}")
            time.sleep(0.02)
        yield process.pid
    finally:
        stop_process(process)
        output.close()
