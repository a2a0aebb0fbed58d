"""OpenID Connect issuers for the workload-identity tests, served by real nginx over TLS.

One nginx, with a certificate from a test CA of its own, serves several issuers side by side,
each under a path (``https://127.0.0.1:PORT/github``): its discovery document at
``{issuer}/.well-known/openid-configuration`` and its JWKS where the discovery says, as GitHub
Actions and a Kubernetes cluster publish them. Keys rotate by rewriting the JWKS file (nginx
reads it on every request); the issuer goes down and comes back by stopping and starting nginx
by its PID. Tokens are minted here in the claim shapes each platform really sends (SPEC.md,
"Platform identity tokens"), signed with the issuer's RS256 or ES256 key, and so are the forged
ones the attack tests present: those are built by hand, as no JOSE library would sign them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from e2e.stack import Running, wait_until
from support import free_port, port_open

JWKS_MAX_AGE = 60
"""The ``Cache-Control: max-age`` the issuers send with their keys (GitHub sends about this)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(number: int, length: int | None = None) -> str:
    size = length or (number.bit_length() + 7) // 8
    return b64url(number.to_bytes(size, "big"))


@dataclass(frozen=True)
class SigningKey:
    """An issuer's private key, its ``kid`` and the JWS algorithm it signs with."""

    kid: str
    alg: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def rs256(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def es256(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, str]:
        """The public key as the issuer publishes it in its JWKS."""
        public = self.private.public_key()
        common = {"kid": self.kid, "alg": self.alg, "use": "sig"}
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            return {"kty": "RSA", **common, "n": _uint(numbers.n), "e": _uint(numbers.e)}
        point = public.public_numbers()
        return {
            "kty": "EC",
            **common,
            "crv": "P-256",
            "x": _uint(point.x, 32),
            "y": _uint(point.y, 32),
        }

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, signing_input: bytes) -> bytes:
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A JWS compact serialisation of ``header`` and ``claims`` with ``signature`` as given."""
    head = b64url(json.dumps(header, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{body}.{b64url(signature)}"


def signed(key: SigningKey, claims: dict[str, Any], **header: Any) -> str:
    """``claims`` signed by ``key``; ``header`` adds or overrides header fields (``kid=None``
    drops the kid)."""
    fields: dict[str, Any] = {"typ": "JWT", "alg": key.alg, "kid": key.kid, **header}
    fields = {name: value for name, value in fields.items() if value is not None}
    unsigned = compact(fields, claims).rsplit(".", 1)[0]
    return f"{unsigned}.{b64url(key.sign(unsigned.encode('ascii')))}"


def unsigned_token(claims: dict[str, Any]) -> str:
    """``alg: none``: the oldest forgery there is."""
    return compact({"typ": "JWT", "alg": "none"}, claims)


def hmac_with_public_key(key: SigningKey, claims: dict[str, Any]) -> str:
    """HS256 keyed with the issuer's public key: a verifier that lets the token choose the
    algorithm would check it with the public key as the HMAC secret, and accept it."""
    unsigned = compact({"typ": "JWT", "alg": "HS256", "kid": key.kid}, claims).rsplit(".", 1)[0]
    mac = hmac.new(key.public_pem(), unsigned.encode("ascii"), hashlib.sha256).digest()
    return f"{unsigned}.{b64url(mac)}"


def github_claims(
    issuer: str,
    audience: str,
    repository: str = "acme/app",
    ref: str = "refs/heads/main",
    lifetime: int = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """A GitHub Actions job's ID token as ``core.getIDToken(audience)`` returns it."""
    iat = int(now if now is not None else time.time())
    owner = repository.split("/", 1)[0]
    kind, _, name = ref.removeprefix("refs/").partition("/")
    ref_type = "branch" if kind == "heads" else "tag"
    return {
        "jti": str(uuid.uuid4()),
        "sub": f"repo:{repository}:ref:{ref}",
        "aud": audience,
        "ref": ref,
        "sha": hashlib.sha1(ref.encode()).hexdigest(),  # noqa: S324 - a commit id's shape
        "repository": repository,
        "repository_owner": owner,
        "repository_owner_id": "65432",
        "repository_visibility": "private",
        "repository_id": "123456",
        "run_id": "9876543210",
        "run_number": "42",
        "run_attempt": "1",
        "actor": "octocat",
        "actor_id": "583231",
        "workflow": "release",
        "workflow_ref": f"{repository}/.github/workflows/release.yml@{ref}",
        "job_workflow_ref": f"{repository}/.github/workflows/release.yml@{ref}",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_protected": "true" if ref_type == "branch" and name == "main" else "false",
        "ref_type": ref_type,
        "runner_environment": "github-hosted",
        "iss": issuer,
        "nbf": iat - 5,
        "iat": iat,
        "exp": iat + lifetime,
    }


def kubernetes_claims(
    issuer: str,
    audience: str,
    namespace: str = "builds",
    service_account: str = "pusher",
    lifetime: int = 3600,
    now: float | None = None,
) -> dict[str, Any]:
    """A projected service-account token as the kubelet mounts it (``audience`` set in the
    projected volume): ``aud`` is a list, the pod's details sit under ``kubernetes.io``."""
    iat = int(now if now is not None else time.time())
    return {
        "aud": [audience],
        "exp": iat + lifetime,
        "iat": iat,
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-a", "uid": str(uuid.uuid4())},
            "pod": {"name": f"{service_account}-7d9f8b-x2x4q", "uid": str(uuid.uuid4())},
            "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
            "warnafter": iat + lifetime - 600,
        },
        "nbf": iat,
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
    }


@dataclass
class Issuer:
    """One issuer served by :class:`IssuerServer`: its URL, its keys and their JWKS file."""

    name: str
    url: str
    root: Path
    keys: list[SigningKey]
    jwks_path: str
    """The JWKS's URL path under the issuer (GitHub: ``.well-known/jwks``, Kubernetes:
    ``openid/v1/jwks``)."""

    @property
    def key(self) -> SigningKey:
        """The key it signs with now: the newest."""
        return self.keys[-1]

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}/{self.jwks_path}"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self.keys]}

    def publish(self) -> None:
        """Write discovery and JWKS, each replaced whole (never a half-written file served)."""
        discovery = {
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf"],
            "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
            "scopes_supported": ["openid"],
        }
        _replace(self.root / ".well-known" / "openid-configuration", discovery)
        _replace(self.root / self.jwks_path, self.jwks())

    def rotate(self, key: SigningKey) -> None:
        """A new signing key published beside the old ones, as issuers rotate."""
        self.keys.append(key)
        self.publish()

    def mint(self, claims: dict[str, Any], key: SigningKey | None = None, **header: Any) -> str:
        return signed(key or self.key, claims, **header)

    def github(self, audience: str, **options: Any) -> str:
        return self.mint(github_claims(self.url, audience, **options))

    def kubernetes(self, audience: str, **options: Any) -> str:
        return self.mint(kubernetes_claims(self.url, audience, **options))


def _replace(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=1))
    os.replace(temporary, path)


@dataclass
class IssuerServer:
    """nginx serving every issuer's files over TLS on 127.0.0.1, with a CA of its own."""

    root: Path
    port: int = field(default_factory=free_port)
    issuers: dict[str, Issuer] = field(default_factory=dict)
    running: Running | None = None

    @property
    def ca_file(self) -> Path:
        """The test CA's certificate: the trust's ``ca_file``."""
        return self.root / "ca.crt"

    @property
    def www(self) -> Path:
        return self.root / "www"

    def add(self, name: str, key: SigningKey, jwks_path: str = ".well-known/jwks") -> Issuer:
        issuer = Issuer(
            name, f"https://127.0.0.1:{self.port}/{name}", self.www / name, [key], jwks_path
        )
        issuer.publish()
        self.issuers[name] = issuer
        return issuer

    def start(self) -> Running:
        """nginx in the foreground, waited for until it answers; stopped by :meth:`stop`."""
        assert self.running is None, "the issuers' nginx runs already"
        if not self.ca_file.exists():
            _write_ca_and_server_certificate(self.root)
        for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.root / temp).mkdir(exist_ok=True)
        (self.root / "nginx.pid").unlink(missing_ok=True)
        config = self.root / "nginx.conf"
        config.write_text(self._config())
        log = self.root / "error.log"
        with log.open("ab") as output:
            process = subprocess.Popen(
                ["nginx", "-c", str(config), "-p", str(self.root)],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.running = Running("issuer nginx", process, log, (self.root / "access.log",))

        def ready() -> bool:
            assert process.poll() is None, f"the issuers' nginx exited:\n{self.running.tail()}"
            return (self.root / "nginx.pid").exists() and port_open(self.port)

        wait_until(ready, f"the issuers' nginx on {self.port}")
        return self.running

    def stop(self) -> None:
        """The issuer goes down: nginx stopped by its PID, the port refusing connections."""
        if self.running is not None:
            running, self.running = self.running, None
            running.stop()

    def _config(self) -> str:
        return f"""daemon off;
user root;
worker_processes 1;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {self.root}/access.log;
    client_body_temp_path {self.root}/client_body;
    proxy_temp_path {self.root}/proxy;
    fastcgi_temp_path {self.root}/fastcgi;
    uwsgi_temp_path {self.root}/uwsgi;
    scgi_temp_path {self.root}/scgi;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.root}/server.crt;
        ssl_certificate_key {self.root}/server.key;
        root {self.www};
        default_type application/json;
        location / {{
            add_header Cache-Control "public, max-age={JWKS_MAX_AGE}";
        }}
    }}
}}
"""

    def fetches(self, path: str) -> int:
        """How many GETs of ``path`` nginx answered (its access log): who fetched the keys."""
        log = self.root / "access.log"
        if not log.exists():
            return 0
        return sum(f'"GET {path} ' in line for line in log.read_text().splitlines())


CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _write_ca_and_server_certificate(directory: Path) -> None:
    """A test CA and the server certificate it signs for 127.0.0.1 and localhost."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokend e2e issuer CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
