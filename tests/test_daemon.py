"""The real ``twistd registry-token`` command, as an operator runs it, on a UNIX socket."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from base64 import b64encode
from pathlib import Path

import pytest
from support import (
    REPO,
    UnixHTTPConnection,
    get_json_over_unix,
    load_certificate,
    start_twistd,
    stop_process,
    verify_jwt,
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
    log = tmp_path / "tokend.log"
    process = twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
        "--cert", str(cert_path), "--issuer", "iss", "--service", "svc",
        log=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert process.poll() is None, log.read_text() if log.exists() else process.stdout
            assert time.monotonic() < deadline, "no socket after 30 s"
            time.sleep(0.05)
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


def start_failure(tmp_path: Path, *args: str) -> str:
    process = twistd(*args, log=tmp_path / "failed.log")
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    return output.decode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--key": "missing.key"}, "missing.key"),
        ({"--cert": "other.crt"}, "does not match"),
        ({"--config-dir": "broken"}, "invalid policy"),
        ({"--listen": "unix:/proc/nope/tokend.sock"}, "cannot create socket directory"),
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
    assert message in output
    assert "Traceback" not in output


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
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert process.poll() is None, log.read_text() if log.exists() else ""
            assert time.monotonic() < deadline, "no socket after 30 s"
            time.sleep(0.05)
        status, body = get_json_over_unix(sock, "/v2/token?service=svc&scope=repository:pub/x:pull")
        assert status == 200, body
        verify_jwt(body["token"], load_certificate(cert_path))
    finally:
        stop_process(process)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert f"created a development key {key_path}" in log.read_text()
