"""Signing keys that rotate and certificates that renew without a restart of tokend (issue 24),
against the real distribution 2.8.2 behind nginx.

The README's "Rotating the signing key" runs as written: its commands make the keys directory,
publish the bundle to the registry's ``rootcertbundle`` and restart the registry (the only
restart: a command the test does not know fails it), switch signing while skopeo pushes and
pulls in a loop (zero failed operations), and retire the old key, which revokes the refresh
tokens it signed. A second stack signs with ``--key``/``--cert`` whose certificate a CA in the
registry's bundle issued: a renewed certificate is taken live, a broken one refused.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from e2e.conftest import STACK_KEY, _require
from e2e.engines import Engine, missing_engine_binaries, start_engine
from e2e.stack import (
    CLEAN_PATH,
    SERVICE,
    CommandResult,
    Stack,
    launch_stack,
    missing_binaries,
    new_stack,
    wait_until,
)
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry
from support import REPO, doc_section, write_private_key

pytestmark = pytest.mark.e2e

SECTION = "Rotating the signing key"
README_KEYS_DIR = "/etc/tokend/keys"
README_BUNDLE = "/etc/tokend/certs/RootCA.crt"
README_JWKS = "/etc/tokend/certs/tokend.jwks"
REGISTRY_RESTART = "sudo systemctl restart docker-registry"
CREDS = "bar:bar"
LOOP_REPOSITORY = "rotation/loop"


# --- what the tokens carry ------------------------------------------------------------------


def _segment(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def header(token: str) -> dict[str, Any]:
    return dict(_segment(token.split(".")[0]))


def leaf_of(token: str) -> bytes:
    """The DER of the certificate the token's x5c starts with: the key that signed it."""
    return base64.b64decode(header(token)["x5c"][0])


def certificates(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def anonymous_token(stack: Stack) -> str:
    """A token for what anyone may pull: no bcrypt, so it can be asked for in a polling loop."""
    return stack.token("repository:public/hello:pull")


def registry_accepts(stack: Stack, token: str, repository: str = LOOP_REPOSITORY) -> bool:
    status, _, _ = stack.request(
        f"/v2/{repository}/tags/list", {"Authorization": f"Bearer {token}"}
    )
    return status == 200


# --- identity tokens, as docker keeps them ---------------------------------------------------


def offline_login(stack: Stack) -> str:
    """GET the realm as ``docker login`` does (Basic, ``offline_token=true``): its refresh token."""
    parameters = {"account": "bar", "client_id": "tokend-e2e", "offline_token": "true"}
    basic = base64.b64encode(CREDS.encode()).decode()
    status, body = stack.https(
        f"/v2/token?{urlencode({**parameters, 'service': SERVICE})}",
        {"Authorization": f"Basic {basic}"},
    )
    assert status == 200 and body.get("refresh_token"), body
    return str(body["refresh_token"])


def refresh_grant(stack: Stack, refresh_token: str) -> tuple[int, Any]:
    """The POST docker sends with its identity token for each operation."""
    return stack.post_form(
        "/v2/token",
        [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("service", SERVICE),
            ("client_id", "tokend-e2e"),
            ("scope", f"repository:{LOOP_REPOSITORY}:pull"),
        ],
    )


def identity_pull(stack: Stack, refresh_token: str) -> CommandResult:
    """skopeo with an auth file that holds the identity token and no password (E2E.md)."""
    home = stack.client_home(f"identity-{time.time_ns()}")
    entry = {"auth": base64.b64encode(b"bar:").decode(), "identitytoken": refresh_token}
    (home / "auth.json").write_text(json.dumps({"auths": {stack.registry: entry}}))
    return stack.skopeo(
        "inspect", "--tls-verify=false", f"docker://{stack.registry}/{LOOP_REPOSITORY}", home=home
    )


# --- the runbook ----------------------------------------------------------------------------


def runbook_block(name: str) -> list[str]:
    """The command lines of one ``<!-- rotation NAME -->`` block of the README's section."""
    found = re.search(
        rf"<!-- rotation {re.escape(name)} -->\n( *)```sh\n(.*?)^\1```",
        doc_section(SECTION),
        re.S | re.M,
    )
    assert found, f"no {name} block in the README's {SECTION!r}"
    return [line for line in textwrap.dedent(found[2]).splitlines() if line.strip()]


@dataclass
class Runbook:
    """Runs the README's commands on the test's stack: its paths become the stack's, ``tokend``
    is this checkout's tool, and restarting the registry restarts the stack's registry."""

    stack: Stack
    keys_dir: Path
    environ: dict[str, str] = field(default_factory=dict)

    @property
    def paths(self) -> dict[str, str]:
        return {
            README_KEYS_DIR: str(self.keys_dir),
            README_BUNDLE: str(self.stack.certs / "RootCA.crt"),
            README_JWKS: str(self.stack.certs / "tokend.jwks"),
        }

    def run(self, name: str) -> None:
        for line in runbook_block(name):
            self.command(line)

    def command(self, line: str) -> None:
        if line == REGISTRY_RESTART:
            self.stack.restart_registry()
            return
        exported = re.fullmatch(r"export (TOKEND_\w+)=(\S+)", line)
        if exported:
            self.environ[exported[1]] = self.paths.get(exported[2], exported[2])
            return
        assert line.startswith("tokend keys "), (
            f"the runbook runs {line!r}: not a tokend keys command"
        )
        for path, replacement in self.paths.items():
            line = line.replace(path, replacement)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", line],
            cwd=self.stack.root,
            env={
                "PATH": f"{self.shim()}:{CLEAN_PATH}",
                "HOME": str(self.stack.root),
                **self.environ,
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"

    def shim(self) -> Path:
        """A directory holding ``tokend``: this checkout's tool, as the package installs it."""
        directory = self.stack.root / "bin"
        tool = directory / "tokend"
        if not tool.exists():
            directory.mkdir(exist_ok=True)
            tool.write_text(
                f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} "
                f'exec {shlex.quote(sys.executable)} -m tokend "$@"\n'
            )
            tool.chmod(0o755)
        return directory

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.keys_dir / "keys.json").read_text()))

    def certificate(self, name: str) -> x509.Certificate:
        return certificates(self.keys_dir / f"{name}.crt")[0]

    def bundle(self) -> list[bytes]:
        return [der(c) for c in certificates(self.stack.certs / "RootCA.crt")]

    def jwks_verifies(self, token: str) -> bool:
        """What distribution 3.x does for a token by its kid: the JWKS key of that kid verifies
        it (the 3.x block writes the file the registry is given as auth.token.jwks)."""
        self.run("3.x")
        keys = KeySet.import_key_set(json.loads((self.stack.certs / "tokend.jwks").read_text()))
        kid = header(token)["kid"]
        if kid not in {key.kid for key in keys}:
            return False
        registry = JWSRegistry(algorithms=[header(token)["alg"]])
        registry.max_header_length = 16384  # the x5c chain makes the header a few kilobytes
        jwt.decode(token, keys, registry=registry)
        return True


@pytest.fixture(scope="module")
def rotation(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Runbook]:
    """A stack whose tokend signs from a keys directory the README's set-up block made, and
    whose registry trusts the bundle that block wrote; ``--kid thumbprint`` as for 3.x."""
    _require(missing_binaries(), "docker-registry nginx skopeo")
    root = tmp_path_factory.mktemp("rotation")
    keys_dir = root / "keys"
    stack = new_stack(
        root,
        tokend_args=("--kid", "thumbprint"),
        signing_args=("--keys-dir", str(keys_dir)),
    )
    runbook = Runbook(stack, keys_dir)
    with logs_reported(request, stack):
        stack.certs.mkdir(parents=True)
        runbook.run("set-up")
        assert runbook.environ == {"TOKEND_KEYS_DIR": str(keys_dir)}
        try:
            launch_stack(stack)
            yield runbook
        finally:
            stack.stop()


@pytest.fixture(scope="module")
def rotation_engine(rotation: Runbook) -> Iterator[Engine]:
    """dockerd (with its containerd) for the rotation stack's registry: a real docker login."""
    _require(missing_engine_binaries(), "docker.io")
    engine = start_engine(rotation.stack.root / "engine", rotation.stack)
    rotation.stack.processes.append(engine.running)  # its log in failure reports
    try:
        yield engine
    finally:
        engine.stop()


@contextmanager
def logs_reported(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    """While it lasts, a failing test's report shows this stack's logs (conftest's hook), then
    the session stack's again."""
    stash = request.config.stash
    before = stash.get(STACK_KEY, None)
    stash[STACK_KEY] = stack
    try:
        yield
    finally:
        if before is None:
            del stash[STACK_KEY]
        else:
            stash[STACK_KEY] = before


@dataclass
class Operation:
    kind: str
    started: float
    ended: float
    result: CommandResult


class ClientLoop(threading.Thread):
    """skopeo pushing a new image and pulling it back, again and again, until told to stop."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(name="client loop", daemon=True)
        self.stack = stack
        self.done: list[Operation] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.monotonic()
            pushed = self.stack.push(self.stack.new_image(), LOOP_REPOSITORY, CREDS)
            self.done.append(Operation("push", started, time.monotonic(), pushed))
            started = time.monotonic()
            pulled, _ = self.stack.pull(LOOP_REPOSITORY, CREDS)
            self.done.append(Operation("pull", started, time.monotonic(), pulled))

    def succeeded_since(self, moment: float) -> int:
        return sum(1 for op in list(self.done) if op.started >= moment and op.result.ok)

    def across(self, moment: float) -> int:
        """Operations under way at that moment: begun with one key, ended with the other."""
        return sum(1 for op in list(self.done) if op.started < moment < op.ended)

    def failures(self) -> list[str]:
        return [f"{op.kind}: {op.result.stderr}" for op in self.done if not op.result.ok]


def tokend_pid(stack: Stack) -> int:
    return next(p.process.pid for p in stack.processes if p.name == "tokend")


def test_the_runbook_rotates_the_key_under_load_and_logs_nobody_out(
    rotation: Runbook, rotation_engine: Engine
) -> None:
    stack, engine = rotation.stack, rotation_engine
    pid = tokend_pid(stack)
    old = rotation.state()["current"]
    assert rotation.bundle() == [der(rotation.certificate(old))]
    assert leaf_of(anonymous_token(stack)) == der(rotation.certificate(old))
    seeded = stack.push(stack.new_image(), LOOP_REPOSITORY, CREDS)
    assert seeded.ok, seeded.stderr
    identity_token = offline_login(stack)  # a docker login before the rotation
    # And a real one: docker keeps the identity token tokend gave it, and pushes with it.
    login = engine.login("before-rotation", "bar", "bar")
    assert login.ok, login.stderr
    docker_config = json.loads((engine.root / "clients/before-rotation/config.json").read_text())
    assert docker_config["auths"][stack.registry].get("identitytoken"), docker_config
    reference = f"{stack.registry}/rotation/docker:latest"
    engine.load(stack.new_image(), reference)
    pushed = engine.docker("before-rotation", "push", reference)
    assert pushed.ok, pushed.stderr
    assert rotation.jwks_verifies(anonymous_token(stack))

    # 1. Publish the next key: the registry trusts both, tokend still signs with the old one.
    rotation.run("publish")
    new = rotation.state()["next"]
    assert new and new != old
    assert sorted(rotation.bundle()) == sorted(
        [der(rotation.certificate(old)), der(rotation.certificate(new))]
    )
    token = anonymous_token(stack)
    assert leaf_of(token) == der(rotation.certificate(old))
    assert rotation.jwks_verifies(token)

    # 2. Switch signing while a client pushes and pulls: not one operation fails.
    loop = ClientLoop(stack)
    loop.start()
    try:
        wait_until(lambda: loop.succeeded_since(0) >= 2, "the client loop before the switch", 120)
        assert not loop.failures(), loop.failures()
        activated = time.monotonic()
        rotation.run("activate")
        assert rotation.state()["current"] == new
        wait_until(
            lambda: leaf_of(anonymous_token(stack)) == der(rotation.certificate(new)),
            "tokend to sign with the new key",
        )
        switched = time.monotonic()
        wait_until(
            lambda: loop.succeeded_since(switched) >= 4 or bool(loop.failures()),
            "the client loop after the switch",
            120,
        )
    finally:
        loop.halt.set()
        loop.join(timeout=180)
    assert not loop.is_alive()
    assert not loop.failures(), loop.failures()
    assert loop.succeeded_since(switched) >= 4
    assert loop.across(activated) + loop.across(switched) >= 1, "no operation spanned the switch"
    assert rotation.jwks_verifies(anonymous_token(stack))

    # The login from before the rotation still works: its refresh token, signed by the old key,
    # gets access tokens signed by the new one, which the registry accepts.
    status, body = refresh_grant(stack, identity_token)
    assert status == 200, body
    assert leaf_of(body["access_token"]) == der(rotation.certificate(new))
    assert registry_accepts(stack, body["access_token"])
    pulled = identity_pull(stack, identity_token)
    assert pulled.ok, pulled.stderr
    assert engine.docker("before-rotation", "rmi", reference).ok
    docker_pull = engine.docker("before-rotation", "pull", reference)
    assert docker_pull.ok, docker_pull.stderr

    # 3. Retire the old key: the bundle holds the new one alone, and the old key's refresh
    # tokens are revoked.
    rotation.run("retire")
    assert rotation.state()["previous"] == []
    assert rotation.bundle() == [der(rotation.certificate(new))]
    wait_until(lambda: refresh_grant(stack, identity_token)[0] == 400, "the old key's revocation")
    status, body = refresh_grant(stack, identity_token)
    assert body["error"] == "invalid_grant", body
    refused = identity_pull(stack, identity_token)
    assert not refused.ok, refused.stdout
    assert engine.docker("before-rotation", "rmi", reference).ok
    docker_refused = engine.docker("before-rotation", "pull", reference)
    assert not docker_refused.ok, docker_refused.stdout
    assert "invalid_grant" in docker_refused.stderr, docker_refused.stderr
    token = stack.token(f"repository:{LOOP_REPOSITORY}:pull", "bar", "bar")
    assert leaf_of(token) == der(rotation.certificate(new))
    assert registry_accepts(stack, token)
    assert rotation.jwks_verifies(token)
    pulled_again, _ = stack.pull(LOOP_REPOSITORY, CREDS)
    assert pulled_again.ok, pulled_again.stderr

    # No restart of tokend anywhere: the daemon that started is the one that serves.
    assert tokend_pid(stack) == pid
    assert next(p for p in stack.processes if p.name == "tokend").process.poll() is None


def test_the_runbook_restarts_only_the_registry() -> None:
    lines = [line for name in ("set-up", "publish", "activate", "retire", "3.x")
             for line in runbook_block(name)]  # fmt: skip
    restarts = [line for line in lines if "restart" in line or "twistd" in line]
    assert restarts == [REGISTRY_RESTART, REGISTRY_RESTART]
    assert all(
        line == REGISTRY_RESTART or line.startswith(("tokend keys ", "export TOKEND_"))
        for line in lines
    ), lines


# --- live certificate renewal (--key/--cert, certificates from a CA) ---------------------------


@dataclass
class Authority:
    """A CA the registry's bundle holds, and the key tokend signs with."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    signing_key: ec.EllipticCurvePrivateKey

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey | None = None,
        not_before: timedelta = timedelta(days=-1),
        not_after: timedelta = timedelta(days=30),
    ) -> x509.Certificate:
        """A certificate for tokend's key (or another), valid from now + the two offsets."""
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokend e2e")]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key or self.signing_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + not_before)
            .not_valid_after(now + not_after)
            .sign(self.key, hashes.SHA256())
        )


def new_authority() -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokend e2e CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, certificate, ec.generate_private_key(ec.SECP256R1()))


@dataclass
class Renewal:
    stack: Stack
    authority: Authority
    cert_path: Path

    def replace(self, certificate: x509.Certificate) -> int:
        """Write the certificate file as renewal tools do (a new file renamed over the old) and
        return the tokend log's offset from before."""
        log = self.stack.root / "tokend.log"
        offset = log.stat().st_size if log.exists() else 0
        chain = [certificate, self.authority.certificate]
        temporary = self.cert_path.with_name(".tokend.crt.new")
        temporary.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        os.replace(temporary, self.cert_path)
        return offset


@pytest.fixture(scope="module")
def renewal(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Renewal]:
    """tokend on --key/--cert with a certificate from a CA; the registry's bundle is the CA."""
    _require(missing_binaries(), "docker-registry nginx skopeo")
    root = tmp_path_factory.mktemp("renewal")
    certs = root / "certs"
    key_path, cert_path = certs / "tokend.key", certs / "tokend.crt"
    stack = new_stack(root, signing_args=("--key", str(key_path), "--cert", str(cert_path)))
    authority = new_authority()
    certs.mkdir(parents=True)
    write_private_key(key_path, authority.signing_key)
    renewal = Renewal(stack, authority, cert_path)
    renewal.replace(authority.issue())
    (certs / "RootCA.crt").write_bytes(
        authority.certificate.public_bytes(serialization.Encoding.PEM)
    )
    with logs_reported(request, stack):
        try:
            launch_stack(stack)
            yield renewal
        finally:
            stack.stop()


def test_a_renewed_certificate_is_sent_at_once_and_accepted(renewal: Renewal) -> None:
    stack = renewal.stack
    first = certificates(renewal.cert_path)[0]
    assert leaf_of(anonymous_token(stack)) == der(first)
    pushed = stack.push(stack.new_image(), LOOP_REPOSITORY, CREDS)
    assert pushed.ok, pushed.stderr

    renewed = renewal.authority.issue(not_after=timedelta(days=90))
    renewal.replace(renewed)
    wait_until(
        lambda: leaf_of(anonymous_token(stack)) == der(renewed), "tokend to send the renewal"
    )
    token = stack.token(f"repository:{LOOP_REPOSITORY}:pull", "bar", "bar")
    assert [base64.b64decode(c) for c in header(token)["x5c"]] == [
        der(renewed),
        der(renewal.authority.certificate),
    ]
    assert registry_accepts(stack, token)
    pulled, _ = stack.pull(LOOP_REPOSITORY, CREDS)
    assert pulled.ok, pulled.stderr


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("does not match the key", id="mismatched"),
        pytest.param("expired on", id="expired"),
    ],
)
def test_a_broken_replacement_is_refused_and_the_old_certificate_kept(
    renewal: Renewal, reason: str
) -> None:
    stack = renewal.stack
    kept = leaf_of(anonymous_token(stack))
    if reason == "does not match the key":
        replacement = renewal.authority.issue(ec.generate_private_key(ec.SECP256R1()).public_key())
    else:
        replacement = renewal.authority.issue(
            not_before=timedelta(days=-60), not_after=timedelta(days=-1)
        )
    offset = renewal.replace(replacement)
    # The refusal names the file and the reason, and says the key in force stays.
    refusal = f"failed, keeping key .*: certificate {re.escape(str(renewal.cert_path))} {reason}"
    wait_until(
        lambda: re.search(refusal, stack.tokend_log_since(offset)) is not None,
        "tokend to log why it refused the new certificate",
    )
    token = stack.token(f"repository:{LOOP_REPOSITORY}:pull", "bar", "bar")
    assert leaf_of(token) == kept
    assert registry_accepts(stack, token)
    pulled, _ = stack.pull(LOOP_REPOSITORY, CREDS)
    assert pulled.ok, pulled.stderr
