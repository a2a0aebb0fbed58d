"""distribution 3.x's token verification, written down from its source to check tokend against.

distribution 3.x cannot run here (no Go toolchain for it), so this module encodes what it does,
independently of tokend's signing code. It follows github.com/distribution/distribution at
commit 0d6b721dc3ceacb5d678c25b718b2f40a507c2d8 (main, 2026-08-18; the same rules as v3.1.0 and
v3.1.1):

- registry/auth/token/accesscontroller.go, ``newAccessController``: the trusted keys are every
  ``rootcertbundle`` certificate's key under ``GetJWKThumbprint`` plus every ``jwks`` key under
  its own ``kid``; no bundle certificate and no jwks key stops the registry starting;
  ``signingalgorithms`` (optional, names checked at start-up) restricts ``alg``.
- registry/auth/token/token.go, ``VerifySigningKey``: the ``x5c`` chain first, verified against
  the bundle's certificates as roots (Go's ``x509.Certificate.Verify``, any extended key usage);
  only a *missing* x5c falls through to the ``jwk`` header, then to ``kid`` among the trusted
  keys. ``Verify``: signature, then ``iss`` exactly, ``aud`` (a string or a list) containing the
  service, ``exp`` and ``nbf`` with ``Leeway`` = 60 s.
- registry/auth/token/util.go, ``getJWKThumbprint``: RFC 7638's member order and SHA-256, but
  every number through Go's ``big.Int.Bytes()``, which drops leading zero bytes. RFC 7518 wants
  EC coordinates at the curve's full size, so for keys whose X or Y starts with a zero byte the
  registry's thumbprint is not RFC 7638's.
- registry/auth/token/types.go, ``AudienceList``.

And what go-jose v4 (its JWS library) adds: ``jwt.ParseSigned`` refuses an ``alg`` outside the
allowed list, the signature must fit the key (ES256 with P-256 and 64 bytes, ...), the claims
must unmarshal (``exp``/``nbf`` whole numbers), and a JWKS EC key must carry coordinates of
the curve's full size or the file does not load.

Not encoded (tokend never sends them, or Go checks tokend's certificates would pass anyway):
name constraints, critical extensions, SHA-1 refusal, ``x5t``/``x5u``, multi-signature JWS.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

LEEWAY = 60
"""token.go ``Leeway``: seconds added to ``exp`` and taken from ``nbf``."""

ALGORITHMS = (
    "EdDSA",
    *("HS256", "HS384", "HS512"),
    *("RS256", "RS384", "RS512"),
    *("ES256", "ES384", "ES512"),
    *("PS256", "PS384", "PS512"),
)
"""token.go ``signingAlgorithms``/``defaultSigningAlgorithms``: allowed when the config names
none."""

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVE_FOR = {"ES256": ("P-256", 32), "ES384": ("P-384", 48), "ES512": ("P-521", 66)}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


class Refused(Exception):
    """The registry answers 401 ``invalid_token``; the message says which rule refused it."""


class StartupError(Exception):
    """The registry would not start with this ``auth.token`` configuration."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def go_bytes(number: int) -> bytes:
    """Go's ``big.Int.Bytes()``: big-endian, no leading zero bytes (empty for zero)."""
    return number.to_bytes((number.bit_length() + 7) // 8, "big")


def go_thumbprint(public_key: Any) -> str:
    """util.go ``getJWKThumbprint(publickey, false)``: the registry's key id for bundle keys."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        e, n = _b64url(go_bytes(numbers.e)), _b64url(go_bytes(numbers.n))
        payload = f'{{"e":"{e}","kty":"RSA","n":"{n}"}}'
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        point = public_key.public_numbers()
        crv = _CURVE_NAMES[public_key.curve.name]
        x, y = _b64url(go_bytes(point.x)), _b64url(go_bytes(point.y))
        payload = f'{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}'
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        x = _b64url(public_key.public_bytes_raw())
        payload = f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'
    else:
        return ""
    return _b64url(hashlib.sha256(payload.encode("ascii")).digest())


def jwk_public_key(jwk: dict[str, Any]) -> Any:
    """go-jose's ``JSONWebKey`` unmarshalling of a public key; StartupError as it would fail."""
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            crv = jwk["crv"]
            x, y = _b64url_decode(jwk["x"]), _b64url_decode(jwk["y"])
            size = (_CURVES[crv].key_size + 7) // 8
            if len(x) != size or len(y) != size:
                raise StartupError(f"invalid EC key, wrong length for x/y ({crv})")
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), _CURVES[crv]()
            )
            return numbers.public_key()
        if kty == "RSA":
            e, n = (int.from_bytes(_b64url_decode(jwk[k]), "big") for k in ("e", "n"))
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(_b64url_decode(jwk["x"]))
    except (KeyError, ValueError, binascii.Error) as e:
        raise StartupError(f"failed to parse jwks: {e}") from None
    raise StartupError(f"failed to parse jwks: unknown key type {kty!r}")


@dataclass(frozen=True, slots=True)
class Registry3:
    """The ``auth.token`` section as newAccessController builds it, and Authorized's checks."""

    issuer: str
    service: str
    roots: tuple[x509.Certificate, ...]
    trusted_keys: dict[str, Any]
    algorithms: tuple[str, ...]

    @classmethod
    def configure(
        cls,
        issuer: str,
        service: str,
        roots: Sequence[x509.Certificate] = (),
        jwks: dict[str, Any] | None = None,
        signing_algorithms: Sequence[str] | None = None,
    ) -> Registry3:
        jwks_keys = [] if jwks is None else list(jwks.get("keys", []))
        if not roots and not jwks_keys:
            raise StartupError("token auth requires at least one token signing key")
        trusted: dict[str, Any] = {}
        for root in roots:
            if key_id := go_thumbprint(root.public_key()):
                trusted[key_id] = root.public_key()
        for jwk in jwks_keys:
            trusted[jwk.get("kid", "")] = jwk_public_key(jwk)
        for alg in signing_algorithms or ():
            if alg not in ALGORITHMS:
                raise StartupError(f"unsupported signing algorithm: {alg}")
        algorithms = tuple(signing_algorithms or ()) or ALGORITHMS
        return cls(issuer, service, tuple(roots), trusted, algorithms)

    def verify(self, token: str, now: float) -> dict[str, Any]:
        """The claims of a token the registry accepts at ``now``; Refused otherwise."""
        header, claims_segment, signing_input, signature = _parse(token, self.algorithms)
        key = self._signing_key(header, now)
        _check_signature(header["alg"], key, signing_input, signature)
        claims = _claims(claims_segment)
        if claims["iss"] != self.issuer:
            raise Refused(f"token from untrusted issuer: {claims['iss']!r}")
        if self.service not in claims["aud"]:
            raise Refused(f"token intended for another audience: {claims['aud']}")
        if now > claims["exp"] + LEEWAY:
            raise Refused("token expired (beyond the 60 s leeway)")
        if now < claims["nbf"] - LEEWAY:
            raise Refused("token not valid yet (beyond the 60 s leeway)")
        return claims

    def _signing_key(self, header: dict[str, Any], now: float) -> Any:
        """token.go ``VerifySigningKey``: x5c, and only without it jwk, then kid."""
        if header.get("x5c", []) != []:
            return _verify_chain(header["x5c"], self.roots, now)
        if "jwk" in header:
            jwk = header["jwk"]
            if jwk.get("x5c"):
                return _verify_chain(jwk["x5c"], self.roots, now)
            if jwk.get("kid") not in self.trusted_keys:
                raise Refused("untrusted JWK with no certificate chain")
            return self.trusted_keys[jwk["kid"]]
        kid = header.get("kid")
        if not kid:
            raise Refused("invalid token: no x5c, jwk or kid")
        if kid not in self.trusted_keys:
            raise Refused(f"token signed by untrusted key with ID: {kid!r}")
        return self.trusted_keys[kid]


def _parse(token: str, algorithms: Sequence[str]) -> tuple[dict[str, Any], str, bytes, bytes]:
    """go-jose ``jwt.ParseSigned``: compact form, a known ``alg`` in the allowed list."""
    parts = token.split(".")
    if len(parts) != 3:
        raise Refused("malformed token")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        signature = _b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        raise Refused("malformed token") from None
    if not isinstance(header, dict) or header.get("alg") not in algorithms:
        raise Refused(f"malformed token: alg {header.get('alg')!r} is not allowed")
    return header, parts[1], f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _certificates(x5c: Any) -> list[x509.Certificate]:
    """go-jose parses x5c as standard base64 DER at parse time; a bad entry is malformed."""
    if not isinstance(x5c, list) or not x5c:
        raise Refused("malformed token: x5c")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
    except (TypeError, ValueError, binascii.Error):
        raise Refused("malformed token: x5c") from None


def _valid_at(certificate: x509.Certificate, now: float) -> bool:
    return (
        certificate.not_valid_before_utc.timestamp()
        <= now
        <= certificate.not_valid_after_utc.timestamp()
    )


def _may_sign(issuer: x509.Certificate) -> bool:
    """crypto/x509 ``CheckSignatureFrom``: a v3 issuer needs basicConstraints CA:TRUE (and
    keyCertSign if it has a key usage); this holds for roots as for intermediates (distribution
    2.8.2 refuses a chain under a plain self-signed certificate: "parent certificate cannot
    sign this kind of certificate")."""
    try:
        if not issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return issuer.version == x509.Version.v1
    try:
        return issuer.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if not _may_sign(issuer):
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _verify_chain(x5c: Any, roots: Sequence[x509.Certificate], now: float) -> Any:
    """Go's ``Verify`` with the x5c tail as intermediates: the leaf is a root itself, or a path
    of intermediates leads to a root that signed it, every issuer on it a CA; every certificate
    on it valid now.
    The leaf's key is the signing key; a failure here is final (no fallback to kid)."""
    chain = _certificates(x5c)
    leaf, intermediates = chain[0], chain[1:]
    if not _valid_at(leaf, now):
        raise Refused("x509: certificate has expired or is not yet valid (leaf)")
    if any(leaf == root for root in roots):
        return leaf.public_key()

    def reaches_root(certificate: x509.Certificate, used: frozenset[int]) -> bool:
        for root in roots:
            if _signed_by(certificate, root) and _valid_at(root, now):
                return True
        for index, candidate in enumerate(intermediates):
            if (
                index not in used
                and _valid_at(candidate, now)
                and _signed_by(certificate, candidate)
                and reaches_root(candidate, used | {index})
            ):
                return True
        return False

    if not reaches_root(leaf, frozenset()):
        raise Refused("x509: certificate signed by unknown authority")
    return leaf.public_key()


def _check_signature(alg: str, key: Any, signing_input: bytes, signature: bytes) -> None:
    """go-jose's verification: the key must fit ``alg`` (curve, signature size, key type)."""
    digest = _HASHES.get(alg[-3:], hashes.SHA256)()
    try:
        if alg in _CURVE_FOR:
            curve, size = _CURVE_FOR[alg]
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise Refused(f"{alg} with a key that is not EC")
            if _CURVE_NAMES.get(key.curve.name) != curve or len(signature) != 2 * size:
                raise Refused(f"{alg} with a key on {key.curve.name} or a bad signature size")
            r, s = (int.from_bytes(signature[i : i + size], "big") for i in (0, size))
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))
        elif alg.startswith(("RS", "PS")):
            if not isinstance(key, rsa.RSAPublicKey):
                raise Refused(f"{alg} with a key that is not RSA")
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg.startswith("RS")
                else padding.PSS(padding.MGF1(digest), padding.PSS.AUTO)
            )
            key.verify(signature, signing_input, pad, digest)
        elif alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise Refused("EdDSA with a key that is not Ed25519")
            key.verify(signature, signing_input)
        else:
            raise Refused(f"{alg}: tokend never signs with a shared secret")
    except InvalidSignature:
        raise Refused("go-jose: error in cryptographic primitive (bad signature)") from None


def _claims(segment: str) -> dict[str, Any]:
    """token.go ``ClaimSet`` as encoding/json fills it: absent numbers are 0, absent strings
    empty; ``aud`` through types.go ``AudienceList``; a wrong type is an error."""
    try:
        raw = json.loads(_b64url_decode(segment))
    except (ValueError, binascii.Error):
        raise Refused("claims are not JSON") from None
    if not isinstance(raw, dict):
        raise Refused("claims are not a JSON object")
    aud = raw.get("aud")
    audience = [aud] if isinstance(aud, str) else aud if aud is not None else []
    if not isinstance(audience, list) or not all(isinstance(a, str) for a in audience):
        raise Refused(f"json: unsupported type for aud: {aud!r}")
    numbers = {name: raw.get(name, 0) for name in ("exp", "nbf", "iat")}
    if not all(type(value) is int for value in numbers.values()):
        raise Refused(f"json: exp, nbf and iat must be whole numbers: {numbers}")
    issuer = raw.get("iss", "")
    if not isinstance(issuer, str):
        raise Refused("json: iss is not a string")
    return {**raw, "iss": issuer, "aud": audience, **numbers}


CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


def zero_leading_key(kind: str, which: int = 0) -> ec.EllipticCurvePrivateKey:
    """A key where RFC 7638 and the registry disagree: the first from private scalar 1 up whose
    X (which=0) or Y (which=1) starts with a zero byte at the curve's full size; deterministic,
    found within a few hundred tries."""
    size = (CURVES[kind].key_size + 7) // 8
    scalar = 1
    while True:
        key = ec.derive_private_key(scalar, CURVES[kind])
        point = key.public_key().public_numbers()
        if (point.x, point.y)[which].to_bytes(size, "big")[0] == 0:
            return key
        scalar += 1
