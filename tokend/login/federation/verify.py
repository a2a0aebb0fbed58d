"""A platform's JWT checked against one trust and the keys its issuer published (issue #25).

Pure (no Twisted, no I/O): the caller fetches the keys (:mod:`.issuer_keys`) and passes them
in, so nothing the token says can make tokend fetch anything. The token chooses neither the key
source (``jku``, ``x5u``, ``jwk``, ``x5c`` are refused) nor a weak algorithm (``none``, HMAC).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from base64 import urlsafe_b64decode
from collections.abc import Mapping
from typing import Any, Protocol

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from tokend.unique_json import DuplicateKey, unique_keys

MAX_TOKEN_CHARS = 16 * 1024
"""Longer input is refused before it is split or decoded; platform JWTs are about 1-2 KiB."""

LEEWAY = 60
"""Seconds of clock skew allowed on ``nbf`` and ``iat`` (never on ``exp``: no access token may
outlive the JWT)."""

MIN_RSA_BITS = 2048

_KEY_TYPES: dict[str, tuple[str, frozenset[str]]] = {
    **{f"RS{bits}": ("RSA", frozenset()) for bits in (256, 384, 512)},
    **{f"PS{bits}": ("RSA", frozenset()) for bits in (256, 384, 512)},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),
}
"""The accepted algorithms (RFC 7518, RFC 8037, RFC 9864's ``Ed25519``) and the key type and
curves each needs: a key is used only with an algorithm of its own type."""

ALGORITHMS = tuple(_KEY_TYPES)

_PUBLIC_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x")}
_IMPORTERS: dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]] = {
    "RSA": RSAKey,
    "EC": ECKey,
    "OKP": OKPKey,
}

REFUSED_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
"""Headers that would let the token name its own key (or change how it is read): a trust's
keys come from its policy alone."""

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


class FederatedRefused(Exception):
    """The JWT is not accepted; ``reason`` is short and safe to log (never the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Audience(Protocol):
    """What :func:`verify` reads of a trust (:class:`tokend.policy.trusts.Trust`)."""

    @property
    def name(self) -> str: ...

    @property
    def issuer(self) -> str: ...

    @property
    def audience(self) -> str: ...

    @property
    def max_token_age(self) -> int | None: ...


def _refuse_constant(name: str) -> Any:
    raise FederatedRefused(f"a JSON {name} in the token")


def _decode(segment: str, what: str) -> bytes:
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise FederatedRefused(f"the {what} is not base64url")
    try:
        return urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise FederatedRefused(f"the {what} is not base64url") from None


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            _decode(segment, what),
            object_pairs_hook=unique_keys,
            parse_constant=_refuse_constant,
        )
    except DuplicateKey as e:
        raise FederatedRefused(f"a member {e.key!r} twice in the token") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise FederatedRefused(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise FederatedRefused(f"the {what} is not a JSON object")
    return value


def read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, checked for shape only: the trust it claims to
    be for is chosen by its ``iss`` and ``aud`` before the signature is checked."""
    if not isinstance(token, str) or not token:
        raise FederatedRefused("no token")
    if len(token) > MAX_TOKEN_CHARS:
        raise FederatedRefused(f"a token over {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise FederatedRefused("not a compact JWS (three dot-separated parts)")
    header = _json_object(parts[0], "header")
    claims = _json_object(parts[1], "payload")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise FederatedRefused("no alg in the header")
    refused = [name for name in REFUSED_HEADERS if name in header]
    if refused:
        raise FederatedRefused(f"a {refused[0]} header (keys come from the trust alone)")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise FederatedRefused("a kid that is not a string")
    return header, claims


def _fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """Whether a published key may check a signature of ``alg``."""
    kty, curves = _KEY_TYPES[alg]
    if jwk.get("kty") != kty:
        return False
    if curves and jwk.get("crv") not in curves:
        return False
    if jwk.get("use", "sig") != "sig":
        return False
    key_ops = jwk.get("key_ops")
    if isinstance(key_ops, list) and "verify" not in key_ops:
        return False
    return bool(jwk.get("alg", alg) == alg)


def usable_algorithms(jwk: Mapping[str, Any]) -> list[str]:
    """The accepted algorithms a published key may check (none: tokend never uses it)."""
    return [alg for alg in _KEY_TYPES if _fits(jwk, alg)]


def _key_for(keys: Mapping[str, Any], kid: str | None, alg: str) -> Mapping[str, Any]:
    published = keys.get("keys")
    if not isinstance(published, list):
        raise FederatedRefused("the issuer's key set has no keys")
    candidates = [jwk for jwk in published if isinstance(jwk, dict) and _fits(jwk, alg)]
    if kid is not None:
        named = [jwk for jwk in candidates if jwk.get("kid") == kid]
        if not named:
            raise FederatedRefused(f"no {alg} key {kid!r} in the issuer's key set")
        return named[0]
    if len(candidates) != 1:
        raise FederatedRefused(
            f"the token names no kid and the issuer has {len(candidates)} {alg} keys"
        )
    return candidates[0]


def _public_key(jwk: Mapping[str, Any]) -> RSAKey | ECKey | OKPKey:
    kty = jwk["kty"]
    members: dict[str, str | list[str]] = {}
    for name in _PUBLIC_MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise FederatedRefused(f"the issuer's key {jwk.get('kid')!r} is malformed")
        members[name] = value
    if kty == "RSA" and _bits(jwk["n"]) < MIN_RSA_BITS:
        raise FederatedRefused(f"the issuer's RSA key {jwk.get('kid')!r} is under 2048 bits")
    try:
        return _IMPORTERS[kty].import_key({"kty": kty, **members})
    except (JoseError, ValueError, TypeError):
        raise FederatedRefused(f"the issuer's key {jwk.get('kid')!r} is malformed") from None


def _bits(modulus: str) -> int:
    """An RSA modulus's size, read before joserfc imports it (and warns of a small one)."""
    try:
        return int.from_bytes(_decode(modulus, "issuer's key"), "big").bit_length()
    except FederatedRefused:
        return 0


def _signature_holds(token: str, alg: str, key: RSAKey | ECKey | OKPKey) -> bool:
    header_segment, payload_segment, signature_segment = token.split(".")
    signature = _decode(signature_segment, "signature")
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    try:
        return bool(JWSRegistry.algorithms[alg].verify(signing_input, signature, key))
    except (JoseError, ValueError, TypeError):
        return False


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FederatedRefused(f"{name} is not a number")
    return float(value)


def jwt_fingerprint(token: str) -> str:
    """A short name for a platform JWT in logs, never the token: the first 12 hex digits of its
    SHA-256 as sent (a platform's token has no canonical form of ours to reduce it to)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]


def audiences(claims: Mapping[str, Any]) -> list[str]:
    """The token's ``aud`` as a list (a string is one audience); [] when absent or malformed:
    what :meth:`tokend.policy.model.Policy.trust_for` is asked with."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(one, str) for one in aud):
        return aud
    return []


def verify(
    token: str,
    trust: Audience,
    keys: Mapping[str, Any],
    now: float,
    leeway: int = LEEWAY,
) -> dict[str, Any]:
    """The claims of ``token`` once its signature holds under one of ``keys`` (the trust's
    issuer's JWKS) and its claims fit ``trust``; raises :class:`FederatedRefused` otherwise.
    The trust's conditions on claims are its own business (``Trust.admits``)."""
    header, claims = read_unverified(token)
    alg = header["alg"]
    if alg not in _KEY_TYPES:
        raise FederatedRefused(f"algorithm {alg[:20]!r} is not accepted")
    key = _public_key(_key_for(keys, header.get("kid"), alg))
    if not _signature_holds(token, alg, key):
        raise FederatedRefused("bad signature")
    if claims.get("iss") != trust.issuer:
        raise FederatedRefused(f"the issuer is not {trust.name}'s")
    if trust.audience not in audiences(claims):
        raise FederatedRefused(f"the audience is not {trust.name}'s")
    exp = _time(claims, "exp")
    if exp is None:
        raise FederatedRefused("no exp (a token without an end is refused)")
    if exp <= now:
        raise FederatedRefused("expired")
    nbf = _time(claims, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise FederatedRefused("not valid yet (nbf)")
    iat = _time(claims, "iat")
    if iat is not None and iat > now + leeway:
        raise FederatedRefused("issued in the future (iat)")
    if trust.max_token_age is not None:
        if iat is None:
            raise FederatedRefused("no iat, and the trust bounds the token's age")
        if now - iat > trust.max_token_age:
            raise FederatedRefused(f"older than {trust.max_token_age} s")
    return claims
