"""The daemon as tests start it: ``twistd registry-token`` options parsed in process
(``parsed``, ``announce``), and the real twistd with ``--workers`` on a UNIX socket
(``start``, ``Daemon``), with a policy of three accounts and the login limits it tests.
"""

from __future__ import annotations

import subprocess
from base64 import b64encode
from pathlib import Path
from typing import Any

from support import (
    get_json_over_unix,
    parsed_options,
    pids_issuing,
    start_twistd,
    wait_for,
    write_key_pair,
    write_policy,
)
from twisted.logger import capturedLogs

from tokend.daemon.services import Announcer
from tokend.policy.holder import PolicyHolder
from tokend.signing.holder import FixedKeys
from tokend.tap import Options


def parsed(tmp_path: Path, *args: str, environ: dict[str, str] | None = None) -> Options:
    options: Options = parsed_options(tmp_path, *args, environ=environ)
    return options


def announce(options: Options, holder: PolicyHolder | None = None) -> list[dict[str, Any]]:
    settings = options.settings
    holder = holder or PolicyHolder(settings.policy.loaded.policy, 0.0)
    with capturedLogs() as events:
        Announcer(settings, holder, FixedKeys(settings.signing.keys)).startService()
    return list(events)


ACCOUNT_LIMIT = 10


class Daemon:
    def __init__(
        self,
        process: subprocess.Popen[bytes],
        sock: Path,
        log: Path,
        metrics: Path | None = None,
    ) -> None:
        self.process = process
        self.sock = sock
        self.log = log
        self.metrics = metrics
        """The --metrics socket: /metrics, and /healthz with every worker's details."""

    def request(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One request on a connection of its own (so the kernel may pick either worker)."""
        status, body = get_json_over_unix(self.sock, path, headers)
        return status, body

    def health(self) -> dict[str, Any]:
        """The metrics listener's /healthz: the first process's pid, each worker's details."""
        assert self.metrics is not None, "started with a --metrics of the test's own"
        status, body = get_json_over_unix(self.metrics, "/healthz")
        assert status == 200, body
        return dict(body)

    def login(self, user: str, password: str, client: str = "192.0.2.1") -> int:
        auth = b64encode(f"{user}:{password}".encode()).decode()
        status, _ = self.request(
            f"/v2/token?service=svc&account={user}",
            {"Authorization": f"Basic {auth}", "X-Real-IP": client},
        )
        return status

    def pids_seen(self, connections: int = 60) -> set[int]:
        """The workers that answered anonymous token requests over several connections opened
        at once."""
        return pids_issuing(self.log_text, self.sock, "/v2/token?service=svc", connections)

    def generations(self) -> dict[int, int]:
        """pid → the policy generation it serves, for every worker that answers."""
        return {w["pid"]: w["policy_generation"] for w in self.health()["workers"]}

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def worker_pids(parent: int) -> set[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return {int(pid) for pid in children.read_text().split()} if children.exists() else set()


def start(tmp_path: Path, *extra: str, workers: str = "2") -> Daemon:
    config = tmp_path / "config"
    if not config.exists():
        write_policy(
            config,
            {
                "alice": ("alice-pw", {"*": ["pull"]}),
                "bob": ("bob-pw", {"*": ["pull"]}),
                "carol": ("carol-pw", {"*": ["pull"]}),
            },
            {"repositories": ["pub/x"]},
        )
    key, cert = write_key_pair(tmp_path)
    sock = tmp_path / "run" / "tokend.sock"
    metrics = None if "--metrics" in extra else tmp_path / "run" / "metrics.sock"
    sock.parent.mkdir(exist_ok=True)
    log = tmp_path / "tokend.log"
    process = start_twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key),
        "--cert", str(cert), "--issuer", "iss", "--service", "svc", "--workers", workers,
        "--max-failures-per-account", str(ACCOUNT_LIMIT), "--max-failures-per-address", "1000",
        "--bcrypt-threads", "1", *(("--metrics", f"unix:{metrics}") if metrics else ()),
        *extra,
        log=log,
    )  # fmt: skip
    daemon = Daemon(process, sock, log, metrics)
    wait_for("socket", lambda: sock.exists() or process.poll() is not None)
    assert process.poll() is None, daemon.log_text()
    wait_for("started", lambda: "tokend listening on" in daemon.log_text())
    return daemon
