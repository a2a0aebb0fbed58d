"""A docker engine and its containerd, started by the suite under its temp dir, as E2E.md says.

No networking privileges are needed: no bridge, no iptables, vfs storage. Each is stopped by its
PID. The suite starts the containerd itself and names it to dockerd: left to choose, dockerd uses
the machine's own containerd whenever /run/containerd/containerd.sock exists (a workstation
running docker), and the suite must touch nothing it did not start.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from e2e.stack import CLEAN_PATH, CommandResult, OciImage, Running, Stack, wait_until

DOCKER = "/usr/bin/docker"
"""Debian's docker.io client, matching its daemon (another docker may come first on PATH)."""
ENGINE_BINARIES = {"dockerd": "dockerd", "docker": DOCKER, "ctr": "ctr", "containerd": "containerd"}


def missing_engine_binaries() -> list[str]:
    return [name for name, binary in ENGINE_BINARIES.items() if shutil.which(binary) is None]


class Pushed(NamedTuple):
    reference: str
    """``REGISTRY/REPOSITORY:latest``, as docker names it."""
    digest: str
    """The manifest digest the registry stored."""


@dataclass
class Engine:
    root: Path
    running: Running
    stack: Stack
    containerd: Running

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

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

    def push_stored(self, client: str, image: OciImage, repository: str) -> Pushed:
        """Push ``image`` as ``repository:latest`` with ``client``'s login, and check that the
        registry stored the very manifest docker reported."""
        reference = f"{self.stack.registry}/{repository}:latest"
        self.load(image, reference)
        pushed = self.docker(client, "push", reference)
        assert pushed.ok, pushed.stderr
        stored = self.stack.stored_tag(repository)
        assert stored is not None, "the registry stores what was pushed"
        assert f"digest: {stored}" in pushed.stdout, pushed.stdout
        return Pushed(reference, stored)

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
        try:
            self.running.stop()
        finally:
            self.containerd.stop()


def _start_containerd(root: Path) -> Running:
    """A containerd of the suite's own: its socket, state and root under ``root``, and a config
    file of its own (not the machine's /etc/containerd/config.toml)."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
    socket = root / "containerd.sock"
    log = root / "containerd.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                "containerd", "--config", str(config), "--address", str(socket),
                "--root", str(root / "root"), "--state", str(root / "state"),
            ],
            env={"PATH": CLEAN_PATH, "HOME": str(root)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    running = Running("containerd", process, log)
    try:
        wait_until(lambda: socket.exists() or process.poll() is not None, "containerd's socket")
        assert process.poll() is None, running.tail()
    except BaseException:
        running.stop()
        raise
    return running


def start_engine(root: Path, stack: Stack) -> Engine:
    root.mkdir(parents=True, exist_ok=True)
    containerd = _start_containerd(root / "containerd")  # Engine.containerd_socket
    config = root / "daemon.json"
    config.write_text("{}\n")  # not the machine's /etc/docker/daemon.json
    log = root / "dockerd.log"
    try:
        with log.open("ab") as output:
            process = subprocess.Popen(
                [
                    "dockerd",
                    "--config-file",
                    str(config),
                    "--containerd",
                    str(root / "containerd" / "containerd.sock"),
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
    except BaseException:
        containerd.stop()
        raise
    engine = Engine(root, Running("dockerd", process, log), stack, containerd)
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
