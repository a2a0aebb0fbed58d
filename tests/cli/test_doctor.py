"""``tokend doctor`` against real registry configs, keys and certificates: good ones for 2.x and
3.x (bundle and jwks) pass, each broken one exits 1 with its sentence; where 3.x is checked, its
verdict agrees with tests/signing/registry3.py on a token tokend issues."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from signing.registry3 import Refused, Registry3, StartupError, zero_leading_key
from support import (
    UnixHTTPConnection,
    accepts,
    self_signed,
    stop_process,
    wait_for,
    write_private_key,
)

from tokend.cli import main
from tokend.scope import ResourceScope
from tokend.signing.key_dir import create_key, key_paths
from tokend.signing.key_set import kid_only, single_key_set
from tokend.signing.tokens import TokenIssuer

REALM = "https://auth.example.com/v2/token"


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def issued_by(key: Any, ca_key: Any, ca: x509.Certificate, days: int = 30) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokend signer")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    return builder.sign(ca_key, hashes.SHA256())


@dataclass
class Setup:
    """A key tokend signs with, its certificate chain, and the registry's auth.token."""

    directory: Path
    key: Any = field(default_factory=lambda: zero_leading_key("P-256"))
    chain: tuple[x509.Certificate, ...] = ()
    token: dict[str, Any] = field(default_factory=dict)
    bundle: tuple[x509.Certificate, ...] | None = None
    jwks: list[dict[str, Any]] | None = None
    kid: str = "libtrust"
    with_cert: bool = True
    no_x5c: bool = False

    def __post_init__(self) -> None:
        self.chain = self.chain or (self_signed(self.key),)
        self.token = {"realm": REALM, "service": "registry", "issuer": "tokend"} | self.token

    def write(self) -> list[str]:
        """The files, and the doctor's arguments for them."""
        key_path, cert_path = self.directory / "signer.key", self.directory / "signer.crt"
        write_private_key(key_path, self.key)
        cert_path.write_bytes(pem(*self.chain))
        token = dict(self.token)
        bundle = self.chain[-1:] if self.bundle is None else self.bundle
        if bundle:
            (self.directory / "bundle.crt").write_bytes(pem(*bundle))
            token.setdefault("rootcertbundle", str(self.directory / "bundle.crt"))
        if self.jwks is not None:
            (self.directory / "jwks.json").write_text(json.dumps({"keys": self.jwks}))
            token["jwks"] = str(self.directory / "jwks.json")
        config = {"version": 0.1, "http": {"addr": ":5000"}, "auth": {"token": token}}
        (self.directory / "config.yml").write_text(yaml.safe_dump(config))
        args = ["--registry-config", str(self.directory / "config.yml"), "--key", str(key_path)]
        args += ["--kid", self.kid, "--cert", str(cert_path) if self.with_cert else ""]
        return args + ["--no-x5c"] * self.no_x5c

    def signing_key(self) -> Any:
        cert = self.directory / "signer.crt" if self.with_cert else None
        keys = single_key_set(self.directory / "signer.key", cert, self.kid)
        return (kid_only(keys) if self.no_x5c else keys).signing

    def registry3_accepts(self) -> bool:
        """What tests/signing/registry3.py says of a token tokend issues with this setup."""
        token = yaml.safe_load((self.directory / "config.yml").read_text())["auth"]["token"]
        try:
            bundle = (
                Path(token["rootcertbundle"]).read_bytes() if "rootcertbundle" in token else b""
            )
        except OSError:
            return False
        roots = x509.load_pem_x509_certificates(bundle) if bundle else []
        issued = TokenIssuer(self.signing_key(), "tokend", 300).issue(
            "alice", "registry", (ResourceScope("repository", "a", ("pull",)),), time.time()
        )
        try:
            registry = Registry3.configure(
                token["issuer"],
                token["service"],
                roots=roots,
                jwks=None if self.jwks is None else {"keys": self.jwks},
                signing_algorithms=token.get("signingalgorithms"),
            )
            registry.verify(issued.token, time.time())
        except (Refused, StartupError):
            return False
        return True


def doctor(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["doctor", *argv], stdin=io.StringIO(), stdout=out)
    return code, out.getvalue() + capsys.readouterr().err


def jwk_of(setup: Setup, **extra: Any) -> dict[str, Any]:
    signing = setup.signing_key()
    return {**signing.jose_key.as_dict(private=False), "kid": signing.kid, **extra}


GOOD: dict[str, Callable[[Path], Setup]] = {
    "2.x": lambda d: Setup(d),
    "3.x bundle, x5c": lambda d: Setup(d, kid="thumbprint"),
    "3.x bundle, kid only": lambda d: Setup(d, kid="thumbprint", with_cert=False),
    "3.x P-521 bundle, kid only": lambda d: Setup(
        d, key=zero_leading_key("P-521", 1), kid="thumbprint", with_cert=False
    ),
    "CA-issued chain": lambda d: _ca_setup(d),
}


def certificate_authority(key: Any, days: int = 3650, ca: bool = True) -> x509.Certificate:
    """A self-signed CA certificate (CN=tokend test CA); ``ca=False`` leaves basicConstraints
    out (CN=tokend test), as a plain self-signed certificate does, and Go refuses such a
    certificate as the issuer of another."""
    if not ca:
        return self_signed(key, days=days)
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokend test CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    return builder.sign(key, hashes.SHA256())


def _ca_setup(directory: Path, ca_days: int = 3650, ca: bool = True) -> Setup:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = certificate_authority(ca_key, days=ca_days, ca=ca)
    key = ec.generate_private_key(ec.SECP256R1())
    chain = (issued_by(key, ca_key, ca_cert), ca_cert)
    return Setup(directory, key=key, chain=chain, bundle=(ca_cert,))


@pytest.mark.parametrize("name", list(GOOD))
def test_good_configs_pass(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    setup = GOOD[name](tmp_path)
    version = ["--registry-version", "3"] if "3.x" in name else []
    code, out = doctor(*setup.write(), *version, capsys=capsys)
    assert code == 0, out
    assert "a token tokend issues now would be accepted by distribution" in out
    assert "error" not in out
    assert setup.registry3_accepts()


def test_a_jwks_config_is_checked_for_3x(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = Setup(tmp_path, kid="thumbprint", with_cert=False, bundle=())
    setup.write()
    setup.jwks = [jwk_of(setup)]
    code, out = doctor(*setup.write(), capsys=capsys)
    assert code == 0, out
    assert "for distribution 3.x (auth.token.jwks is a 3.x option)" in out
    assert "names a jwks key" in out
    assert setup.registry3_accepts()


def test_both_versions_are_checked_when_the_config_does_not_say(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = doctor(*Setup(tmp_path).write(), capsys=capsys)
    assert code == 0
    assert "for distribution 2.x and 3.x (nothing in it tells 2.x from 3.x" in out
    assert "ok (2.x and 3.x): tokend's current key" in out


def _stranger(directory: Path) -> Setup:
    return Setup(directory, bundle=(self_signed(ec.generate_private_key(ec.SECP256R1())),))


BROKEN: dict[str, tuple[Callable[[Path], Setup], str, str]] = {
    "issuer": (
        lambda d: Setup(d, token={"issuer": "registry-auth"}),
        "",
        "error (2.x and 3.x): auth.token.issuer is 'registry-auth' but tokend signs iss 'tokend'",
    ),
    "service": (
        lambda d: Setup(d, token={"service": "docker"}),
        "",
        "auth.token.service is 'docker' but tokend accepts --service registry",
    ),
    "realm path": (
        lambda d: Setup(d, token={"realm": "https://auth.example.com/token"}),
        "",
        "set auth.token.realm to https://auth.example.com/v2/token",
    ),
    "realm not a URL": (
        lambda d: Setup(d, token={"realm": "/v2/token"}),
        "",
        "auth.token.realm '/v2/token' is not an absolute URL",
    ),
    "issuer missing": (
        lambda d: Setup(d, token={"issuer": None}),
        "",
        "auth.token.issuer is missing or not a string: the registry does not start",
    ),
    "bundle of another key": (
        _stranger,
        "",
        "leads to no bundle certificate; add the certificate of the current key",
    ),
    "bundle unreadable": (
        lambda d: Setup(d, token={"rootcertbundle": str(d / "missing.crt")}),
        "",
        "auth.token.rootcertbundle: cannot read",
    ),
    "2.x thumbprint kid": (
        lambda d: Setup(d, kid="thumbprint", with_cert=False),
        "2",
        "error (2.x): tokend's current key",
    ),
    "3.x libtrust kid": (
        lambda d: Setup(d, with_cert=False),
        "3",
        "3.x does not know libtrust ids: use --kid thumbprint",
    ),
    "3.x algorithms": (
        lambda d: Setup(d, token={"signingalgorithms": ["RS256"]}),
        "",
        "auth.token.signingalgorithms lacks ES256",
    ),
    "3.x unknown algorithm": (
        lambda d: Setup(d, token={"signingalgorithms": ["ES256", "ES257"]}),
        "",
        "names ES257, which 3.x does not know: the registry does not start",
    ),
    "2.x Ed25519": (
        lambda d: Setup(d, key=ed25519.Ed25519PrivateKey.generate()),
        "2",
        "2.x cannot read Ed25519 keys and does not start",
    ),
    "expired CA in the bundle": (
        lambda d: _ca_setup(d, ca_days=-1),
        "",
        "the bundle's CN=tokend test CA is not valid now",
    ),
    "issuer in the bundle is no CA": (
        lambda d: _ca_setup(d, ca=False),
        "",
        "the bundle's CN=tokend test signed CN=tokend signer but may not sign certificates",
    ),
}


NOT_ABOUT_THE_TOKEN = {"realm path", "realm not a URL"}
"""Findings where the registry would accept the token, but docker never gets one from tokend."""


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_configs_exit_1_with_their_sentence(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, version, sentence = BROKEN[name]
    setup = make(tmp_path)
    code, out = doctor(
        *setup.write(), *(["--registry-version", version] if version else []), capsys=capsys
    )
    assert code == 1, out
    assert sentence in out
    assert "a token tokend issues now would be refused by distribution" in out
    if version != "2" and name not in NOT_ABOUT_THE_TOKEN:
        assert not setup.registry3_accepts()


def test_a_jwks_only_3x_needs_tokens_without_x5c(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 3.x registry with a jwks and no rootcertbundle refuses a token carrying x5c (no
    fallback to the kid); with the daemon's --no-x5c the same key passes."""
    setup = Setup(tmp_path, kid="thumbprint", bundle=())
    setup.write()
    setup.jwks = [jwk_of(setup)]
    code, out = doctor(*setup.write(), capsys=capsys)
    assert code == 1, out
    assert not setup.registry3_accepts()
    setup.no_x5c = True
    code, out = doctor(*setup.write(), capsys=capsys)
    assert code == 0, out
    assert "names a jwks key" in out
    assert setup.registry3_accepts()


def test_jwks_broken_variants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup = Setup(tmp_path, kid="thumbprint", with_cert=False, bundle=())
    setup.write()
    setup.jwks = [jwk_of(setup, kid="another")]
    code, out = doctor(*setup.write(), capsys=capsys)
    assert code == 1
    assert "is the kid of no bundle or jwks key" in out
    assert not setup.registry3_accepts()
    # The zero-leading X written as big.Int.Bytes() would: 31 bytes, the same number.
    jwk = jwk_of(setup)
    x = base64.urlsafe_b64decode(jwk["x"] + "=")
    assert x[0] == 0
    setup.jwks = [{**jwk, "x": base64.urlsafe_b64encode(x[1:]).rstrip(b"=").decode()}]
    code, out = doctor(*setup.write(), capsys=capsys)
    assert code == 1
    assert "coordinates are not 32 bytes long" in out
    assert not setup.registry3_accepts()


def test_a_certificate_close_to_expiry_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    setup = Setup(tmp_path, key=key, chain=(self_signed(key, days=5),))
    code, out = doctor(*setup.write(), capsys=capsys)
    assert code == 0, out
    assert "warning (2.x and 3.x): certificate 1 of" in out
    assert "expires in 4 days" in out or "expires in 5 days" in out


def test_a_config_without_token_auth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = Setup(tmp_path).write()
    (tmp_path / "config.yml").write_text("version: 0.1\nauth:\n  htpasswd: {realm: x}\n")
    code, out = doctor(*args, capsys=capsys)
    assert code == 1
    assert "has no auth.token section" in out


def test_the_shipped_registry_example_passes_with_registry_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config/registry.yml.example names /etc/tokend/certs/RootCA.crt; --registry-root reads it
    where the registry's files are seen from here."""
    certs = tmp_path / "etc" / "tokend" / "certs"
    certs.mkdir(parents=True)
    key, cert = str(certs / "RootCA.key"), str(certs / "RootCA.crt")
    assert main(["dev-cert", "--key", key, "--cert", cert], stdout=io.StringIO()) == 0
    example = str(Path(__file__).parents[2] / "config" / "registry.yml.example")
    args = ("--registry-config", example, "--key", key, "--cert", cert)
    code, out = doctor(*args, capsys=capsys)
    assert code == 1
    assert "auth.token.rootcertbundle: cannot read /etc/tokend/certs/RootCA.crt" in out
    code, out = doctor(*args, "--registry-root", str(tmp_path), capsys=capsys)
    assert code == 0, out
    assert out.endswith("would be accepted by distribution 2.x and 3.x\n")


def test_a_warning_does_not_skip_the_trust_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2.x ignores jwks (a warning); its bundle must still trust the key."""
    setup = _stranger(tmp_path)
    setup.jwks = []
    code, out = doctor(*setup.write(), "--registry-version", "2", capsys=capsys)
    assert "warning (2.x): 2.x ignores auth.token.jwks" in out
    assert code == 1, out
    assert "error (2.x): tokend's current key" in out


def test_a_keys_dir_next_key_not_published_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --keys-dir the current key decides; a next key the bundle lacks is named, so the
    operator publishes it before `tokend keys activate`."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    current = create_key(keys)
    upcoming = create_key(keys)
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(key_paths(keys, current)[1].read_bytes())
    token = {
        "realm": REALM,
        "service": "registry",
        "issuer": "tokend",
        "rootcertbundle": str(bundle),
    }
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"version": 0.1, "auth": {"token": token}}))
    args = ("--registry-config", str(config), "--keys-dir", str(keys))
    code, out = doctor(*args, capsys=capsys)
    assert code == 0, out
    assert f"warning (2.x): the next key {upcoming} is not trusted yet" in out
    bundle.write_bytes(bundle.read_bytes() + key_paths(keys, upcoming)[1].read_bytes())
    code, out = doctor(*args, capsys=capsys)
    assert (code, "next key" in out) == (0, False), out


def registry2_accepts(setup: Setup) -> bool:
    """Whether the real distribution 2.8 (docker-registry), given the setup's auth.token,
    starts and lets a token tokend issues now ping /v2/."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not installed")
    config = yaml.safe_load((setup.directory / "config.yml").read_text())
    with tempfile.TemporaryDirectory(prefix="doctor-") as short:
        sock = Path(short) / "registry.sock"
        config["storage"] = {"filesystem": {"rootdirectory": str(setup.directory / "data")}}
        config["http"] = {"net": "unix", "addr": str(sock), "secret": "s" * 32}
        (setup.directory / "registry.yml").write_text(yaml.safe_dump(config))
        log = setup.directory / "registry.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [binary, "serve", str(setup.directory / "registry.yml")],
                env={"PATH": "/usr/bin:/bin"},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for("the registry", lambda: accepts(sock) or process.poll() is not None)
            if process.poll() is not None:
                return False
            issued = TokenIssuer(setup.signing_key(), "tokend", 300).issue(
                "alice", "registry", (), time.time()
            )
            connection = UnixHTTPConnection(sock)
            try:
                connection.request(
                    "GET", "/v2/", headers={"Authorization": f"Bearer {issued.token}"}
                )
                return connection.getresponse().status == 200
            finally:
                connection.close()
        finally:
            stop_process(process)


EVERY_SETUP = {
    **{name: make for name, make in GOOD.items()},
    **{name: make for name, (make, _, _) in BROKEN.items() if name not in NOT_ABOUT_THE_TOKEN},
}


@pytest.mark.parametrize("name", list(EVERY_SETUP))
def test_the_2x_verdict_is_the_real_registry_2_8s(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every setup above, checked for 2.x, against distribution 2.8.2 itself."""
    setup = EVERY_SETUP[name](tmp_path)
    code, out = doctor(*setup.write(), "--registry-version", "2", capsys=capsys)
    assert (code == 0) == registry2_accepts(setup), out


def test_a_bundle_thumbprint_of_an_ec_key_warns_about_3_0_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """3.0.0 took every EC thumbprint from the curve's generator; 3.1.0 fixed it."""
    setup = Setup(tmp_path, kid="thumbprint", with_cert=False)
    code, out = doctor(*setup.write(), "--registry-version", "3", capsys=capsys)
    assert code == 0, out
    assert "warning (3.x): distribution 3.0.0 does not know this kid" in out
    code, out = doctor(*Setup(tmp_path, kid="thumbprint").write(), capsys=capsys)
    assert "3.0.0" not in out
