"""What a Docker registry trusts, read as distribution reads it, and whether it trusts a key.

``rootcertbundle`` and ``jwks`` are parsed as registry/auth/token/accesscontroller.go does, and
a signing key is looked up under the 2.x rules (x5c, else libtrust kid among the bundle's keys)
and the 3.x rules (x5c with no fallback, else kid among the bundle's getJWKThumbprint ids and
the jwks kids). ``tokend doctor`` explains its findings from these answers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokend.signing.keys import SigningKey, libtrust_key_id, registry_thumbprint

V2, V3 = "2.x", "3.x"
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.DOTALL
)
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}


class TrustError(Exception):
    """The registry cannot read this file (and does not start); the message says why."""


@dataclass(frozen=True, slots=True)
class Trusted:
    """The keys a registry's ``auth.token`` section trusts."""

    roots: tuple[x509.Certificate, ...] = ()
    jwks: tuple[tuple[str, Any], ...] = ()
    """(kid, public key) of each ``jwks`` key, in file order."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a registry version accepts the key's tokens, and how or why not."""

    accepted: bool
    how: str
    anchors: tuple[x509.Certificate, ...] = ()
    """The bundle certificates the acceptance rests on (their expiry ends it)."""


def read_bundle(path: Path) -> tuple[x509.Certificate, ...]:
    """The ``CERTIFICATE`` blocks of a PEM bundle (other blocks skipped, as the registry does)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TrustError(f"cannot read {path}: {e.strerror}") from None
    certificates = []
    for number, match in enumerate(_PEM_CERTIFICATE.finditer(data), 1):
        try:
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
            certificates.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError):
            raise TrustError(f"{path}: certificate {number} cannot be parsed") from None
    return tuple(certificates)


def _b64url(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jwk_public_key(jwk: dict[str, Any]) -> Any:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "EC" and crv in _CURVES:
        x, y = _b64url(jwk.get("x")), _b64url(jwk.get("y"))
        size = (_CURVES[crv].key_size + 7) // 8
        if len(x) != size or len(y) != size:
            raise ValueError(
                f"its {crv} coordinates are not {size} bytes long (RFC 7518; go-jose refuses "
                "shorter ones): write them at full size"
            )
        point = (int.from_bytes(x, "big"), int.from_bytes(y, "big"))
        return ec.EllipticCurvePublicNumbers(*point, _CURVES[crv]).public_key()
    if kty == "RSA":
        e, n = (int.from_bytes(_b64url(jwk.get(name)), "big") for name in ("e", "n"))
        return rsa.RSAPublicNumbers(e, n).public_key()
    if kty == "OKP" and crv == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(_b64url(jwk.get("x")))
    raise ValueError(f"unsupported key type {kty!r} {crv or ''}".rstrip())


def read_jwks(path: Path) -> tuple[tuple[str, Any], ...]:
    """The keys of a JWKS file with their kids; TrustError where go-jose would refuse it."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as e:
        raise TrustError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise TrustError(f"{path} is not JSON: {e}") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise TrustError(f'{path} is not a JWKS: expected {{"keys": [...]}}')
    found = []
    for number, jwk in enumerate(keys, 1):
        kid = jwk.get("kid", "") if isinstance(jwk, dict) else ""
        try:
            if not isinstance(jwk, dict) or not isinstance(kid, str):
                raise ValueError("not a JSON object with a string kid")
            found.append((kid, _jwk_public_key(jwk)))
        except (ValueError, binascii.Error) as e:
            raise TrustError(f"{path}: key {number} (kid {kid!r}): {e}") from None
    return tuple(found)


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def _valid(certificate: x509.Certificate, moment: datetime) -> bool:
    return certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc


def signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``certificate`` (and names it as its issuer)."""
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def may_sign(issuer: x509.Certificate) -> bool:
    """Go's ``CheckSignatureFrom``: an X.509 v3 issuer needs basicConstraints CA:TRUE, and
    keyCertSign when it states a key usage; a plain self-signed certificate cannot issue."""
    extensions = issuer.extensions
    try:
        if not extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return issuer.version == x509.Version.v1
    try:
        return extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def trusted_chain(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], moment: datetime
) -> Verdict:
    """Go's ``x509.Certificate.Verify`` of the x5c chain with the bundle as roots: the leaf is
    in the bundle, or each certificate is signed by the next up to one the bundle holds or
    that signed it; every certificate on the way valid at ``moment``."""
    for index, certificate in enumerate(chain):
        if not _valid(certificate, moment):
            return Verdict(False, f"certificate {subject(certificate)} is not valid now")
        if certificate in roots:
            return Verdict(True, f"x5c: {subject(certificate)} is in the bundle", (certificate,))
        for root in roots:
            if signed_by(certificate, root):
                if not may_sign(root):
                    return Verdict(
                        False,
                        f"the bundle's {subject(root)} signed {subject(certificate)} but may not "
                        "sign certificates (it needs basicConstraints CA:TRUE and keyCertSign)",
                    )
                if not _valid(root, moment):
                    return Verdict(False, f"the bundle's {subject(root)} is not valid now")
                return Verdict(True, f"x5c: issued by {subject(root)} of the bundle", (root,))
        if index + 1 == len(chain):
            break
        parent = chain[index + 1]
        if not signed_by(certificate, parent) or not may_sign(parent):
            break
    return Verdict(False, f"the x5c chain of {subject(chain[0])} leads to no bundle certificate")


def verdict(signing: SigningKey, trusted: Trusted, version: str, moment: datetime) -> Verdict:
    """Would this registry version find the key of a token ``signing`` signs, and trust it?"""
    if signing.chain:
        return trusted_chain(signing.chain, trusted.roots, moment)
    public_key = signing.jose_key.public_key
    if version == V2:
        roots = [
            root for root in trusted.roots if libtrust_key_id(root.public_key()) == signing.kid
        ]
        if not roots:
            return Verdict(False, f"kid {signing.kid} is the libtrust id of no bundle key")
        return Verdict(True, f"kid {signing.kid} (libtrust) names a bundle key", tuple(roots))
    keys: dict[str, tuple[Any, tuple[x509.Certificate, ...]]] = {}
    for root in trusted.roots:
        keys[registry_thumbprint(root.public_key())] = (root.public_key(), (root,))
    for kid, jwks_key in trusted.jwks:
        keys[kid] = (jwks_key, ())
    if signing.kid not in keys:
        return Verdict(False, f"kid {signing.kid} is the kid of no bundle or jwks key")
    found, anchors = keys[signing.kid]
    if _spki(found) != _spki(public_key):
        return Verdict(False, f"kid {signing.kid} names another key: the signature would fail")
    source = "a jwks key" if not anchors else "a bundle key (registry thumbprint)"
    return Verdict(True, f"kid {signing.kid} names {source}", anchors)
