"""Test helpers shared by the unit, daemon and reload tests: keys, policy files, verification.

Token verification here is independent of tokend's signing code: it uses ``cryptography``
directly against the certificate.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

if TYPE_CHECKING:
    pass

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def new_private_key(kind: str) -> PrivateKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def self_signed(key: PrivateKey, days: int = 30, start_days_ago: int = 1) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokend test")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=start_days_ago))
        .not_valid_after(now + timedelta(days=days))
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def write_key_pair(directory: Path, kind: str = "p256") -> tuple[Path, Path]:
    """A private key (mode 0600) and its self-signed certificate, as the daemon expects them."""
    key = new_private_key(kind)
    key_path, cert_path = directory / f"{kind}.key", directory / f"{kind}.crt"
    write_private_key(key_path, key)
    cert_path.write_bytes(self_signed(key).public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def write_private_key(path: Path, key: PrivateKey) -> None:
    """An unencrypted PKCS#8 PEM key, mode 0600."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def hash_password(password: str, cost: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def write_policy(
    directory: Path,
    users: dict[str, tuple[str, dict[str, list[str]]]],
    anonymous: dict[str, Any] | None = None,
    cost: int = 4,
) -> None:
    """users: name -> (password, repositories rules)."""
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        name: {"pass_hash": hash_password(password, cost), "repositories": rules}
        for name, (password, rules) in users.items()
    }
    (directory / "users.json").write_text(json.dumps(document, indent=2))
    repositories = anonymous if anonymous is not None else {"blacklist": False, "repositories": []}
    (directory / "repositories.json").write_text(json.dumps(repositories))


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def verify_jwt(token: str, certificate: x509.Certificate) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the signature with the certificate's key; return (header, claims)."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(_b64decode(header_b64))
    claims = json.loads(_b64decode(payload_b64))
    signed = f"{header_b64}.{payload_b64}".encode()
    signature = _b64decode(signature_b64)
    public_key = certificate.public_key()
    alg = header["alg"]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        digest = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}[alg]
        half = len(signature) // 2
        der = encode_dss_signature(
            int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        )
        public_key.verify(der, signed, ec.ECDSA(digest))
    elif isinstance(public_key, rsa.RSAPublicKey):
        assert alg == "RS256"
        public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        assert alg == "EdDSA"
        public_key.verify(signature, signed)
    else:
        raise AssertionError(f"unexpected key {public_key!r}")
    return header, claims


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


REPO = Path(__file__).resolve().parent.parent


def doc_pages() -> dict[str, str]:
    """The README and every page under docs/, by path in the checkout: what the documentation
    shows is checked wherever it moved to."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return {str(page.relative_to(REPO)): page.read_text() for page in pages}


def doc_section(title: str) -> str:
    """The body of the one ``## title`` section of the README or a docs/ page."""
    found = [
        match.group(1)
        for text in doc_pages().values()
        if (match := re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    ]
    assert len(found) == 1, f"{len(found)} sections {title!r} in README.md and docs/"
    return found[0]


TWISTD = str(Path(sys.executable).parent / "twistd")


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a UNIX socket, as nginx talks to tokend."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def answers_from_many(path: Path, url: str, connections: int, at_once: int = 8) -> list[Any]:
    """``GET url`` (JSON answers) over ``connections`` connections, ``at_once`` of them open
    together, so that with --workers the waiting workers share them (asked one after another,
    one idle worker may take them all; too many at once overflow a small listen backlog)."""
    bodies: list[Any] = []
    while len(bodies) < connections:
        opened = [UnixHTTPConnection(path) for _ in range(min(at_once, connections - len(bodies)))]
        try:
            for connection in opened:
                connection.connect()
            for connection in opened:
                connection.request("GET", url)
            bodies += [json.loads(connection.getresponse().read()) for connection in opened]
        finally:
            for connection in opened:
                connection.close()
    return bodies


ISSUED_BY = re.compile(r" pid (\d+)\] issued ")
"""A worker's ``issued`` log line (text format), and its pid."""


def pids_issuing(log: Callable[[], str], sock: Path, url: str, connections: int) -> set[int]:
    """The workers that answered ``connections`` token requests for ``url`` (anonymous,
    opened several at once so the kernel hands them to whichever workers wait), as their
    ``issued`` lines in the text ``log`` name them. /healthz no longer names the pid."""
    before = len(ISSUED_BY.findall(log()))
    answers = answers_from_many(sock, url, connections)
    assert all("token" in answer for answer in answers), answers
    deadline = time.monotonic() + 30
    while len(lines := ISSUED_BY.findall(log())) < before + connections:
        assert time.monotonic() < deadline, f"{connections} issued lines: not after 30 s"
        time.sleep(0.05)
    return {int(pid) for pid in lines[before:]}


def accepts(path: Path) -> bool:
    """Whether the UNIX socket at ``path`` accepts connections yet: its file exists a moment
    before listen(), and a connection in between is refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(str(path))
        except OSError:
            return False
    return True


def get_json_over_unix(path: Path, url: str, headers: dict[str, str] | None = None) -> Any:
    connection = UnixHTTPConnection(path)
    try:
        connection.request("GET", url, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def start_twistd(*args: str, log: Path, output: Path | None = None) -> subprocess.Popen[bytes]:
    """The real ``twistd -n registry-token`` from this checkout, with no TOKEND_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    env["PYTHONPATH"] = str(REPO)
    command = [TWISTD, "-n", "--pidfile=", "--logfile", str(log), "registry-token", *args]
    sink = subprocess.PIPE if output is None else output.open("wb")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)


def start_failure(tmp_path: Path, *args: str) -> str:
    """What a failed start printed and logged, once checked to be one sentence: no traceback,
    no usage text (twistd prints its whole --help before a UsageError's message)."""
    log = tmp_path / "failed.log"
    process = start_twistd(*args, log=log)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        stop_process(process)  # one that started after all
    assert process.returncode == 1
    text = output.decode() + (log.read_text() if log.exists() else "")
    assert "Traceback" not in text
    assert "Usage:" not in text and "--help" not in text
    return text


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM by PID, then SIGKILL if it does not go; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return process.returncode


def settled(deferred: Deferred[Any]) -> Any:
    """The result of a Deferred that in-memory tests (StubTreq, inline workers) settle at once;
    a failure is raised."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the request did not complete synchronously"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def parsed_options(tmp_path: Path, *args: str, environ: dict[str, str] | None = None) -> Any:
    """``twistd registry-token`` options parsed as the daemon would, over a small policy and a
    P-256 key pair in ``tmp_path`` (made once, reused by later calls)."""
    from tokend.tap import Options  # the daemon's module, with its reactor: only when asked

    config = tmp_path / "config"
    if not config.exists():
        write_policy(config, {"a": ("pw", {"*": ["pull"]})}, {"repositories": ["pub/*", "x"]})
    key_path, cert_path = tmp_path / "p256.key", tmp_path / "p256.crt"
    if not key_path.exists():
        write_key_pair(tmp_path)
    options = Options(environ=environ or {})
    options.parseOptions(
        [
            "--listen", "tcp:0:interface=127.0.0.1", "--config-dir", str(config),
            "--key", str(key_path), "--cert", str(cert_path), *args,
        ]
    )  # fmt: skip
    return options


def parsed_settings(tmp_path: Path, *args: str, environ: dict[str, str] | None = None) -> Any:
    """The :class:`tokend.settings.values.Settings` of :func:`parsed_options`."""
    return parsed_options(tmp_path, *args, environ=environ).settings


def with_default_sigint(command: list[str]) -> list[str]:
    """``command`` run with SIGINT's default disposition, as from a terminal.

    A shell starts a background job (``pytest … &``) with SIGINT ignored, and an ignored
    signal stays ignored through fork and exec: neither Python nor Twisted's reactor installs
    a handler for it, so the Ctrl-C would never arrive. ``Popen``'s ``restore_signals`` resets
    only SIGPIPE, SIGXFZ and SIGXFSZ, and a ``preexec_fn`` is unsafe with threads in the test
    process: a small Python resets SIGINT and execs the command in the same process instead.
    """
    reset = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", reset, *command]


def wait_for(
    what: str,
    check: Callable[[], object],
    timeout: float = 30,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Polls ``check`` until it holds. With ``process``, fails at once (showing ``log``) when
    the process ends first, instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            shown = log.read_text() if log is not None and log.exists() else ""
            raise AssertionError(f"{what}: the process ended ({process.returncode})\n{shown}")
        assert time.monotonic() < deadline, f"{what}: not after {timeout:g} s"
        time.sleep(0.05)


def run_tool(*argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``tokend argv`` in this process (argparse's own exits
    included)."""
    from tokend.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved, sys.stderr = sys.stderr, err
    try:
        code = main(list(argv), stdin=io.StringIO(), stdout=out)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


def write_script(directory: Path, name: str, body: str, interpreter: str = sys.executable) -> str:
    """An executable script ``name`` in ``directory``, run by ``interpreter`` (an external
    authentication or authorization program, as an operator writes one)."""
    path = directory / name
    path.write_text(f"#!{interpreter}\n{body}")
    path.chmod(0o755)
    return str(path)


EXT_AUTH_SH = """read u p

if [ "$u" = "user" -a "$p" = "pass" ]; then
  exit 0
fi

if [ "$u" = "bofh" -a "$p" = "LART" ]; then
  echo '{"labels": {"level": ["max"], "groups": ["VIP", "ATeam"]}}'
  exit 0
fi

exit 1
"""
"""docker_auth's examples/ext_auth.sh, its semantics written again (``=``: its ``==`` is not
POSIX, and dash's ``[`` refuses it)."""


def pid_file_hang(pid_file: Path) -> str:
    """A Python program body that writes its pid to ``pid_file`` then hangs."""
    return (
        "import os, time\n"
        f"open({str(pid_file)!r} + '.tmp', 'w').write(f'{{os.getpid()}}\\n')\n"
        f"os.rename({str(pid_file)!r} + '.tmp', {str(pid_file)!r})\n"
        "time.sleep(600)\n"
    )
