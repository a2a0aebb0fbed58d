"""The deployment the README describes, run for real: registry, tokend and nginx on UNIX sockets.

Every process is started here and stopped by its own PID; every log stays under one directory so
a failure report can show them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import (
    REPO,
    UnixHTTPConnection,
    accepts,
    free_port,
    get_json_over_unix,
    hash_password,
    port_open,
    start_twistd,
    stop_process,
    wait_for,
)

ISSUER = "tokend-e2e"
SERVICE = "registry.e2e"
BINARIES = {"docker-registry": "docker-registry", "nginx": "nginx", "skopeo": "skopeo"}
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BCRYPT_COST = 12
"""The daemon's real default cost: the e2e suite pays what production pays."""

USERS: dict[str, tuple[str, dict[str, list[str]]]] = {
    "bar": ("bar", {"*": ["pull", "push"]}),
    "foo": ("foo", {"*": ["pull"]}),
}
ANONYMOUS = {"blacklist": False, "repositories": ["public/hello"], "catalog": False}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    wait_for(what, condition, timeout)


def write_tls_pair(directory: Path) -> tuple[Path, Path]:
    """nginx's server certificate: Go clients need the address as a SAN, not just a CN."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "tls.key", directory / "tls.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    extra_logs: tuple[Path, ...] = ()
    """More files worth showing on failure: twistd's stdout, nginx's access log."""

    def stop(self) -> None:
        stop_process(self.process)

    def tail(self, lines: int = 60) -> str:
        return _tail(self.log, lines)

    def sections(self, lines: int = 60) -> Iterator[tuple[str, str]]:
        state = f"pid {self.process.pid}, exit status {self.process.poll()}"
        yield f"{self.name} ({state})", self.tail(lines)
        for extra in self.extra_logs:
            if extra.exists() and extra.stat().st_size:
                yield f"{self.name} {extra.name}", _tail(extra, lines)


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"(no {path.name})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class OciImage:
    """A one-layer OCI layout directory built by the test, and the digests it holds."""

    path: Path
    manifest_digest: str
    layer_digest: str


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def build_oci_image(path: Path, content: bytes) -> OciImage:
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    layer_digest, layer_size = _blob(blobs, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(tar_bytes.getvalue()).hexdigest()}"],
        },
    }
    config_digest, config_size = _blob(blobs, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return OciImage(path, manifest_digest, layer_digest)


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class Stack:
    root: Path
    port: int
    certs: Path
    config: Path
    storage: Path
    tokend_socket: Path
    registry_socket: Path
    metrics_socket: Path
    """tokend's --metrics listener: /metrics, and /healthz with the policy generation."""
    processes: list[Running] = field(default_factory=list)
    tokend_args: tuple[str, ...] = ()
    """More options for tokend (e.g. ``--workers 2``)."""
    signing_args: tuple[str, ...] | None = None
    """tokend's key options in place of ``--key``/``--cert`` from ``tokend dev-cert`` (e.g.
    ``--keys-dir DIR``); the test then makes the keys and the registry's bundle
    (``certs/RootCA.crt``) before the launch."""
    _images: int = 0

    # --- the registry's view -------------------------------------------------------------

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stored_tag(self, repository: str, tag: str = "latest") -> str | None:
        """The manifest digest the registry stored for a tag, read from its filesystem."""
        link = (
            self.storage
            / "docker/registry/v2/repositories"
            / repository
            / "_manifests/tags"
            / tag
            / "current/link"
        )
        return link.read_text().strip() if link.exists() else None

    def repository_exists(self, repository: str) -> bool:
        return (self.storage / "docker/registry/v2/repositories" / repository).exists()

    def stored_files(self) -> set[str]:
        """Every path in the registry's storage: the same set before and after = nothing written."""
        if not self.storage.exists():
            return set()
        return {str(path.relative_to(self.storage)) for path in self.storage.rglob("*")}

    # --- clients -------------------------------------------------------------------------

    def new_image(self) -> OciImage:
        self._images += 1
        path = self.root / "images" / f"image-{self._images}"
        return build_oci_image(path, f"image {self._images} {time.time_ns()}\n".encode())

    def client_home(self, name: str) -> Path:
        """An empty HOME per client: no stray ~/.docker/config.json credentials."""
        home = self.root / "clients" / name
        home.mkdir(parents=True, exist_ok=True)
        return home

    def skopeo(self, *args: str, home: Path | None = None) -> CommandResult:
        home = home or self.client_home(f"skopeo-{time.time_ns()}")
        env = {
            "PATH": CLEAN_PATH,
            "HOME": str(home),
            "DOCKER_CONFIG": str(home / ".docker"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_RUNTIME_DIR": str(home / "run"),
            "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        }
        (home / "run").mkdir(exist_ok=True, mode=0o700)
        result = subprocess.run(
            ["skopeo", "--insecure-policy", "--command-timeout", "60s", *args],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        return CommandResult(
            result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode()
        )

    def push(
        self, image: OciImage, repository: str, creds: str | None, home: Path | None = None
    ) -> CommandResult:
        auth = ["--dest-creds", creds] if creds else ["--dest-no-creds"]
        return self.skopeo(
            "copy",
            "--dest-tls-verify=false",
            *auth,
            f"oci:{image.path}:latest",
            f"docker://{self.registry}/{repository}:latest",
            home=home,
        )

    def pull(self, repository: str, creds: str | None) -> tuple[CommandResult, Path]:
        target = self.root / "pulled" / f"{repository.replace('/', '_')}-{time.time_ns()}"
        target.parent.mkdir(exist_ok=True)
        auth = ["--src-creds", creds] if creds else ["--src-no-creds"]
        result = self.skopeo(
            "copy",
            "--src-tls-verify=false",
            *auth,
            f"docker://{self.registry}/{repository}:latest",
            f"oci:{target}:latest",
        )
        return result, target

    def request(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        data: bytes | None = None,
    ) -> tuple[int, Message, Any]:
        """A plain HTTPS request through nginx (certificate not verified: it is self-signed).

        A body-less answer (the registry's 202 to a DELETE) comes back as ``None``.
        """
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(
            f"https://{self.registry}{path}", data=data, headers=headers or {}, method=method
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                body = response.read()
                return response.status, response.headers, json.loads(body) if body else None
        except urllib.error.HTTPError as e:
            body = e.read()
            return e.code, e.headers, json.loads(body) if body else None

    def https(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """A plain HTTPS request through nginx, as the README's curl examples make."""
        status, _, body = self.request(path, headers)
        return status, body

    def post_form(self, path: str, fields: list[tuple[str, str]]) -> tuple[int, Any]:
        """A form POST through nginx, as docker and skopeo send the OAuth2 grants (a field may
        repeat: containers/image repeats ``scope``)."""
        status, _, body = self.request(
            path,
            {"Content-Type": "application/x-www-form-urlencoded"},
            "POST",
            urllib.parse.urlencode(fields).encode(),
        )
        return status, body

    def ask_tokend(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        body: bytes | None = None,
    ) -> tuple[int, Message, Any]:
        """A request on tokend's own socket, as nginx sends it (``X-Real-IP`` names the client;
        a JSON body comes back parsed, any other as text)."""
        connection = UnixHTTPConnection(self.tokend_socket, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data.decode(errors="replace")
        return response.status, response.headers, parsed

    def token_response(
        self, scope: str, user: str | None = None, password: str | None = None
    ) -> tuple[int, Any]:
        """GET the realm through nginx as skopeo does: Basic auth, ``account``, one scope."""
        headers = {}
        parameters = {"service": SERVICE, "scope": scope}
        if user is not None:
            headers["Authorization"] = "Basic " + b64encode(f"{user}:{password}".encode()).decode()
            parameters["account"] = user
        return self.https(f"/v2/token?{urllib.parse.urlencode(parameters)}", headers)

    def token(self, scope: str, user: str | None = None, password: str | None = None) -> str:
        status, body = self.token_response(scope, user, password)
        assert status == 200, body
        return str(body["token"])

    def tokend_log_offset(self) -> int:
        return (self.root / "tokend.log").stat().st_size

    def tokend_log_since(self, offset: int) -> str:
        with (self.root / "tokend.log").open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    # --- the policy ----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """tokend's metrics listener's /healthz: the policy serving, in each worker with
        ``--workers``."""
        status, body = get_json_over_unix(self.metrics_socket, "/healthz")
        assert status == 200, body
        return dict(body)

    def generation(self) -> int:
        """The policy generation every process serves by now (0 until every worker answers)."""
        body = self.health()
        if "workers" not in body:
            return int(body["policy_generation"])
        if body["workers_answering"] < body["workers_configured"]:
            return 0
        return min(int(worker["policy_generation"]) for worker in body["workers"])

    def rewrite(self, name: str, document: Any) -> None:
        """Replace a policy file atomically and wait until the daemon has loaded it."""
        before = self.generation()
        temporary = self.config / f".{name}.tmp"
        temporary.write_text(json.dumps(document, indent=2))
        os.replace(temporary, self.config / name)
        self._wait_for_reload(before, name)

    def remove(self, name: str) -> None:
        """Delete an optional policy file (groups.json) and wait until the daemon has reloaded:
        a scenario that added groups must leave the session's stack as it found it."""
        before = self.generation()
        (self.config / name).unlink()
        self._wait_for_reload(before, name)

    def _wait_for_reload(self, before: int, name: str) -> None:
        wait_until(lambda: self.generation() > before, f"tokend to reload {name}", timeout=15)
        body = self.health()
        for health in body.get("workers", [body]):
            assert (
                health["policy_error"] is None
                or health["policy_failed_at"] < health["policy_loaded_at"]
            ), health

    def read(self, name: str) -> Any:
        return json.loads((self.config / name).read_text())

    # --- life cycle ----------------------------------------------------------------------

    def restart_registry(self) -> None:
        """Stop the registry by its PID and start it again: it reads its bundle only at start."""
        running = next(p for p in self.processes if p.name == "docker-registry")
        running.stop()
        self.processes.remove(running)
        self.registry_socket.unlink(missing_ok=True)  # left behind after SIGTERM
        _start_registry(self)

    def stop(self) -> None:
        """Stop every process by its own PID, newest first; one that hangs does not spare others."""
        failures: list[str] = []
        for running in reversed(self.processes):
            try:
                running.stop()
            except subprocess.TimeoutExpired:
                failures.append(f"{running.name} (pid {running.process.pid}) ignored SIGTERM")
        assert not failures, "; ".join(failures)

    def logs(self) -> Iterator[tuple[str, str]]:
        for running in self.processes:
            yield from running.sections()


def missing_binaries() -> list[str]:
    return [name for name, binary in BINARIES.items() if shutil.which(binary) is None]


def _registry_config(stack: Stack) -> str:
    return f"""version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {stack.storage}
  delete:
    enabled: true
http:
  net: unix
  addr: {stack.registry_socket}
  secret: e2e-only-secret
auth:
  token:
    realm: https://{stack.registry}/v2/token
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {stack.certs / "RootCA.crt"}
"""


def _nginx_config(stack: Stack, tls_key: Path, tls_cert: Path) -> str:
    temp = stack.root / "nginx"
    return f"""daemon off;
user root;
worker_processes 1;
pid {temp}/nginx.pid;
error_log {temp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {temp}/access.log;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{stack.port} ssl;
        ssl_certificate {tls_cert};
        ssl_certificate_key {tls_key};
        location = /v2/token {{
            proxy_pass http://unix:{stack.tokend_socket}:;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
        location /api/v1/tokens {{
            proxy_pass http://unix:{stack.tokend_socket}:;
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
        location /v2/ {{
            proxy_pass http://unix:{stack.registry_socket}:;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            client_max_body_size 0;
            proxy_http_version 1.1;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def _write_policy(config: Path) -> None:
    config.mkdir(parents=True)
    users = {
        name: {"pass_hash": hash_password(password, BCRYPT_COST), "repositories": rules}
        for name, (password, rules) in USERS.items()
    }
    (config / "users.json").write_text(json.dumps(users, indent=2))
    (config / "repositories.json").write_text(json.dumps(ANONYMOUS, indent=2))


def new_stack(
    root: Path, tokend_args: tuple[str, ...] = (), signing_args: tuple[str, ...] | None = None
) -> Stack:
    """The stack's layout, before anything runs (so a failed start can still show its logs)."""
    return Stack(
        tokend_args=tokend_args,
        signing_args=signing_args,
        root=root,
        port=free_port(),
        certs=root / "certs",
        config=root / "config",
        storage=root / "registry-data",
        tokend_socket=root / "sockets" / "tokend.sock",
        registry_socket=root / "sockets" / "registry.sock",
        metrics_socket=root / "sockets" / "metrics.sock",
    )


def start_stack(root: Path) -> Stack:
    return launch_stack(new_stack(root))


def launch_stack(stack: Stack) -> Stack:
    """Key pair and policy, then registry, tokend and nginx, each waited for with a deadline."""
    return _launch_stack(stack, with_registry=True)


def launch_tokend(stack: Stack) -> Stack:
    """Key pair, policy and tokend alone: for scenarios that ask tokend's socket directly (two
    daemons on one database, ``--workers``), where a registry and nginx would add nothing."""
    return _launch_stack(stack, with_registry=False)


def _launch_stack(stack: Stack, *, with_registry: bool) -> Stack:
    (stack.root / "sockets").mkdir()
    if stack.signing_args is None:
        _dev_cert(stack)
    _write_policy(stack.config)
    try:
        if with_registry:
            (stack.root / "nginx").mkdir()
            _start_registry(stack)
        _start_tokend(stack)
        if with_registry:
            _start_nginx(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


def _dev_cert(stack: Stack) -> None:
    """The signing key pair, made by the operator's tool: ``tokend dev-cert``."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "tokend", "dev-cert", "--cn", "tokend e2e"),
            *("--key", str(stack.certs / "RootCA.key"), "--cert", str(stack.certs / "RootCA.crt")),
        ],
        cwd=REPO,
        env={**_clean_environ(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"tokend dev-cert failed:\n{result.stdout}{result.stderr}"


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}


def _launch(
    stack: Stack,
    name: str,
    command: list[str],
    log: Path,
    extra_logs: tuple[Path, ...] = (),
    **kwargs: Any,
) -> Running:
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, **kwargs)
    running = Running(name, process, log, extra_logs)
    stack.processes.append(running)
    return running


def _wait_alive(running: Running, condition: Callable[[], bool], what: str) -> None:
    def ready() -> bool:
        assert running.process.poll() is None, f"{running.name} exited:\n{running.tail()}"
        return condition()

    wait_until(ready, what)


def _start_registry(stack: Stack) -> None:
    config = stack.root / "registry.yml"
    config.write_text(_registry_config(stack))
    running = _launch(
        stack,
        "docker-registry",
        ["docker-registry", "serve", str(config)],
        stack.root / "registry.log",
        env={"PATH": CLEAN_PATH},  # REGISTRY_* in the environment would override the file
        preexec_fn=lambda: os.umask(0o007),  # the socket must admit nginx (root here)
    )
    _wait_alive(running, stack.registry_socket.exists, "the registry's socket")
    # The socket exists a moment before the registry answers on it: wait for its challenge.
    _wait_alive(running, lambda: _registry_status(stack) is not None, "the registry to answer")
    assert _registry_status(stack) == 401, "the registry does not demand a token"


def _registry_status(stack: Stack) -> int | None:
    connection = UnixHTTPConnection(stack.registry_socket, timeout=5)
    try:
        connection.request("GET", "/v2/")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def _start_tokend(stack: Stack) -> None:
    log = stack.root / "tokend.log"
    signing = stack.signing_args
    if signing is None:
        signing = (
            "--key",
            str(stack.certs / "RootCA.key"),
            "--cert",
            str(stack.certs / "RootCA.crt"),
        )
    process = start_twistd(
        "--listen", f"unix:{stack.tokend_socket}",
        "--config-dir", str(stack.config),
        *signing,
        "--issuer", ISSUER,
        "--service", SERVICE,
        "--metrics", f"unix:{stack.metrics_socket}",
        *stack.tokend_args,
        log=log,
        output=stack.root / "tokend.out",
    )  # fmt: skip
    running = Running("tokend", process, log, (stack.root / "tokend.out",))
    stack.processes.append(running)
    sockets = (stack.tokend_socket, stack.metrics_socket)
    _wait_alive(running, lambda: all(accepts(s) for s in sockets), "tokend's sockets")
    wait_until(lambda: stack.generation() >= 1, "tokend's /healthz")


def _start_nginx(stack: Stack) -> None:
    tls_key, tls_cert = write_tls_pair(stack.root / "nginx")
    config = stack.root / "nginx" / "nginx.conf"
    config.write_text(_nginx_config(stack, tls_key, tls_cert))
    running = _launch(
        stack,
        "nginx",
        ["nginx", "-c", str(config), "-p", str(stack.root / "nginx")],
        stack.root / "nginx" / "error.log",
        (stack.root / "nginx" / "access.log",),
    )
    # nginx writes its pid file only once its listeners are bound: a port taken meanwhile by
    # someone else makes it exit instead, which _wait_alive reports.
    pid_file = stack.root / "nginx" / "nginx.pid"
    _wait_alive(
        running, lambda: pid_file.exists() and port_open(stack.port), f"nginx on {stack.port}"
    )
    # Through nginx to the registry: the challenge names our realm behind the same nginx.
    status, headers, _ = stack.request("/v2/")
    assert status == 401, (status, headers)
    challenge = headers.get("WWW-Authenticate", "")
    assert f'realm="https://{stack.registry}/v2/token"' in challenge, challenge
