"""The README's quickstart, run as written.

Its curl commands ask the daemon the set-up command starts (in a copy of the checkout that uses
this checkout's .venv), ``tokend token`` reads an answer, and the registry + nginx part runs with
the real docker-registry, nginx and skopeo. There every /etc, /run and /var/lib path moves under
a temporary root and ``sudo`` is dropped; systemd does not run here, so what it would do for
Debian's docker-registry unit with the README's drop-in (RuntimeDirectory, the ``+``
ExecStartPre commands as root, User, UMask) is done by hand, and ``systemd-analyze verify``
checks the unit with the drop-in.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.stack import CLEAN_PATH, build_oci_image, wait_until
from support import (
    REPO,
    doc_section,
    free_port,
    load_certificate,
    port_open,
    stop_process,
    verify_jwt,
    with_default_sigint,
)
from test_deployment import heredocs, require, shell_blocks

DEBIAN_UNIT = Path("/lib/systemd/system/docker-registry.service")
DROP_IN = "/etc/systemd/system/docker-registry.service.d/socket.conf"
MOVED = re.compile(r"(?<![\w.])(/etc/|/run/|/var/lib/docker-registry)")
SHELL = """set -e
sudo() { "$@"; }
systemctl() { echo "systemctl $*" >> "$RECORDED"; }
nginx() { echo "nginx $*" >> "$RECORDED"; }
"""
"""Run before each block: systemd's and the machine's nginx are not ours to touch."""


def part(title: str) -> str:
    quickstart = doc_section("Quickstart")
    found = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^### |\Z)", quickstart, re.M | re.S)
    assert found, f"the quickstart has no part {title!r}"
    return found.group(1)


def daemon_command() -> str:
    """The set-up command's last part: what starts the daemon once it is installed."""
    setup = shell_blocks(doc_section("Set up"))[0]
    command = setup.split("&&")[-1].strip()
    assert command.startswith(".venv/bin/twistd "), command
    return command


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The checkout as the set-up command leaves it: the shipped policy and a .venv (this one's),
    so the key --dev-cert makes lands here, not in the repository."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "config", root / "config")
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return root


def start_daemon(checkout: Path, command: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    with log.open("ab") as output:
        return subprocess.Popen(
            with_default_sigint(shlex.split(command)),  # Ctrl-C, as from a terminal
            cwd=checkout,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def wait_for_socket(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    wait_until(lambda: path.exists() or process.poll() is not None, f"{path}")
    assert process.poll() is None, log.read_text()[-3000:]


def shell(
    line: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


@pytest.mark.e2e
def test_quickstart_first_tokens_and_reading_one(checkout: Path, tmp_path: Path) -> None:
    require(shutil.which("curl"), "curl")
    log = tmp_path / "tokend.log"
    daemon = start_daemon(checkout, daemon_command(), log)
    try:
        wait_for_socket(checkout / "run" / "tokend.sock", daemon, log)
        anonymous, bar = shell_blocks(part("A first token"))[0].strip().splitlines()
        certificate = load_certificate(checkout / "certs" / "RootCA.crt")

        def access(line: str, sub: str) -> list[Any]:
            result = shell(line, checkout)
            assert result.returncode == 0, result.stderr
            answer = json.loads(result.stdout)
            assert answer["access_token"] == answer["token"] and answer["expires_in"] == 300
            assert "issued_at" in answer
            _, claims = verify_jwt(answer["token"], certificate)
            assert (claims["iss"], claims["aud"], claims["sub"]) == ("tokend", "registry", sub)
            return list(claims["access"])

        def repository(name: str, *actions: str) -> list[Any]:
            return [{"type": "repository", "name": name, "actions": list(actions)}]

        assert access(anonymous, "") == repository("public/hello", "pull")
        assert access(bar, "bar") == repository("hello", "pull", "push")
        # What the text says of other askers.
        assert access(bar.replace("bar:bar", "foo:foo"), "foo") == repository("hello", "pull")
        assert access(anonymous.replace("public/hello", "hello"), "") == []
        status = shell(
            bar.replace("bar:bar", "bar:wrong") + " -o /dev/null -w '%{http_code}'", checkout
        )
        assert status.stdout == "401"

        (reading,) = shell_blocks(part("Reading a token"))
        described = shell(reading.strip(), checkout)
        assert described.returncode == 0, described.stderr
        assert "may pull and push repository hello" in described.stdout, described.stdout

        daemon.send_signal(signal.SIGINT)  # Ctrl-C, as the registry part says
        # twistd shuts down, then ends by the same signal, as an interrupted program should.
        assert daemon.wait(timeout=15) in (0, -signal.SIGINT), log.read_text()[-3000:]
        assert "Server Shut Down." in log.read_text()
    finally:
        stop_process(daemon)


def unit_settings(*files: Path) -> dict[str, list[str]]:
    """A systemd unit and its drop-ins as key -> values, later files adding to earlier ones."""
    settings: dict[str, list[str]] = {}
    for file in files:
        for line in file.read_text().splitlines():
            if "=" in line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                settings.setdefault(key.strip(), []).append(value.strip())
    return settings


class Machine:
    """The paths the quickstart writes, under a temporary root that the registry's and nginx's
    users may traverse (pytest's own temporary directories are root's alone)."""

    def __init__(self, root: Path, port: int, checkout: Path) -> None:
        self.root = root
        self.port = port
        self.checkout = checkout
        self.recorded = root / "recorded"
        self.processes: list[subprocess.Popen[bytes]] = []

    def moved(self, text: str) -> str:
        text = MOVED.sub(lambda found: f"{self.root}{found.group(1)}", text)
        return text.replace("127.0.0.1:5000", f"127.0.0.1:{self.port}")

    def run(self, block: str) -> None:
        env = {
            "PATH": CLEAN_PATH,
            "USER": pwd.getpwuid(os.geteuid()).pw_name,
            "RECORDED": str(self.recorded),
        }
        result = shell(SHELL + self.moved(block), self.checkout, env)
        assert result.returncode == 0, result.stderr

    def calls(self) -> list[str]:
        lines = self.recorded.read_text().splitlines() if self.recorded.exists() else []
        self.recorded.unlink(missing_ok=True)
        return lines

    def start(self, command: list[str], log: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.root / log).open("ab") as output:
            process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start_registry(self) -> subprocess.Popen[bytes]:
        """What systemd does for `systemctl restart docker-registry` with the drop-in."""
        service = unit_settings(DEBIAN_UNIT, self.root / DROP_IN.lstrip("/"))
        user = pwd.getpwnam(service["User"][-1])
        for name in service.get("RuntimeDirectory", []):
            directory = self.root / "run" / name
            directory.mkdir()
            directory.chmod(0o755)  # RuntimeDirectoryMode's default
            os.chown(directory, user.pw_uid, user.pw_gid)
        for command in service.get("ExecStartPre", []):
            assert command.startswith("+"), f"{command}: the registry's user may not do that"
            subprocess.run(shlex.split(command[1:]), check=True)  # already moved
        umask = service.get("UMask", ["0022"])[-1]
        as_user = f"setpriv --reuid={user.pw_uid} --regid={user.pw_gid} --init-groups"
        command = f"umask {umask} && exec {as_user} {self.moved(service['ExecStart'][-1])}"
        return self.start(["sh", "-c", command], "registry.log", {"PATH": CLEAN_PATH})

    def start_nginx(self) -> subprocess.Popen[bytes]:
        """nginx as Debian runs it: its worker as www-data, the conf.d files included."""
        prefix = self.root / "nginx"
        prefix.mkdir()
        temp = " ".join(
            f"{kind}_temp_path {prefix / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        config = self.root / "etc" / "nginx" / "nginx.conf"
        config.write_text(
            f"user www-data;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} info;\nevents {{ worker_connections 64; }}\n"
            f"http {{ access_log {prefix / 'access.log'}; {temp}\n"
            f"    include {self.root / 'etc' / 'nginx' / 'conf.d'}/*.conf; }}\n"
        )
        command = ["nginx", "-c", str(config), "-p", str(prefix)]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
        return self.start([*command, "-g", "daemon off;"], "nginx.log", {"PATH": CLEAN_PATH})

    def skopeo(self, line: str) -> subprocess.CompletedProcess[str]:
        home = Path(tempfile.mkdtemp(dir=self.root))
        env = {
            "PATH": CLEAN_PATH,
            "HOME": str(home),
            "DOCKER_CONFIG": str(home / ".docker"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_RUNTIME_DIR": str(home),
            "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        }
        return subprocess.run(
            shlex.split(self.moved(line)), env=env, capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def machine(checkout: Path) -> Iterator[Machine]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the registry runs as docker-registry, nginx's worker as www-data")
    for binary in ("docker-registry", "nginx", "skopeo", "systemd-tmpfiles", "setpriv", "openssl"):
        require(shutil.which(binary, path=CLEAN_PATH), binary)
    require(str(DEBIAN_UNIT) if DEBIAN_UNIT.exists() else None, "Debian's docker-registry")
    root = Path(tempfile.mkdtemp(prefix="tokend-quickstart-", dir="/tmp"))
    root.chmod(0o755)
    # What the Debian packages and systemd provide.
    for directory in ("etc/tmpfiles.d", "etc/docker/registry", "etc/nginx/conf.d",
                      "etc/systemd/system", "run", "var/lib/docker-registry"):  # fmt: skip
        (root / directory).mkdir(parents=True)
    registry_user = pwd.getpwnam("docker-registry")
    os.chown(root / "var/lib/docker-registry", registry_user.pw_uid, registry_user.pw_gid)
    running = Machine(root, free_port(), checkout)
    try:
        yield running
    finally:
        for process in reversed(running.processes):
            stop_process(process)
        shutil.rmtree(root)


@pytest.mark.e2e
def test_quickstart_registry_and_nginx_on_this_machine(machine: Machine) -> None:
    tokend_part, registry_part, nginx_part, clients = shell_blocks(
        part("A registry and nginx on this machine")
    )
    www_data = grp.getgrnam("www-data").gr_gid

    # 1. tokend: its directory through systemd-tmpfiles, then the daemon in it.
    preparing, daemon = tokend_part.strip().rsplit("\n", 1)
    machine.run(preparing)
    directory = machine.root / "run" / "tokend"
    assert (stat.S_IMODE(directory.stat().st_mode), directory.stat().st_gid) == (0o2750, www_data)
    log = machine.root / "tokend.log"
    tokend = start_daemon(machine.checkout, machine.moved(daemon), log)
    machine.processes.append(tokend)
    tokend_socket = directory / "tokend.sock"
    wait_for_socket(tokend_socket, tokend, log)
    assert (stat.S_IMODE(tokend_socket.stat().st_mode), tokend_socket.stat().st_gid) == (
        0o660,
        www_data,
    )

    # 2. The registry: its files, then the restart systemd would do.
    machine.run(registry_part)
    assert machine.calls() == ["systemctl daemon-reload", "systemctl restart docker-registry"]
    registry = machine.start_registry()
    registry_socket = machine.root / "run" / "registry" / "registry.sock"
    wait_until(
        lambda: registry_socket.exists() or registry.poll() is not None, "the registry's socket"
    )
    assert registry.poll() is None, machine.log("registry.log")
    assert (stat.S_IMODE(registry_socket.stat().st_mode), registry_socket.stat().st_gid) == (
        0o770,
        www_data,
    )

    # 3. nginx, with its worker as www-data: both sockets must let it in.
    machine.run(nginx_part)
    assert machine.calls() == ["nginx -t", "systemctl reload nginx"]
    nginx = machine.start_nginx()
    wait_until(lambda: port_open(machine.port) or nginx.poll() is not None, "nginx")
    assert nginx.poll() is None, machine.log("nginx/error.log")

    # 4. The clients, with a test-built image instead of one from Docker Hub.
    push, pull, anonymous = clients.strip().splitlines()
    source = "docker://docker.io/library/busybox:latest"
    assert source in push
    image = build_oci_image(machine.root / "image", b"hello from the quickstart")
    pushed = machine.skopeo(push.replace(source, f"oci:{image.path}:latest"))
    assert pushed.returncode == 0, pushed.stderr + machine.log("nginx/error.log")
    inspected = machine.skopeo(pull)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Digest"] == image.manifest_digest
    refused = machine.skopeo(anonymous)
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr or "denied" in refused.stderr, refused.stderr
    assert "Permission denied" not in machine.log("nginx/error.log")


def test_quickstart_registry_drop_in_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = require(shutil.which("systemd-analyze"), "systemd-analyze (Debian systemd)")
    require(str(DEBIAN_UNIT) if DEBIAN_UNIT.exists() else None, "Debian's docker-registry")
    drop_in = heredocs("/etc/systemd/")[DROP_IN]
    unit = tmp_path / DEBIAN_UNIT.name
    shutil.copy2(DEBIAN_UNIT, unit)
    directory = tmp_path / f"{DEBIAN_UNIT.name}.d"
    directory.mkdir()

    def verify(text: str) -> tuple[int, str]:
        (directory / Path(DROP_IN).name).write_text(text)
        result = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path,
            check=False,
        )  # fmt: skip
        return result.returncode, result.stdout + result.stderr

    assert verify(drop_in) == (0, "")
    # It did read the drop-in: a key systemd does not know is reported from there.
    code, output = verify(drop_in + "NoSuchSetting=1\n")
    assert "socket.conf" in output and "NoSuchSetting" in output, (code, output)
