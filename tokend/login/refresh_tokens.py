"""Refresh tokens (docker's "identity tokens"): issued at login, traded for access tokens later.

Stateless, so any number of daemons sharing the signing key accept each other's tokens: a refresh
token is a JWS signed with the daemon's key that names the account, where the account came from,
a keyed fingerprint of the account's password hash, when it was issued and when it ends. Every
refresh re-checks it against the *current* policy, so the live reload revokes it when the account
is removed, its ``pass_hash`` changes, or its ``tokens_valid_after`` moves past the token's
``iat``. A rotation keeps the tokens a previous key signed while the set still trusts that key;
retiring it (or replacing --key) revokes them all. The fingerprint is an HMAC under a key derived
from the signing private key, truncated: the token reveals nothing about the hash, yet every
daemon holding the key computes the same one.

Never confusable with an access token, in either direction:

- tokend accepts as refresh token only a token whose header is, byte for byte, the one it writes
  on refresh tokens (``typ`` ``tokend-refresh+jwt``, the key's own ``alg``, the key's RFC 7638
  thumbprint as ``kid``, no ``x5c``), and whose claims say ``"token_use": "refresh"``. An access
  token (``typ`` ``JWT``, ``x5c``, an ``access`` claim) fails both checks; ``alg`` ``none`` or
  another algorithm fails the first before any signature is computed.
- The registry checks an access token's ``aud`` against its configured service. A refresh token's
  ``aud`` is :data:`REFRESH_AUDIENCE`, a URN no registry service is named after (tap.py should
  refuse a ``--service`` spelled like it), it carries no ``x5c`` chain a registry could verify it
  with and no ``access`` claim: even a registry that skipped the audience check would grant
  nothing.

Verifying costs no bcrypt: one signature check the first time a token is seen (remembered in a
bounded cache, as docker refreshes with the same token again and again), then an HMAC of the
hash per use; cheaper than signing the anonymous token the grant then returns.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode, urlsafe_b64encode

from tokend.login.identity import USERS, Identity
from tokend.login.ldap.entries import legacy_binding
from tokend.policy.model import Policy
from tokend.signing.holder import FixedKeys, KeySource
from tokend.signing.key_set import KeySet
from tokend.signing.keys import SigningKey

REFRESH_TYP = "tokend-refresh+jwt"
"""The ``typ`` header of refresh tokens (RFC 8725 §3.11: explicit typing); access tokens say
``JWT``."""

REFRESH_AUDIENCE = "urn:tokend:refresh-token"
"""The ``aud`` of every refresh token: not a registry's service, so registries refuse it."""

TOKEN_USE = "refresh"  # noqa: S105 (a claim value, not a password)

DEFAULT_TTL = 90 * 24 * 3600
DEFAULT_CACHE_SIZE = 4096
"""Tokens whose signature was checked, remembered so that a client refreshing again with the
same token costs no signature check; only validly signed tokens get in, so the bound is a
memory bound (about 4 MB), not a defence. Lifetime and account are checked on every use."""

MAX_TOKEN_CHARS = 4096
"""Longer input is refused before it is split or decoded; real refresh tokens are 450-720 chars."""

_FINGERPRINT_BYTES = 12
_JTI_BYTES = 12
_HKDF_INFO = b"tokend refresh token: password hash fingerprint v1"


class InvalidRefreshToken(Exception):
    """The refresh token is not accepted; ``reason`` is short and safe to log (no token text).

    Every reason means the same to the client: ``400 invalid_grant``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RefreshIdentity:
    """Who a valid refresh token speaks for; the policy then decides what they may do now."""

    account: str
    source: str
    jti: str
    issued_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class RefreshClaims:
    """A refresh token whose signature, type, issuer and lifetime are checked, but whose
    account is not yet: the account's source must still vouch for it (:meth:`admit`)."""

    account: str
    source: str
    password_fingerprint: str
    jti: str
    issued_at: int
    expires_at: int
    key: bytes = b""
    """The header segment of the key that signed it: which key vouches for it (and whose
    fingerprint key made ``password_fingerprint``); the current key's when empty."""


_EC_ORDERS = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196A"
        "CCC52973",
        16,
    ),
    "ES512": int(
        "1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "A51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}
"""The group order n of each ECDSA curve: (r, s) and (r, n - s) are both valid signatures."""


def _canonical_signature(alg: object, signature: bytes) -> bytes:
    """One of the signatures that are equally valid for the same signed part: ECDSA's low s."""
    order = _EC_ORDERS.get(alg) if isinstance(alg, str) else None
    if order is None or len(signature) % 2:
        return signature
    half = len(signature) // 2
    s = int.from_bytes(signature[half:], "big")
    if order // 2 < s < order:
        return signature[:half] + (order - s).to_bytes(half, "big")
    return signature


def canonical(token: str, alg: str | None = None) -> str:
    """The one spelling of a token whatever form of its signature was sent: ECDSA's ``s``
    taken as the lower of ``s`` and ``n - s`` (both verify, so both are one token: one
    fingerprint in the logs, one entry in the verified-signature cache), the signature
    encoded again as base64url without padding. ``alg`` is read from the header when not
    given; text that is no JWS is returned as it is."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii() or token.count(".") != 2:
        return token
    header, payload, signature = token.split(".")
    try:
        raw = urlsafe_b64decode(signature.encode("ascii"))
        if alg is None:
            alg = json.loads(urlsafe_b64decode(header.encode("ascii"))).get("alg")
    except (binascii.Error, ValueError, AttributeError, RecursionError):
        return token
    spelled = urlsafe_b64encode(_canonical_signature(alg, raw)).decode("ascii")
    return f"{header}.{payload}.{spelled}"


def fingerprint(token: str) -> str:
    """A short name for a token in logs (the same at issue and at use, and for every form of
    its signature: :func:`canonical`); never log the token."""
    return hashlib.sha256(canonical(token).encode("utf-8", "replace")).hexdigest()[:12]


def _key_secret(private_key: Any) -> bytes:
    """The private key's canonical numbers: the same for every daemon holding the key, whatever
    PEM form each was given."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        length = (private_key.curve.key_size + 7) // 8
        return int(private_key.private_numbers().private_value).to_bytes(length, "big")
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.private_numbers()
        primes = sorted((numbers.p, numbers.q))
        length = (private_key.key_size + 7) // 8
        return b"".join(int(p).to_bytes(length, "big") for p in primes)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return bytes(private_key.private_bytes_raw())
    raise TypeError(f"unsupported key type {type(private_key).__name__}")


def _public_jose_key(jose_key: ECKey | RSAKey | OKPKey) -> ECKey | RSAKey | OKPKey:
    """Signatures are checked with the public half only."""
    if isinstance(jose_key, ECKey):
        return ECKey.import_key(jose_key.public_key)
    if isinstance(jose_key, RSAKey):
        return RSAKey.import_key(jose_key.public_key)
    return OKPKey.import_key(jose_key.public_key)


def _segment(value: object) -> bytes:
    return urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode("ascii"))


def _exact_int(value: object) -> int | None:
    return value if type(value) is int else None


@dataclass(frozen=True, slots=True, eq=False)
class _RefreshKey:
    """One trusted key as refresh tokens use it: the header it writes (with its RFC 7638
    thumbprint as ``kid``), its public half for checks, and its password-fingerprint key."""

    header_segment: bytes
    alg: str
    public_key: ECKey | RSAKey | OKPKey
    signer: SigningKey
    fingerprint_key: bytes

    @classmethod
    def of(cls, key: SigningKey) -> _RefreshKey:
        public = _public_jose_key(key.jose_key)
        header = {"typ": REFRESH_TYP, "alg": key.alg, "kid": str(public.thumbprint())}
        signer = SigningKey(alg=key.alg, kid=header["kid"], header=header, jose_key=key.jose_key)
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
        secret = hkdf.derive(_key_secret(key.jose_key.private_key))
        return cls(_segment(header), key.alg, public, signer, secret)


def _check_signature(signing_input: bytes, signature: bytes, key: _RefreshKey) -> bool:
    return bool(JWSRegistry.algorithms[key.alg].verify(signing_input, signature, key.public_key))


class RefreshTokens:
    """Issue refresh tokens with the current signing key, and check them with any key the set
    still trusts, for one issuer.

    The key set is read from ``keys`` at every use: a rotation keeps every token a previous key
    signed (nobody is logged out), and a key leaving the set revokes what it signed, tokens
    remembered as verified included. ``ttl`` is the lifetime of new tokens and also caps old
    ones: shortening it shortens every token already out, and ``0`` (issuing off) makes every
    one of them refuse.
    """

    def __init__(
        self,
        keys: KeySource | SigningKey,
        issuer: str,
        ttl: int = DEFAULT_TTL,
        new_jti: Callable[[], str] = lambda: secrets.token_urlsafe(_JTI_BYTES),
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if ttl < 0:
            raise ValueError("ttl must be 0 (off) or a number of seconds")
        self.issuer = issuer
        self.ttl = ttl
        self._new_jti = new_jti
        self._cache_size = cache_size
        self._verified: dict[str, RefreshClaims] = {}
        self._keys: KeySource = FixedKeys.of(keys) if isinstance(keys, SigningKey) else keys
        self._verify: Callable[[bytes, bytes, _RefreshKey], bool] = _check_signature
        self._set: KeySet | None = None
        self._trusted: dict[bytes, _RefreshKey] = {}
        self._current: _RefreshKey | None = None
        self._trusted_now()

    def _trusted_now(self) -> tuple[_RefreshKey, dict[bytes, _RefreshKey]]:
        """The signing key and every trusted key by header, for the set in force now: made
        again only when the set was swapped, keeping the keys both sets hold."""
        keys = self._keys.current
        if keys is not self._set or self._current is None:
            trusted: dict[bytes, _RefreshKey] = {}
            for key in keys.keys:
                made = _RefreshKey.of(key.signing)
                trusted[made.header_segment] = self._trusted.get(made.header_segment, made)
            self._current = next(iter(trusted.values()))  # keys.keys: the current first
            self._trusted, self._set = trusted, keys
        return self._current, self._trusted

    @property
    def issuing(self) -> bool:
        """Whether new tokens may be handed out (``--refresh-token-ttl`` is not 0)."""
        return self.ttl > 0

    def password_fingerprint(
        self, account: str, source: str, pass_hash: bytes, key: bytes | None = None
    ) -> str:
        """Keyed and truncated: tells a changed hash apart, reveals nothing about it. Keyed by
        the token's signing key (``key``: the header it was signed under; the current one by
        default), so a token of a previous key is checked as that key fingerprinted it."""
        current, trusted = self._trusted_now()
        signer = current if key is None else trusted.get(key)
        if signer is None:
            raise InvalidRefreshToken("bad signature")
        message = b"\0".join((source.encode("utf-8"), account.encode("utf-8"), pass_hash))
        digest = hmac.new(signer.fingerprint_key, message, hashlib.sha256).digest()
        return urlsafe_b64encode(digest[:_FINGERPRINT_BYTES]).decode("ascii")

    def issue(self, account: str, source: str, pass_hash: bytes, now: float) -> str:
        """A refresh token for an account that just proved its password (``pass_hash``: the
        hash it was checked against). Raises ValueError when issuing is off."""
        if not self.issuing:
            raise ValueError("refresh tokens are off (ttl 0)")
        issued = int(now)
        signer, _ = self._trusted_now()
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": account,
            "aud": REFRESH_AUDIENCE,
            "token_use": TOKEN_USE,
            "src": source,
            "pwd": self.password_fingerprint(account, source, pass_hash, signer.header_segment),
            "iat": issued,
            "exp": issued + self.ttl,
            "jti": self._new_jti(),
        }
        return signer.signer.sign(claims)

    def verify(self, token: str, policy: Policy, now: float) -> RefreshIdentity:
        """The identity of a refresh token for a users.json account, checked against the
        current policy; raises :class:`InvalidRefreshToken`."""
        return self.identity(self.read(token, now), policy)

    def identity(self, claims: RefreshClaims, policy: Policy) -> RefreshIdentity:
        """:meth:`verify` past :meth:`read`: the users.json account as the policy knows it."""
        if claims.source != USERS:
            raise InvalidRefreshToken("unknown source")
        user = policy.users.get(claims.account)
        if user is None:
            raise InvalidRefreshToken("unknown account")
        return self.admit(claims, user.pass_hash, user.tokens_valid_after)

    def read(self, token: str, now: float) -> RefreshClaims:
        """Check everything that needs no account lookup: size, header, signature, claims,
        issuer, lifetime. Other sources (a directory) look the account up, then :meth:`admit`."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise InvalidRefreshToken("malformed")
        # Remembered by its canonical form: a twin signature ((r, n - s), another base64
        # spelling) is valid exactly when the one checked was, so it is the same token.
        _, trusted = self._trusted_now()
        signer = trusted.get(token.partition(".")[0].encode("ascii", "replace"))
        known = canonical(token, None if signer is None else signer.alg)
        claims = self._verified.get(known)
        if claims is not None and claims.key not in trusted:
            del self._verified[known]  # its key left the set: what it signed is revoked
            claims = None
        if claims is None:
            claims = self._signed_claims(token, trusted)
            if len(self._verified) >= self._cache_size > 0:
                del self._verified[next(iter(self._verified))]
            if self._cache_size > 0:
                self._verified[known] = claims
        if now >= claims.expires_at or now >= claims.issued_at + self.ttl:
            raise InvalidRefreshToken("expired")
        return claims

    def _signed_claims(self, token: str, trusted: dict[bytes, _RefreshKey]) -> RefreshClaims:
        """The claims of a token signed by a trusted key for this issuer: the part that needs
        the signature check, and that stays true for as long as that key is trusted."""
        if not token.isascii():
            raise InvalidRefreshToken("malformed")
        parts = token.encode("ascii").split(b".")
        if len(parts) != 3:
            raise InvalidRefreshToken("malformed")
        header_segment, payload_segment, signature_segment = parts
        key = trusted.get(header_segment)
        if key is None:
            raise InvalidRefreshToken(self._header_refusal(header_segment, trusted))
        try:
            signature = urlsafe_b64decode(signature_segment)
        except binascii.Error:
            raise InvalidRefreshToken("malformed") from None
        if not self._verify(header_segment + b"." + payload_segment, signature, key):
            raise InvalidRefreshToken("bad signature")
        try:
            payload = json.loads(urlsafe_b64decode(payload_segment))
        except (binascii.Error, ValueError):
            raise InvalidRefreshToken("malformed") from None
        return self._claims(payload, header_segment)

    def admit(
        self, claims: RefreshClaims, pass_hash: bytes, valid_after: float | None
    ) -> RefreshIdentity:
        """Whether the account, as its source knows it now, still honours the token."""
        expected = self.password_fingerprint(
            claims.account, claims.source, pass_hash, claims.key or None
        )
        if not hmac.compare_digest(expected, claims.password_fingerprint):
            raise InvalidRefreshToken("revoked: password changed")
        if valid_after is not None and claims.issued_at < valid_after:
            raise InvalidRefreshToken("revoked: tokens_valid_after")
        return RefreshIdentity(
            claims.account, claims.source, claims.jti, claims.issued_at, claims.expires_at
        )

    def admit_directory(self, claims: RefreshClaims, identity: Identity) -> RefreshIdentity:
        """:meth:`admit` for a directory account as its lookup found it now. A token bound to
        the DN alone (issued before tokend bound tokens to the entry's id and password time)
        is honoured while it would have been under the new binding: issued after the entry
        was created and after its password last changed, as far as the directory says."""
        changed = InvalidRefreshToken("revoked: the entry or its password changed")
        try:
            return self.admit(claims, identity.binding, None)
        except InvalidRefreshToken:
            after = identity.dn_tokens_after
            if after is None or not identity.entry or claims.issued_at <= after:
                raise changed from None
        try:
            return self.admit(claims, legacy_binding(identity.entry), None)
        except InvalidRefreshToken:
            raise changed from None

    def _header_refusal(self, header_segment: bytes, trusted: dict[bytes, _RefreshKey]) -> str:
        """Why a header is not ours: another kind of token, a refresh token of a key the set
        no longer holds (retired) or never held, or a tampered one."""
        try:
            header = json.loads(urlsafe_b64decode(header_segment))
        except (binascii.Error, ValueError, RecursionError):
            return "malformed"
        if not isinstance(header, dict):
            return "malformed"
        if header.get("typ") != REFRESH_TYP:
            return "not a refresh token"
        if header.get("kid") not in {key.signer.kid for key in trusted.values()}:
            return "signed by a key not in the key set (retired, or never tokend's)"
        return "bad signature"

    def _claims(self, payload: object, key: bytes) -> RefreshClaims:
        """The signed claims; anything unexpected here was not written by this code."""
        if not isinstance(payload, dict):
            raise InvalidRefreshToken("malformed")
        if payload.get("token_use") != TOKEN_USE or payload.get("aud") != REFRESH_AUDIENCE:
            raise InvalidRefreshToken("not a refresh token")
        if payload.get("iss") != self.issuer:
            raise InvalidRefreshToken("other issuer")
        account, source = payload.get("sub"), payload.get("src")
        password, jti = payload.get("pwd"), payload.get("jti")
        issued_at, expires_at = _exact_int(payload.get("iat")), _exact_int(payload.get("exp"))
        if (
            not isinstance(account, str)
            or not isinstance(source, str)
            or not isinstance(password, str)
            or not isinstance(jti, str)
            or issued_at is None
            or expires_at is None
        ):
            raise InvalidRefreshToken("malformed")
        return RefreshClaims(account, source, password, jti, issued_at, expires_at, key)
