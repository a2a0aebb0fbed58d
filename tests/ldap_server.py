"""A real OpenLDAP ``slapd`` for the directory tests and the end-to-end suite.

It runs from a temp dir with its own ``slapd.conf`` (mdb, ``dc=example,dc=com``, the memberof
overlay, ``allow bind_anon_dn`` so that an empty password *would* be accepted by the server),
listens on ``ldap://127.0.0.1:P`` and ``ldaps://127.0.0.1:PS`` with a certificate from a test CA,
and is loaded with ``ldapadd`` after start (memberOf is only maintained for entries added through
the running server, not by ``slapadd``). Stopped by its own PID; ``start()`` again reuses the
same ports and data, for outage and recovery tests.

Use the session fixture with ``pytest_plugins = ("ldap_server",)`` in a test module, or
:func:`start_slapd` for a private instance a test may stop.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import free_port, port_open, write_private_key

SUFFIX = "dc=example,dc=com"
BASE = f"ou=musicians,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "root-secret"
SERVICE_DN = f"uid=serviceaccount,ou=it,{SUFFIX}"
PASSWORD = "password"
"""Every person's password in the test directory."""

SLAPD_CANDIDATES = ("/usr/sbin/slapd",)
MODULE_PATH = "/usr/lib/ldap"
SCHEMA_DIR = Path("/etc/ldap/schema")


def dn(uid: str, ou: str = "musicians") -> str:
    return f"uid={uid},ou={ou},{SUFFIX}"


def group_dn(cn: str) -> str:
    return f"cn={cn},{GROUPS}"


def slapd_binary() -> str | None:
    found = shutil.which("slapd")
    if found:
        return found
    return next((path for path in SLAPD_CANDIDATES if os.access(path, os.X_OK)), None)


def missing_binaries() -> list[str]:
    missing = [] if slapd_binary() else ["slapd"]
    missing += [name for name in ("ldapadd", "ldapmodify") if shutil.which(name) is None]
    return missing


def require_slapd() -> None:
    """Skip (fail under CI, which installs them) when slapd or ldap-utils are missing."""
    missing = missing_binaries()
    if missing:
        message = f"needs {', '.join(missing)} (apt-get install slapd ldap-utils)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass(frozen=True)
class TestCA:
    """A certificate authority for the test: its PEM file and its key, to sign servers."""

    path: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def make_ca(directory: Path, name: str) -> TestCA:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path = directory / f"{name}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return TestCA(path, key, certificate)


def write_server_certificate(directory: Path, ca: TestCA) -> tuple[Path, Path]:
    """slapd's key and certificate, with SANs for localhost, this host's name and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(socket.gethostname()),
        x509.IPAddress(IPv4Address("127.0.0.1")),
    ]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    key_path, cert_path = directory / "slapd.key", directory / "slapd.crt"
    write_private_key(key_path, key)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _person(uid: str, ou: str, cn: str, password: str = PASSWORD) -> str:
    return (
        f"dn: uid={uid},{ou}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {cn}\n"
        f"sn: {cn.split()[-1]}\nuserPassword: {password}\n"
    )


def _group(cn: str, members: list[str]) -> str:
    lines = "".join(f"member: {member}\n" for member in members)
    return f"dn: {group_dn(cn)}\nobjectClass: groupOfNames\ncn: {cn}\n{lines}"


def _unit(ou: str, parent: str = SUFFIX) -> str:
    return f"dn: ou={ou},{parent}\nobjectClass: organizationalUnit\nou: {ou}\n"


def directory_ldif(service_password: str) -> str:
    """The test directory: musicians inside the search base, philosophers outside it."""
    musicians, baroque = BASE, f"ou=baroque,{BASE}"
    philosophs, it = f"ou=philosophs,{SUFFIX}", f"ou=it,{SUFFIX}"
    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\n"
        "dc: example\n",
        _unit("musicians"),
        _unit("baroque", BASE),
        _unit("philosophs"),
        _unit("it"),
        _unit("groups"),
        _person("mozart", musicians, "Wolfgang Amadeus Mozart"),
        _person("bach", musicians, "Johann Sebastian Bach"),
        _person("twin", musicians, "Castor Twin"),
        _person("twin", baroque, "Pollux Twin"),
        _person("kant", philosophs, "Immanuel Kant"),
        _person("schopenhauer", philosophs, "Arthur Schopenhauer"),
        _person("serviceaccount", it, "Service Account", service_password),
        _group("composers", [dn("mozart"), dn("bach")]),
        _group("salzburg", [dn("mozart")]),
        _group("critics", [dn("kant", "philosophs")]),
    ]
    return "\n".join(entries)


POLICY = f"cn=default,ou=policies,{SUFFIX}"
"""With ``ppolicy=True``: the default password policy, locking after POLICY_MAX_FAILURE
failed binds within POLICY_INTERVAL seconds."""
POLICY_MAX_FAILURE = 5
POLICY_INTERVAL = 600


def _policy_ldif() -> str:
    return (
        f"{_unit('policies')}\n"
        f"dn: {POLICY}\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\ncn: default\n"
        f"pwdAttribute: userPassword\npwdLockout: TRUE\npwdMaxFailure: {POLICY_MAX_FAILURE}\n"
        f"pwdFailureCountInterval: {POLICY_INTERVAL}\n"
    )


def _slapd_conf(root: Path, key: Path, cert: Path, ca: Path, ppolicy: bool = False) -> str:
    schemas = "".join(
        f"include {SCHEMA_DIR / name}.schema\n"
        for name in ("core", "cosine", "inetorgperson", "nis")
    )
    # slapd 2.5's ppolicy module brings its own schema (pwdAccountLockedTime, pwdPolicy...):
    # without it, those attribute types are unknown to this directory.
    module = "moduleload ppolicy\n" if ppolicy else ""
    overlay = f'overlay ppolicy\nppolicy_default "{POLICY}"\n' if ppolicy else ""
    return f"""{schemas}
modulepath {MODULE_PATH}
moduleload back_mdb
moduleload memberof
{module}pidfile {root / "slapd.pid"}
argsfile {root / "slapd.args"}
# An empty password with a DN is an unauthenticated bind: refused by default, allowed here so
# that tokend's own refusal is what the tests see.
allow bind_anon_dn
TLSCACertificateFile {ca}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
loglevel stats

database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {root / "data"}
overlay memberof
{overlay}access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
"""


@dataclass
class Slapd:
    """One slapd instance in ``root``: its ports, files and process."""

    root: Path
    port: int
    tls_port: int
    ca: TestCA
    wrong_ca: TestCA
    bind_password_file: Path
    process: subprocess.Popen[bytes] | None = None
    loaded: bool = False
    ppolicy: bool = False
    _log_handle: object = field(default=None, repr=False)

    base = BASE
    bind_dn = SERVICE_DN
    suffix = SUFFIX

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url,)

    @property
    def ca_cert_path(self) -> Path:
        return self.ca.path

    @property
    def wrong_ca_cert_path(self) -> Path:
        """A CA that did not sign slapd's certificate."""
        return self.wrong_ca.path

    @property
    def bind_password(self) -> bytes:
        return self.bind_password_file.read_bytes().rstrip(b"\n")

    @property
    def log_path(self) -> Path:
        return self.root / "slapd.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 15) -> None:
        """Start slapd on its ports (the same ones every time); load the data the first time."""
        binary = slapd_binary()
        assert binary, "slapd is not installed"
        assert self.process is None or self.process.poll() is not None, "slapd is running"
        listen = f"{self.url}/ {self.ldaps_url}/"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [binary, "-d", "stats", "-h", listen, "-f", str(self.root / "slapd.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not (port_open(self.port) and port_open(self.tls_port)):
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited ({self.process.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"slapd did not listen within {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.02)
        if not self.loaded:
            self.ldap_tool("ldapadd", directory_ldif(self.bind_password.decode()))
            if self.ppolicy:
                self.ldap_tool("ldapadd", _policy_ldif())
            self.loaded = True

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM by PID and wait (SIGKILL if it does not go)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def ldap_tool(self, tool: str, ldif: str) -> str:
        """Run ``ldapadd``/``ldapmodify`` as the root DN with ``ldif`` on stdin."""
        result = subprocess.run(
            [tool, "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
            input=ldif.encode(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stderr.decode(errors='replace')}"
            )
        return result.stdout.decode(errors="replace")

    def modify(self, ldif: str) -> str:
        """ldapmodify with ``ldif``: change group membership, a password, add or delete entries."""
        return self.ldap_tool("ldapmodify", ldif)

    def set_password(self, entry_dn: str, password: str) -> None:
        self.modify(f"dn: {entry_dn}\nchangetype: modify\nreplace: userPassword\n"
                    f"userPassword: {password}\n")  # fmt: skip

    def add_member(self, cn: str, member: str) -> None:
        self.modify(f"dn: {group_dn(cn)}\nchangetype: modify\nadd: member\nmember: {member}\n")

    def remove_member(self, cn: str, member: str) -> None:
        self.modify(f"dn: {group_dn(cn)}\nchangetype: modify\ndelete: member\nmember: {member}\n")

    def search(self, base: str, text: str, *attributes: str, scope: str = "sub") -> str:
        """ldapsearch as the root DN (operational attributes only when named): LDIF text."""
        result = subprocess.run(
            ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", self.url, "-D", ROOT_DN,
             "-w", ROOT_PASSWORD, "-s", scope, "-b", base, text, *attributes],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"ldapsearch failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def attribute(self, entry_dn: str, name: str) -> str | None:
        """The first value of ``name`` in the entry (operational ones too), or None."""
        prefix = f"{name}: "
        lines = self.search(entry_dn, "(objectClass=*)", name, scope="base").splitlines()
        return next((line[len(prefix) :] for line in lines if line.startswith(prefix)), None)

    def connections(self) -> int:
        """How many connections slapd has accepted so far (from its stats log). slapd's
        listener thread may write an ACCEPT line after the connection's first answer went
        out: to count the connections some requests made, use :meth:`bound_since`."""
        return self.log_text().count(" ACCEPT from ")

    def mark(self) -> int:
        """A place in the log, for :meth:`bound_since`."""
        return len(self.log_text())

    def bound_since(self, mark: int) -> int:
        """How many connections bound since ``mark``: every connection tokend opens starts
        with a bind, and slapd logs a BIND before it answers it (unlike the ACCEPT)."""
        return len(set(re.findall(r"conn=(\d+) op=\d+ BIND ", self.log_text()[mark:])))


def new_slapd(root: Path, ppolicy: bool = False) -> Slapd:
    """Files for a slapd in ``root`` (config, TLS, service password); not started yet. With
    ``ppolicy``, the password policy overlay and a default policy (:data:`POLICY`)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    ca = make_ca(root, "test-ca")
    wrong_ca = make_ca(root, "wrong-ca")
    key, cert = write_server_certificate(root, ca)
    password_file = root / "bind-password"
    password_file.write_text(secrets.token_urlsafe(18) + "\n")
    password_file.chmod(0o600)
    (root / "slapd.conf").write_text(_slapd_conf(root, key, cert, ca.path, ppolicy))
    return Slapd(root, free_port(), free_port(), ca, wrong_ca, password_file, ppolicy=ppolicy)


def start_slapd(root: Path, ppolicy: bool = False) -> Slapd:
    """A private, loaded slapd in ``root`` (the caller stops it)."""
    require_slapd()
    server = new_slapd(root, ppolicy)
    server.start()
    return server


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """One loaded slapd for the session. Tests that stop it or change data must put it back."""
    server = start_slapd(tmp_path_factory.mktemp("slapd"))
    try:
        yield server
    finally:
        server.stop()
