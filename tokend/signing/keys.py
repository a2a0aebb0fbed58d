"""The signing key: loading and checking it, naming it, and signing claims with it.

Everything an operator can get wrong about a key (wrong file, encrypted, weak, mismatched with the
certificate, expired, readable by others) is found here at start-up and reported as one sentence.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64encode

from tokend.secret_files import refuse_loose

MIN_RSA_BITS = 2048
KID_FORMS = ("libtrust", "thumbprint")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class KeyConfigError(Exception):
    """The key or certificate cannot be used; the message says which file and why."""


def _spki_der(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def libtrust_key_id(public_key: Any) -> str:
    """distribution 2.x's key id: SHA-256 of the DER SPKI, 30 bytes, base32, groups of four."""
    digest = hashlib.sha256(_spki_der(public_key)).digest()[:30]
    encoded = base64.b32encode(digest).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _jose_key(key: Any) -> ECKey | RSAKey | OKPKey:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return ECKey.import_key(key)
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return RSAKey.import_key(key)
    return OKPKey.import_key(key)


def jwk_thumbprint(public_key: Any) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url); distribution 3.x's kid is
    :func:`registry_thumbprint`, which differs for some EC keys."""
    return str(_jose_key(public_key).thumbprint())


def algorithm_for(key: Any) -> str:
    """The JWS ``alg`` a key implies, or KeyConfigError for keys registries cannot verify."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise KeyConfigError(f"unsupported elliptic curve {key.curve.name}")
        return alg
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyConfigError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS}")
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # RFC 9864 renames it "Ed25519", but registries (go-jose) only know "EdDSA" so far.
        warnings.filterwarnings("ignore", "EdDSA is deprecated", SecurityWarning)
        return "EdDSA"
    raise KeyConfigError(f"unsupported key type {type(key).__name__}")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyConfigError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise KeyConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def _check_permissions(path: Path) -> None:
    try:
        refuse_loose(path, "key")
    except ValueError as e:
        raise KeyConfigError(str(e)) from None


def _load_private_key(path: Path) -> PrivateKey:
    if not path.exists() and not path.is_symlink():
        raise KeyConfigError(
            f"key {path} does not exist; for development, start the daemon with --dev-cert "
            "(or run tokend dev-cert) to create a key pair there"
        )
    data = _read(path, "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyConfigError(f"key {path} is encrypted; give tokend an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyConfigError(f"key {path} is not a PEM private key") from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise KeyConfigError(f"key {path}: unsupported key type {type(key).__name__}")
    return key


def _load_chain(path: Path) -> list[x509.Certificate]:
    data = _read(path, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise KeyConfigError(f"certificate {path} is not a PEM certificate") from None
    return chain


def _check_chain(
    path: Path, chain: Sequence[x509.Certificate], key: PrivateKey, now: float
) -> None:
    leaf = chain[0]
    if _spki_der(leaf.public_key()) != _spki_der(key.public_key()):
        raise KeyConfigError(f"certificate {path} does not match the key")
    moment = datetime.fromtimestamp(now, UTC)
    if moment < leaf.not_valid_before_utc:
        raise KeyConfigError(f"certificate {path} is not valid before {leaf.not_valid_before_utc}")
    if moment > leaf.not_valid_after_utc:
        raise KeyConfigError(f"certificate {path} expired on {leaf.not_valid_after_utc}")


_COMPACT_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
"""One encoder for every token: ``json.dumps`` with options builds a new one per call."""


def _json_segment(value: object) -> bytes:
    """A JWS segment: compact ASCII JSON, base64url without padding (what joserfc emits)."""
    return urlsafe_b64encode(_COMPACT_JSON.encode(value).encode("ascii"))


def _signature_function(alg: str, jose_key: ECKey | RSAKey | OKPKey) -> Callable[[bytes], bytes]:
    """joserfc's JWA signature for ``alg``, looked up once per key rather than once per token.

    ``jws.serialize_compact`` would also re-validate and re-serialise the constant header on
    every call; on the token path that cost as much as the signature itself.
    """
    try:
        algorithm = JWSRegistry.algorithms[alg]
    except KeyError:
        raise KeyConfigError(f"joserfc cannot sign {alg}") from None

    def sign(signing_input: bytes) -> bytes:
        return bytes(algorithm.sign(signing_input, jose_key))

    return sign


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A checked private key with its JWS header fixed once: ``typ``, ``alg``, ``kid``, ``x5c``.

    The header never changes, so its base64url segment (with ``x5c``, over a kilobyte of JSON)
    is serialised once here instead of once per token; the signature function is likewise bound
    to the key once. ``sign`` then only encodes the claims and signs.
    """

    alg: str
    kid: str
    header: dict[str, Any]
    jose_key: ECKey | RSAKey | OKPKey
    chain: tuple[x509.Certificate, ...] = field(default=(), repr=False, compare=False)
    """The certificates sent as ``x5c``, leaf first; empty without a certificate."""
    _header_segment: bytes = field(init=False, repr=False, compare=False)
    _signature: Callable[[bytes], bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_header_segment", _json_segment(self.header) + b".")
        object.__setattr__(self, "_signature", _signature_function(self.alg, self.jose_key))

    def sign(self, claims: dict[str, object]) -> str:
        """The compact JWS ``header.payload.signature`` of the claims."""
        signing_input = self._header_segment + _json_segment(claims)
        signature = urlsafe_b64encode(self._signature(signing_input))
        return (signing_input + b"." + signature).decode("ascii")


def load_signing_key(
    key_path: Path,
    cert_path: Path | None = None,
    kid_form: str = "libtrust",
    now: float | None = None,
    allow_loose_permissions: bool = True,
) -> SigningKey:
    """Load and check the key (and its certificate chain, sent as ``x5c``) for signing."""
    if kid_form not in KID_FORMS:
        raise KeyConfigError(f"unknown kid form {kid_form!r}; use {' or '.join(KID_FORMS)}")
    key = _load_private_key(key_path)
    if not allow_loose_permissions:
        _check_permissions(key_path)
    alg = algorithm_for(key)
    public_key = key.public_key()
    kid = libtrust_key_id(public_key) if kid_form == "libtrust" else registry_thumbprint(public_key)
    header: dict[str, Any] = {"typ": "JWT", "alg": alg, "kid": kid}
    chain: list[x509.Certificate] = []
    if cert_path is not None:
        chain = _load_chain(cert_path)
        _check_chain(cert_path, chain, key, time.time() if now is None else now)
        header["x5c"] = [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
            for cert in chain
        ]
    return SigningKey(alg=alg, kid=kid, header=header, jose_key=_jose_key(key), chain=tuple(chain))


def public_key_of(path: Path) -> Any:
    """The public key in a PEM private key, public key or certificate file."""
    data = _read(path, "file")
    try:
        return x509.load_pem_x509_certificate(data).public_key()
    except ValueError:
        pass
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        pass
    try:
        return serialization.load_pem_private_key(data, password=None).public_key()
    except TypeError:
        raise KeyConfigError(f"{path} is an encrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyConfigError(
            f"{path} holds no PEM certificate, public key or private key"
        ) from None


def key_ids(path: Path) -> dict[str, str]:
    """The key ids of the key in ``path``: both forms tokend sends (``thumbprint`` is the
    registry's, what ``--kid thumbprint`` sends) and the RFC 7638 thumbprint."""
    public_key = public_key_of(path)
    return {
        "libtrust": libtrust_key_id(public_key),
        "thumbprint": registry_thumbprint(public_key),
        "rfc7638": jwk_thumbprint(public_key),
    }


def _go_bytes(number: int) -> bytes:
    """Go's ``big.Int.Bytes()``: big-endian without leading zero bytes."""
    return number.to_bytes((number.bit_length() + 7) // 8, "big")


def registry_thumbprint(public_key: Any) -> str:
    """The kid distribution 3.x gives a ``rootcertbundle`` key (util.go ``getJWKThumbprint``).

    RFC 7638's members and SHA-256, but every number written without leading zero bytes; RFC
    7518 writes EC coordinates at the curve's full size, so for an EC key whose X or Y starts
    with a zero byte (about 1 P-256 key in 128, most P-521 keys) the two differ, and only this
    one is a kid the registry knows. RSA and Ed25519 keys get RFC 7638's thumbprint.
    """
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return jwk_thumbprint(public_key)
    point = public_key.public_numbers()
    x, y = (urlsafe_b64encode(_go_bytes(n)).decode("ascii") for n in (point.x, point.y))
    crv = ECKey.import_key(public_key).as_dict()["crv"]
    members = f'{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}'
    return urlsafe_b64encode(hashlib.sha256(members.encode("ascii")).digest()).decode("ascii")
