"""The real ``twistd registry-token`` command, as an operator runs it, on a UNIX socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from base64 import b64encode
from pathlib import Path

import pytest
from support import (
    REPO,
    TWISTD,
    UnixHTTPConnection,
    accepts,
    get_json_over_unix,
    load_certificate,
    start_failure,
    start_twistd,
    stop_process,
    verify_jwt,
    wait_for,
    write_key_pair,
    write_policy,
)


def twistd(*args: str, log: Path) -> subprocess.Popen[bytes]:
    return start_twistd(*args, log=log)


@pytest.fixture
def deployment(tmp_path: Path) -> tuple[Path, Path, Path]:
    config = tmp_path / "config"
    write_policy(config, {"bar": ("bar", {"*": ["pull", "push"]})}, {"repositories": ["pub/x"]})
    key_path, cert_path = write_key_pair(tmp_path)
    return config, key_path, cert_path


def test_twistd_serves_tokens_on_a_unix_socket(
    tmp_path: Path, deployment: tuple[Path, Path, Path]
) -> None:
    config, key_path, cert_path = deployment
    sock = tmp_path / "run" / "tokend.sock"
    sock.parent.mkdir()
    log = tmp_path / "tokend.log"
    process = twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
        "--cert", str(cert_path), "--issuer", "iss", "--service", "svc",
        log=log,
    )  # fmt: skip
    try:
        wait_for("the socket", lambda: accepts(sock), process=process, log=log)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660

        connection = UnixHTTPConnection(sock)
        auth = b64encode(b"bar:bar").decode()
        connection.request(
            "GET",
            "/v2/token?service=svc&scope=repository:team/app:pull,push&account=bar",
            headers={"Authorization": f"Basic {auth}"},
        )
        response = connection.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        _, claims = verify_jwt(body["token"], load_certificate(cert_path))
        assert (claims["iss"], claims["aud"], claims["sub"]) == ("iss", "svc", "bar")
        assert claims["access"] == [
            {"type": "repository", "name": "team/app", "actions": ["pull", "push"]}
        ]
    finally:
        # twistd re-raises the signal after a clean shutdown, so the status is "killed by TERM".
        assert stop_process(process) == -signal.SIGTERM
    text = log.read_text()
    assert f"tokend listening on unix:{sock}:backlog=1024:mode=660:lockfile=1" in text
    assert "issued GET token to 'bar'" in text
    assert '"GET /v2/token' not in text, "one event per request, no second access-log line"
    assert "bar:bar" not in text and auth not in text


def wait_for_socket(process: subprocess.Popen[bytes], sock: Path, log: Path) -> None:
    wait_for("the socket", lambda: accepts(sock), process=process, log=log)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--key": "missing.key"}, "missing.key"),
        ({"--cert": "other.crt"}, "does not match"),
        ({"--config-dir": "broken"}, "invalid policy"),
        ({"--listen": "unix:/proc/nope/tokend.sock"}, "socket directory /proc/nope does not"),
        ({"--listen": "unix:missing-dir/tokend.sock"}, "socket directory missing-dir does not"),
        ({"--token-ttl": "5"}, "--token-ttl must be between 60 and 3600"),
        ({"--kid": "sha1"}, "--kid must be one of"),
    ],
)
def test_bad_configuration_stops_start_up_with_one_sentence(
    tmp_path: Path, deployment: tuple[Path, Path, Path], change: dict[str, str], message: str
) -> None:
    config, key_path, cert_path = deployment
    broken = tmp_path / "broken"
    write_policy(broken, {})
    (broken / "users.json").write_text('{"a": {"pass_hash": "x"}}')
    write_key_pair(tmp_path, "rsa")
    (tmp_path / "other.crt").write_bytes((tmp_path / "rsa.crt").read_bytes())
    options = {
        "--listen": f"unix:{tmp_path}/t.sock",
        "--config-dir": str(config),
        "--key": str(key_path),
        "--cert": str(cert_path),
    }
    for name, value in change.items():
        options[name] = (
            value
            if value.startswith("unix:") or name in ("--token-ttl", "--kid")
            else str(tmp_path / value)
        )
    output = start_failure(tmp_path, *[part for item in options.items() for part in item])
    assert output.startswith("twistd registry-token: ")
    assert message in output
    assert not (REPO / "missing-dir").exists()


def test_a_tcp_port_in_use_stops_start_up_with_one_sentence(
    tmp_path: Path, deployment: tuple[Path, Path, Path]
) -> None:
    config, key_path, cert_path = deployment
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        output = start_failure(
            tmp_path, "--listen", f"tcp:{port}:interface=127.0.0.1", "--config-dir", str(config),
            "--key", str(key_path), "--cert", str(cert_path),
        )  # fmt: skip
    assert f"--listen: cannot listen on TCP port {port} of 127.0.0.1: Address already in use" in (
        output
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_metrics_port_is_named_as_the_metrics_listeners(
    tmp_path: Path, deployment: tuple[Path, Path, Path], workers: str
) -> None:
    """Not to be mistaken for the token listener's: the sentence names --metrics."""
    config, key_path, cert_path = deployment
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        output = start_failure(
            tmp_path, "--listen", f"unix:{tmp_path}/t.sock", "--config-dir", str(config),
            "--key", str(key_path), "--cert", str(cert_path), "--workers", workers,
            "--metrics", f"tcp:{port}:interface=127.0.0.1",
        )  # fmt: skip
    assert (
        f"--metrics: cannot listen on TCP port {port} of 127.0.0.1: Address already in use"
    ) in output


def test_a_socket_another_daemon_holds_stops_start_up_with_one_sentence(
    tmp_path: Path, deployment: tuple[Path, Path, Path]
) -> None:
    config, key_path, cert_path = deployment
    sock = tmp_path / "tokend.sock"
    args = ("--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
            "--cert", str(cert_path))  # fmt: skip
    first_log = tmp_path / "first.log"
    first = twistd(*args, log=first_log)
    try:
        wait_for_socket(first, sock, first_log)
        output = start_failure(tmp_path, *args)
        assert (
            f"cannot listen on UNIX socket {sock}: another process (another tokend?) holds its "
            f"lock {sock}.lock"
        ) in output
        assert get_json_over_unix(sock, "/healthz")[0] == 200, "the first daemon still serves"
    finally:
        stop_process(first)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_a_socket_group_the_user_cannot_give_stops_start_up_with_one_sentence(
    tmp_path: Path, deployment: tuple[Path, Path, Path]
) -> None:
    """As uid 10001 outside www-data in the container: here root without CAP_CHOWN, which
    may only give a file to its own groups."""
    config, key_path, cert_path = deployment
    sock = tmp_path / "tokend.sock"
    log = tmp_path / "group.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        ["setpriv", "--bounding-set=-chown", TWISTD, "-n", "--pidfile=", "--logfile", str(log),
         "registry-token", "--listen", f"unix:{sock}", "--socket-group", "www-data",
         "--config-dir", str(config), "--key", str(key_path), "--cert", str(cert_path)],
        cwd=REPO, env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    text = result.stdout.decode() + result.stderr.decode() + log.read_text()
    assert result.returncode == 1, text
    assert (
        f"cannot give the socket {sock} to group www-data: Operation not permitted; the "
        "daemon's user must be a member of www-data (or start as root)"
    ) in text
    assert "Traceback" not in text


def test_a_daemonising_twistd_reports_a_failed_bind_and_exits(
    tmp_path: Path, deployment: tuple[Path, Path, Path]
) -> None:
    """Without -n, twistd's first process waits on a status pipe for the daemon's word."""
    config, key_path, cert_path = deployment
    pidfile, log = tmp_path / "tokend.pid", tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    env["PYTHONPATH"] = str(REPO)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            result = subprocess.run(
                [TWISTD, "--pidfile", str(pidfile), "--logfile", str(log), "registry-token",
                 "--listen", f"tcp:{port}:interface=127.0.0.1", "--config-dir", str(config),
                 "--key", str(key_path), "--cert", str(cert_path)],
                cwd=REPO, env=env, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        finally:
            if pidfile.exists():  # a daemon that started after all: stop it by its PID
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
    sentence = f"cannot listen on TCP port {port} of 127.0.0.1: Address already in use"
    assert result.returncode == 1
    assert sentence in result.stderr.decode()
    assert sentence in log.read_text()
    assert "Traceback" not in log.read_text()
    assert not pidfile.exists()


def test_importing_the_service_raises_no_deprecation_warning() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", "import tokend.tap"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_dev_cert_creates_a_private_key_pair_and_says_so(
    tmp_path: Path, deployment: tuple[Path, Path, Path]
) -> None:
    config, _, _ = deployment
    key_path, cert_path = tmp_path / "dev" / "RootCA.key", tmp_path / "dev" / "RootCA.crt"
    sock = tmp_path / "dev.sock"
    log = tmp_path / "dev.log"
    process = twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
        "--cert", str(cert_path), "--service", "svc", "--dev-cert",
        log=log,
    )  # fmt: skip
    try:
        wait_for("the socket", lambda: accepts(sock), process=process, log=log)
        status, body = get_json_over_unix(sock, "/v2/token?service=svc&scope=repository:pub/x:pull")
        assert status == 200, body
        verify_jwt(body["token"], load_certificate(cert_path))
    finally:
        stop_process(process)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert f"created a development key {key_path}" in log.read_text()


def login_status(sock: Path, user: str, password: str) -> int:
    auth = b64encode(f"{user}:{password}".encode()).decode()
    status, _ = get_json_over_unix(
        sock, f"/v2/token?service=svc&account={user}", {"Authorization": f"Basic {auth}"}
    )
    return int(status)


EXAMPLE_SENTENCE = (
    "config/users.json: bar, foo have the example passwords shipped with tokend, which anyone "
    "can look up; write your own users.json with tokend hash-password, or pass --dev-cert to run "
    "a development daemon"
)


def test_the_shipped_example_accounts_stop_start_up_with_one_sentence(
    tmp_path: Path, deployment: tuple[Path, Path, Path]
) -> None:
    """The default --config-dir, config/, as shipped (twistd runs in the checkout)."""
    _, key_path, cert_path = deployment
    output = start_failure(
        tmp_path, "--listen", f"unix:{tmp_path}/t.sock", "--key", str(key_path),
        "--cert", str(cert_path),
    )  # fmt: skip
    assert output.strip() == f"twistd registry-token: {EXAMPLE_SENTENCE}"
    assert not (tmp_path / "t.sock").exists()


def test_a_development_daemon_starts_with_the_example_accounts_and_says_so(
    tmp_path: Path, deployment: tuple[Path, Path, Path]
) -> None:
    """The README's first command: --dev-cert on the shipped config/ (a key pair of its own
    here, instead of certs/ in the checkout)."""
    _, key_path, cert_path = deployment
    sock, log = tmp_path / "dev.sock", tmp_path / "dev.log"
    process = twistd(
        "--listen", f"unix:{sock}", "--key", str(key_path), "--cert", str(cert_path),
        "--service", "svc", "--dev-cert",
        log=log,
    )  # fmt: skip
    try:
        wait_for_socket(process, sock, log)
        assert login_status(sock, "bar", "bar") == 200
    finally:
        stop_process(process)
    assert (
        "development daemon: bar, foo have the example passwords shipped with tokend, which "
        "anyone can look up; never let it serve a registry others can reach"
    ) in log.read_text()


def test_a_reload_that_brings_in_the_example_accounts_is_refused(
    tmp_path: Path, deployment: tuple[Path, Path, Path]
) -> None:
    config, key_path, cert_path = deployment
    sock, log = tmp_path / "t.sock", tmp_path / "t.log"
    process = twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
        "--cert", str(cert_path), "--service", "svc",
        log=log,
    )  # fmt: skip
    try:
        wait_for_socket(process, sock, log)
        shutil.copy(REPO / "config" / "users.json", config / ".users.json.tmp")
        os.replace(config / ".users.json.tmp", config / "users.json")
        deadline = time.monotonic() + 30
        while "bar, foo have the example passwords" not in log.read_text():
            assert time.monotonic() < deadline, "no refused reload after 30 s"
            time.sleep(0.05)
        assert get_json_over_unix(sock, "/healthz") == (200, {"status": "degraded"})
        assert login_status(sock, "foo", "foo") == 401, "the example's foo never got in"
    finally:
        stop_process(process)
    assert f"failed, keeping generation 1: {config}/users.json: bar, foo have" in log.read_text()
