"""A docker engine (and its containerd) started by the suite under its temp dir, as E2E.md says.

No networking privileges are needed: no bridge, no iptables, vfs storage. Stopped by its PID.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from e2e.stack import CLEAN_PATH, CommandResult, OciImage, Running, Stack, wait_until

DOCKER = "/usr/bin/docker"
"""Debian's docker.io client, matching its daemon (another docker may come first on PATH)."""
ENGINE_BINARIES = {"dockerd": "dockerd", "docker": DOCKER, "ctr": "ctr"}


def missing_engine_binaries() -> list[str]:
    return [name for name, binary in ENGINE_BINARIES.items() if shutil.which(binary) is None]


@dataclass
class Engine:
    root: Path
    running: Running
    stack: Stack

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "exec" / "containerd" / "containerd.sock"

    def _run(self, command: list[str], env: dict[str, str], stdin: str | None) -> CommandResult:
        result = subprocess.run(
            command,
            env={"PATH": CLEAN_PATH, **env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return CommandResult(result.returncode, result.stdout, result.stderr)

    def docker(self, client: str, *args: str, stdin: str | None = None) -> CommandResult:
        """The docker CLI with its own config dir per client name (credentials live there)."""
        config = self.root / "clients" / client
        config.mkdir(parents=True, exist_ok=True)
        env = {"HOME": str(config), "DOCKER_CONFIG": str(config)}
        return self._run([DOCKER, "-H", f"unix://{self.socket}", *args], env, stdin)

    def login(self, client: str, user: str, password: str) -> CommandResult:
        return self.docker(
            client, "login", "-u", user, "--password-stdin", self.stack.registry, stdin=password
        )

    def load(self, image: OciImage, reference: str) -> None:
        """Put a test-built OCI image into the engine's store under ``reference``."""
        result = self.stack.skopeo(
            "copy", "--dest-daemon-host", f"unix://{self.socket}",
            f"oci:{image.path}:latest", f"docker-daemon:{reference}",
        )  # fmt: skip
        assert result.ok, result.stderr

    def hosts_dir(self) -> Path:
        """containerd speaks plain HTTP to loopback unless told the host is HTTPS."""
        directory = self.root / "ctr-hosts"
        host = directory / self.stack.registry
        if not host.exists():
            host.mkdir(parents=True)
            url = f"https://{self.stack.registry}"
            (host / "hosts.toml").write_text(
                f'server = "{url}"\n\n[host."{url}"]\n  skip_verify = true\n'
            )
        return directory

    def ctr_pull(self, reference: str, user: str | None = None) -> CommandResult:
        auth = ["--user", user] if user else []
        command = [
            "ctr", "-a", str(self.containerd_socket), "-n", "tokend-e2e",
            "images", "pull", "--hosts-dir", str(self.hosts_dir()), *auth, reference,
        ]  # fmt: skip
        return self._run(command, {"HOME": str(self.root)}, None)

    def stop(self) -> None:
        self.running.stop()


def start_engine(root: Path, stack: Stack) -> Engine:
    root.mkdir(parents=True, exist_ok=True)
    log = root / "dockerd.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                "dockerd",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "-H",
                f"unix://{root / 'docker.sock'}",
                "--pidfile",
                str(root / "dockerd.pid"),
            ],
            env={"PATH": CLEAN_PATH, "HOME": str(root)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    engine = Engine(root, Running("dockerd", process, log), stack)
    try:
        wait_until(
            lambda: (
                process.poll() is None
                and engine.docker("probe", "info", "--format", "{{.ServerVersion}}").ok
            ),
            "dockerd to answer",
        )
        assert process.poll() is None, engine.running.tail()
    except BaseException:
        engine.stop()
        raise
    return engine
