"""The signing key: key ids against independent computations, signatures, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jws
from joserfc.errors import SecurityWarning
from support import load_certificate, new_private_key, self_signed, verify_jwt, write_key_pair

from tokend.signing.devcert import ensure_dev_cert, write_dev_cert
from tokend.signing.keys import (
    KeyConfigError,
    jwk_thumbprint,
    key_ids,
    libtrust_key_id,
    load_signing_key,
)

# The example key of distribution's docs/spec/auth/jwt.md, with the ids the SPEC quotes.
JWT_MD_X = "m7zUpx3b-zmVE5cymSs64POG9QcyEpJaYCD82-549_Q"
JWT_MD_Y = "dU3biz8sZ_8GPB-odm8Wxz3lNDr1xcAQQPQaOcr1fmc"
JWT_MD_LIBTRUST = "PYYO:TEWU:V7JH:26JV:AQTZ:LJC3:SXVJ:XGHA:34F2:2LAQ:ZRMK:Z7Q6"
JWT_MD_THUMBPRINT = "8qjioA3ZA7ti2JIE7c-U8smBFuZolQZvhSHDPU3hhB8"


def _b64int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def jwt_md_public_key() -> ec.EllipticCurvePublicKey:
    numbers = ec.EllipticCurvePublicNumbers(_b64int(JWT_MD_X), _b64int(JWT_MD_Y), ec.SECP256R1())
    return numbers.public_key()


def independent_libtrust(public_key: object) -> str:
    der = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    assert len(b32) == 48
    return ":".join(b32[i : i + 4] for i in range(0, 48, 4))


def test_key_ids_match_the_distribution_spec_example() -> None:
    key = jwt_md_public_key()
    assert libtrust_key_id(key) == JWT_MD_LIBTRUST
    assert jwk_thumbprint(key) == JWT_MD_THUMBPRINT


def test_thumbprint_follows_rfc_7638_for_rsa() -> None:
    key = new_private_key("rsa").public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    numbers = key.public_numbers()

    def b64(n: int) -> str:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    members = json.dumps(
        {"e": b64(numbers.e), "kty": "RSA", "n": b64(numbers.n)}, separators=(",", ":")
    )
    expected = base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=")
    assert jwk_thumbprint(key) == expected.decode()


@pytest.mark.parametrize(
    ("kind", "alg"), [("p256", "ES256"), ("p384", "ES384"), ("rsa", "RS256"), ("ed25519", "EdDSA")]
)
def test_tokens_verify_with_the_certificate_and_carry_kid_and_x5c(
    tmp_path: Path, kind: str, alg: str
) -> None:
    key_path, cert_path = write_key_pair(tmp_path, kind)
    certificate = load_certificate(cert_path)
    signing_key = load_signing_key(key_path, cert_path, allow_loose_permissions=False)
    token = signing_key.sign({"iss": "i", "access": []})

    header, claims = verify_jwt(token, certificate)
    assert claims == {"iss": "i", "access": []}
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert header == {
        "typ": "JWT",
        "alg": alg,
        "kid": independent_libtrust(certificate.public_key()),
        "x5c": [base64.b64encode(der).decode()],
    }


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa", "ed25519"])
def test_signing_with_the_cached_header_matches_joserfc_serialize_compact(
    tmp_path: Path, kind: str
) -> None:
    """The header segment is serialised once per key; tokens must not differ from what
    joserfc's own compact serialisation makes of the same header and claims."""
    key_path, cert_path = write_key_pair(tmp_path, kind)
    signing_key = load_signing_key(key_path, cert_path, allow_loose_permissions=False)
    claims = {"iss": "i", "sub": "ü", "access": [{"type": "repository", "name": "a/b"}]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # EdDSA's name, see tokend.signing.keys
        reference = jws.serialize_compact(
            dict(signing_key.header),
            json.dumps(claims, separators=(",", ":")).encode(),
            signing_key.jose_key,
            algorithms=[signing_key.alg],
        )
    token = signing_key.sign(claims)
    assert token.split(".")[:2] == reference.split(".")[:2]
    for first, second in ((token, reference), (reference, token)):
        assert verify_jwt(first, load_certificate(cert_path)) == verify_jwt(
            second, load_certificate(cert_path)
        )


def test_thumbprint_kid_and_no_certificate(tmp_path: Path) -> None:
    key_path, cert_path = write_key_pair(tmp_path)
    signing_key = load_signing_key(key_path, None, "thumbprint")
    header, _ = verify_jwt(signing_key.sign({}), load_certificate(cert_path))
    assert header == {
        "typ": "JWT",
        "alg": "ES256",
        "kid": jwk_thumbprint(load_certificate(cert_path).public_key()),
    }


def test_key_ids_reads_keys_and_certificates_alike(tmp_path: Path) -> None:
    key_path, cert_path = write_key_pair(tmp_path)
    assert key_ids(key_path) == key_ids(cert_path)
    assert key_ids(cert_path)["libtrust"] == independent_libtrust(
        load_certificate(cert_path).public_key()
    )


def _write_key(path: Path, key: object, password: bytes | None = None) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    )
    path.chmod(0o600)
    return path


def test_refusals_name_the_file_and_the_reason(tmp_path: Path) -> None:
    key_path, cert_path = write_key_pair(tmp_path)
    other_key, other_cert = write_key_pair(tmp_path, "p384")

    cases: list[tuple[Path, Path | None, str]] = [
        (tmp_path / "missing.key", None, "missing.key does not exist"),
        (cert_path, None, "is not a PEM private key"),
        (_write_key(tmp_path / "enc.key", new_private_key("p256"), b"pw"), None, "is encrypted"),
        (
            _write_key(tmp_path / "k1.key", ec.generate_private_key(ec.SECP256K1())),
            None,
            "unsupported elliptic curve secp256k1",
        ),
        (
            _write_key(tmp_path / "weak.key", rsa.generate_private_key(65537, 1024)),  # noqa: S505
            None,
            "RSA key of 1024 bits",
        ),
        (key_path, other_cert, "does not match the key"),
        (key_path, key_path, "is not a PEM certificate"),
        (other_key, tmp_path / "nope.crt", "nope.crt does not exist"),
    ]
    for key, cert, message in cases:
        with pytest.raises(KeyConfigError, match=re.escape(message)):
            load_signing_key(key, cert)


def test_certificate_validity_is_checked(tmp_path: Path) -> None:
    key = new_private_key("p256")
    key_path = _write_key(tmp_path / "k.key", key)
    expired = tmp_path / "expired.crt"
    expired.write_bytes(
        self_signed(key, days=-1, start_days_ago=10).public_bytes(serialization.Encoding.PEM)
    )
    future = tmp_path / "future.crt"
    future.write_bytes(
        self_signed(key, days=30, start_days_ago=-5).public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(KeyConfigError, match="expired on"):
        load_signing_key(key_path, expired)
    with pytest.raises(KeyConfigError, match="is not valid before"):
        load_signing_key(key_path, future)


def test_loose_key_permissions_are_refused_unless_allowed(tmp_path: Path) -> None:
    key_path, cert_path = write_key_pair(tmp_path)
    key_path.chmod(0o640)
    with pytest.raises(KeyConfigError, match=r"mode 0640.*chmod 600"):
        load_signing_key(key_path, cert_path, allow_loose_permissions=False)
    assert load_signing_key(key_path, cert_path, allow_loose_permissions=True).alg == "ES256"


def test_dev_cert_is_a_private_p256_key_and_a_ca_certificate(tmp_path: Path) -> None:
    key_path, cert_path = tmp_path / "certs" / "RootCA.key", tmp_path / "certs" / "RootCA.crt"
    write_dev_cert(key_path, cert_path, cn="unit test", days=5)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    certificate = load_certificate(cert_path)
    assert certificate.subject.rfc4514_string() == "CN=unit test"
    assert (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days == 5
    signing_key = load_signing_key(key_path, cert_path, allow_loose_permissions=False)
    verify_jwt(signing_key.sign({"a": 1}), certificate)

    before = key_path.read_bytes()
    with pytest.raises(FileExistsError):
        write_dev_cert(key_path, cert_path)
    assert ensure_dev_cert(key_path, cert_path) is False
    assert key_path.read_bytes() == before
    key_path.unlink()
    assert ensure_dev_cert(key_path, cert_path) is True
    assert key_path.read_bytes() != before
    load_signing_key(key_path, cert_path, allow_loose_permissions=False)
