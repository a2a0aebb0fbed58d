"""Refresh tokens: round trip, every revocation path, both confusion cases, hostile input; and the
users.json key ``tokens_valid_after`` they are revoked by."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils
from realms import Realm, offline_login, refresh
from support import (
    hash_password,
    load_certificate,
    self_signed,
    verify_jwt,
    write_key_pair,
    write_private_key,
)
from twisted.logger import capturedLogs, formatEvent

from tokend.login.refresh_tokens import (
    DEFAULT_TTL,
    MAX_TOKEN_CHARS,
    REFRESH_AUDIENCE,
    REFRESH_TYP,
    USERS,
    InvalidRefreshToken,
    RefreshIdentity,
    RefreshTokens,
    fingerprint,
)
from tokend.policy.changes import policy_change
from tokend.policy.documents import users_from_document
from tokend.policy.model import Policy, PolicyError
from tokend.scope import ResourceScope
from tokend.signing.holder import FixedKeys, KeyHolder
from tokend.signing.key_set import CURRENT, PREVIOUS, KeySet, SetKey
from tokend.signing.keys import SigningKey, load_signing_key
from tokend.signing.tokens import TokenIssuer

ISSUER = "tokend"
SERVICE = "registry.example.com"
NOW = 1_750_000_000.0
HASH = hash_password("secret")
OTHER_HASH = hash_password("changed")

UNKNOWN_KEY = "signed by a key not in the key set (retired, or never tokend's)"
"""What the log says of a refresh token whose key was retired: not a forgery."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def policy(**users: dict[str, object]) -> Policy:
    return Policy(users_from_document(users, "users.json"))


def alice(pass_hash: str = HASH, **extra: object) -> Policy:
    return policy(alice={"pass_hash": pass_hash, "repositories": {"*": ["pull"]}, **extra})


KINDS = ("p256", "rsa", "ed25519")


@pytest.fixture(scope="module")
def key_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """One key of each kind, and a second one ("other-…"), made once: RSA keys are slow."""
    pairs = {}
    for kind in KINDS:
        for name in (kind, f"other-{kind}"):
            pairs[name] = write_key_pair(tmp_path_factory.mktemp(name), kind)
    return pairs


@pytest.fixture(params=KINDS)
def key_files(
    request: pytest.FixtureRequest, key_pairs: dict[str, tuple[Path, Path]]
) -> tuple[Path, Path]:
    return key_pairs[request.param]


@pytest.fixture
def key(key_files: tuple[Path, Path]) -> SigningKey:
    return load_signing_key(*key_files)


@pytest.fixture
def tokens(key: SigningKey) -> RefreshTokens:
    return RefreshTokens(key, ISSUER, DEFAULT_TTL)


def refusal(tokens: RefreshTokens, token: str, current: Policy, now: float = NOW + 60) -> str:
    with pytest.raises(InvalidRefreshToken) as caught:
        tokens.verify(token, current, now)
    return caught.value.reason


def test_round_trip(tokens: RefreshTokens, key_files: tuple[Path, Path]) -> None:
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    identity = tokens.verify(token, alice(), NOW + 86400)
    assert identity == RefreshIdentity(
        "alice", USERS, identity.jti, int(NOW), int(NOW) + DEFAULT_TTL
    )
    assert identity.jti
    header, _ = verify_jwt(token, load_certificate(key_files[1]))
    assert header["typ"] == REFRESH_TYP
    assert "x5c" not in header
    assert len(token) < 800, "clients keep it in config.json"


def test_the_registry_would_refuse_it(tokens: RefreshTokens, key_files: tuple[Path, Path]) -> None:
    """Its audience is no registry's service, it holds no access and no chain to verify it by."""
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    header, claims = verify_jwt(token, load_certificate(key_files[1]))
    assert claims["aud"] == REFRESH_AUDIENCE != SERVICE
    assert claims["token_use"] == "refresh"
    assert "access" not in claims
    assert "x5c" not in header
    assert HASH not in json.dumps(claims)
    assert HASH[29:] not in json.dumps(claims)


def test_same_key_in_another_form_and_kid_form_accepts_it(
    key_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Every daemon sharing the key agrees, whichever PEM encoding or kid form it was given."""
    key_path, cert_path = key_files
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    other_form = tmp_path / "same.key"
    other_form.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8  # Ed25519 has no other PEM form
            if isinstance(private, ed25519.Ed25519PrivateKey)
            else serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    first = RefreshTokens(load_signing_key(key_path, cert_path), ISSUER)
    second = RefreshTokens(load_signing_key(other_form, kid_form="thumbprint"), ISSUER)
    token = first.issue("alice", USERS, HASH.encode(), NOW)
    assert second.verify(token, alice(), NOW + 1).account == "alice"


def test_removed_account(tokens: RefreshTokens) -> None:
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    bob = policy(bob={"pass_hash": HASH})
    assert refusal(tokens, token, bob) == "unknown account"


def test_changed_password_hash(tokens: RefreshTokens) -> None:
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    assert refusal(tokens, token, alice(OTHER_HASH)) == "revoked: password changed"
    assert tokens.verify(token, alice(HASH), NOW + 1).account == "alice"


def test_hash_of_another_account_does_not_transfer(tokens: RefreshTokens) -> None:
    """The fingerprint binds the account too: equal hashes do not make tokens interchangeable."""
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    forged_claims = tokens.read(token, NOW + 1)
    bob = policy(bob={"pass_hash": HASH})
    with pytest.raises(InvalidRefreshToken, match="password changed"):
        tokens.admit(
            type(forged_claims)(
                "bob",
                USERS,
                forged_claims.password_fingerprint,
                forged_claims.jti,
                forged_claims.issued_at,
                forged_claims.expires_at,
            ),
            bob.users["bob"].pass_hash,
            None,
        )


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_tokens_valid_after(tokens: RefreshTokens) -> None:
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    later = alice(tokens_valid_after=rfc3339(NOW + 1))
    assert refusal(tokens, token, later) == "revoked: tokens_valid_after"
    for at in (NOW - 3600, NOW):
        current = alice(tokens_valid_after=rfc3339(at))
        assert tokens.verify(token, current, NOW + 60).account == "alice"
    fresh = tokens.issue("alice", USERS, HASH.encode(), NOW + 2)
    assert tokens.verify(fresh, later, NOW + 60).account == "alice"


def test_expiry(key: SigningKey) -> None:
    tokens = RefreshTokens(key, ISSUER, 3600)
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    assert tokens.verify(token, alice(), NOW + 3599).expires_at == int(NOW) + 3600
    assert refusal(tokens, token, alice(), NOW + 3600) == "expired"


def test_a_shorter_ttl_shortens_tokens_already_out_and_zero_turns_them_off(
    key: SigningKey,
) -> None:
    token = RefreshTokens(key, ISSUER, DEFAULT_TTL).issue("alice", USERS, HASH.encode(), NOW)
    shorter = RefreshTokens(key, ISSUER, 3600)
    assert shorter.verify(token, alice(), NOW + 3599).account == "alice"
    assert refusal(shorter, token, alice(), NOW + 3600) == "expired"
    off = RefreshTokens(key, ISSUER, 0)
    assert not off.issuing
    assert refusal(off, token, alice(), NOW + 1) == "expired"
    with pytest.raises(ValueError, match="off"):
        off.issue("alice", USERS, HASH.encode(), NOW)


def test_another_signing_key(
    tokens: RefreshTokens, key_pairs: dict[str, tuple[Path, Path]], key_files: tuple[Path, Path]
) -> None:
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    for name, files in key_pairs.items():
        if files != key_files:
            other = RefreshTokens(load_signing_key(*files), ISSUER)
            assert refusal(other, token, alice()) == UNKNOWN_KEY, name


def test_another_issuer(key: SigningKey) -> None:
    token = RefreshTokens(key, "other", DEFAULT_TTL).issue("alice", USERS, HASH.encode(), NOW)
    assert refusal(RefreshTokens(key, ISSUER), token, alice()) == "other issuer"


def test_access_token_is_not_a_refresh_token(tokens: RefreshTokens, key: SigningKey) -> None:
    access = TokenIssuer(key, ISSUER, 300).issue(
        "alice", SERVICE, [ResourceScope("repository", "a", ("pull",))], NOW
    )
    assert refusal(tokens, access.token, alice()) == "not a refresh token"


def test_refresh_header_without_the_refresh_claim_is_refused(
    tokens: RefreshTokens, key: SigningKey
) -> None:
    """Both marks are checked: a signed token with our header but no ``token_use`` is refused."""
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    header = json.loads(unb64(token.split(".")[0]))
    signer = SigningKey(alg=key.alg, kid=header["kid"], header=header, jose_key=key.jose_key)
    claims = json.loads(unb64(token.split(".")[1]))
    for changed in ({"token_use": "access"}, {"aud": SERVICE}):
        assert refusal(tokens, signer.sign({**claims, **changed}), alice()) == (
            "not a refresh token"
        )
    del claims["token_use"]
    assert refusal(tokens, signer.sign(claims), alice()) == "not a refresh token"
    assert tokens.verify(signer.sign({**claims, "token_use": "refresh"}), alice(), NOW + 1)


def test_tampered_payload(tokens: RefreshTokens) -> None:
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    header, payload, signature = token.split(".")
    claims = json.loads(unb64(payload))
    for changed in ({"sub": "bob"}, {"exp": claims["exp"] + 10**8}, {"iat": claims["iat"] + 10}):
        forged = b64(json.dumps({**claims, **changed}, separators=(",", ":")).encode())
        current = policy(alice={"pass_hash": HASH}, bob={"pass_hash": HASH})
        assert refusal(tokens, f"{header}.{forged}.{signature}", current) == "bad signature"


def test_tampered_signature(tokens: RefreshTokens) -> None:
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    header, payload, signature = token.split(".")
    flipped = bytearray(unb64(signature))
    flipped[5] ^= 1
    assert refusal(tokens, f"{header}.{payload}.{b64(bytes(flipped))}", alice()) == (
        "bad signature"
    )
    assert refusal(tokens, f"{header}.{payload}.", alice()) == "bad signature"


@pytest.mark.parametrize("alg", ["none", "HS256", "ES256", "RS256", "EdDSA", "ES384"])
def test_other_algorithms(tokens: RefreshTokens, key: SigningKey, alg: str) -> None:
    """``none``, HMAC with the public key as secret, or any alg but the key's own: refused."""
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    segments = token.split(".")
    header = json.loads(unb64(segments[0]))
    if alg == key.alg:
        return
    header["alg"] = alg
    forged_header = b64(json.dumps(header, separators=(",", ":")).encode())
    for signature in ("", segments[2]):
        forged = f"{forged_header}.{segments[1]}.{signature}"
        assert refusal(tokens, forged, alice()) == "bad signature"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "x" * (MAX_TOKEN_CHARS + 1),
        "é.é.é",
        "!!!.e30.",
        b64(b"[" * 3000) + ".e30.",
        b64(b"[1]") + ".e30.",
        b64(b"not json") + ".e30.",
    ],
)
def test_malformed(tokens: RefreshTokens, token: str) -> None:
    assert refusal(tokens, token, alice()) == "malformed"


def test_oversized_valid_looking_token_is_refused_before_parsing(tokens: RefreshTokens) -> None:
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    header, payload, signature = token.split(".")
    padded = f"{header}.{payload}.{signature}" + "A" * (MAX_TOKEN_CHARS - len(token) + 1)
    assert refusal(tokens, padded, alice()) == "malformed"


def test_other_sources_are_checked_by_their_own_lookup(tokens: RefreshTokens) -> None:
    """A directory account is not in users.json: verify() refuses, read() + admit() serve it."""
    stamp = b"pwdChangedTime=20250101000000Z"
    token = tokens.issue("carol", "ldap", stamp, NOW)
    assert refusal(tokens, token, alice()) == "unknown source"
    claims = tokens.read(token, NOW + 1)
    assert (claims.account, claims.source) == ("carol", "ldap")
    assert tokens.admit(claims, stamp, None).account == "carol"
    with pytest.raises(InvalidRefreshToken, match="password changed"):
        tokens.admit(claims, b"pwdChangedTime=20250202000000Z", None)


class CountingVerify:
    def __init__(self, tokens: RefreshTokens, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._verify = tokens._verify
        monkeypatch.setattr(tokens, "_verify", self)

    def __call__(self, message: bytes, signature: bytes, key: Any, /) -> bool:
        self.calls += 1
        return self._verify(message, signature, key)


def test_a_token_seen_before_costs_no_signature_check_but_is_still_revocable(
    key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = RefreshTokens(key, ISSUER, 3600)
    checks = CountingVerify(tokens, monkeypatch)
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    for _ in range(3):
        assert tokens.verify(token, alice(), NOW + 1).account == "alice"
    assert checks.calls == 1
    assert refusal(tokens, token, alice(OTHER_HASH)) == "revoked: password changed"
    later = alice(tokens_valid_after=rfc3339(NOW + 1))
    assert refusal(tokens, token, later) == "revoked: tokens_valid_after"
    assert refusal(tokens, token, policy(bob={"pass_hash": HASH})) == "unknown account"
    assert refusal(tokens, token, alice(), NOW + 3600) == "expired"
    assert checks.calls == 1


def test_the_cache_is_bounded_and_holds_only_valid_signatures(
    key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = RefreshTokens(key, ISSUER, cache_size=2)
    checks = CountingVerify(tokens, monkeypatch)
    issued = [tokens.issue("alice", USERS, HASH.encode(), NOW) for _ in range(3)]
    for token in issued:
        tokens.verify(token, alice(), NOW + 1)
    assert len(tokens._verified) == 2
    tokens.verify(issued[0], alice(), NOW + 1)
    assert checks.calls == 4, "the oldest was dropped, so it was checked again"
    header, payload, _ = issued[0].split(".")
    forged = f"{header}.{payload}.{issued[1].split('.')[2]}"
    for _ in range(2):
        assert refusal(tokens, forged, alice()) == "bad signature"
    assert forged not in tokens._verified


def test_fingerprint_names_a_token_without_revealing_it(tokens: RefreshTokens) -> None:
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    other = tokens.issue("alice", USERS, HASH.encode(), NOW)
    assert token != other
    assert len(fingerprint(token)) == 12
    assert fingerprint(token) == fingerprint(token) != fingerprint(other)
    assert fingerprint(token) not in token
    assert len(fingerprint("x" * 100_000)) == 12


CURVES = {
    "ES256": (ec.SECP256R1(), hashes.SHA256(),
              0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
    "ES384": (ec.SECP384R1(), hashes.SHA384(), int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196A"
        "CCC52973", 16)),
    "ES512": (ec.SECP521R1(), hashes.SHA512(), int(
        "1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "A51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409", 16)),
}  # fmt: skip
"""Each curve, its hash and its group order n, written out here independently of tokend."""


def twin_signature(token: str, n: int) -> str:
    """The token with its ECDSA signature (r, s) replaced by (r, n - s)."""
    header, payload, signature = token.split(".")
    raw = unb64(signature)
    half = len(raw) // 2
    s = int.from_bytes(raw[half:], "big")
    return f"{header}.{payload}.{b64(raw[:half] + (n - s).to_bytes(half, 'big'))}"


@pytest.mark.parametrize("alg", sorted(CURVES))
def test_a_twin_ecdsa_signature_is_the_same_token(
    tmp_path: Path, alg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(r, n - s) verifies as well as (r, s): one token, one fingerprint, one cache entry."""
    curve, digest, n = CURVES[alg]
    private = ec.generate_private_key(curve)
    key_path, cert_path = tmp_path / "k.key", tmp_path / "k.crt"
    write_private_key(key_path, private)
    cert_path.write_bytes(self_signed(private).public_bytes(serialization.Encoding.PEM))
    key = load_signing_key(key_path, cert_path)
    assert key.alg == alg
    tokens = RefreshTokens(key, ISSUER, 3600)
    checks = CountingVerify(tokens, monkeypatch)
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    twin = twin_signature(token, n)
    header, payload, signature = twin.split(".")
    raw = unb64(signature)
    r, s = int.from_bytes(raw[: len(raw) // 2], "big"), int.from_bytes(raw[len(raw) // 2 :], "big")
    # The twin is a valid signature in its own right, as cryptography (and joserfc) check it.
    private.public_key().verify(
        utils.encode_dss_signature(r, s), f"{header}.{payload}".encode(), ec.ECDSA(digest)
    )
    assert twin != token
    for form in (token, twin, token, twin):
        assert tokens.verify(form, alice(), NOW + 1).account == "alice"
        assert fingerprint(form) == fingerprint(token)
    assert checks.calls == 1, "the twin was found in the verified-signature cache"
    assert len(tokens._verified) == 1
    assert refusal(tokens, twin, alice(OTHER_HASH)) == "revoked: password changed"


def test_the_log_names_a_twin_signature_by_the_issued_tokens_fingerprint(
    tmp_path: Path,
) -> None:
    realm = Realm(tmp_path, refresh_ttl=3600)
    assert realm.signing_key.alg == "ES256"
    with capturedLogs() as events:
        token = offline_login(realm)["refresh_token"]
        twin = twin_signature(token, CURVES["ES256"][2])
        assert refresh(realm, twin, "repository:public/hello:pull")[0] == 200
    issued, refreshed = [formatEvent(e) for e in events if "outcome" in e]
    named = issued.rsplit("refresh token ", 1)[1]
    assert named == fingerprint(token) and refreshed.endswith(f"refresh token {named}")


# users.json: tokens_valid_after


@pytest.mark.parametrize(
    ("written", "moment"),
    [
        ("2025-06-30T12:00:00Z", datetime(2025, 6, 30, 12, tzinfo=UTC)),
        ("2025-06-30t12:00:00z", datetime(2025, 6, 30, 12, tzinfo=UTC)),
        ("2025-06-30T14:00:00+02:00", datetime(2025, 6, 30, 12, tzinfo=UTC)),
        ("2025-06-30T07:30:00-04:30", datetime(2025, 6, 30, 12, tzinfo=UTC)),
        ("2025-06-30T12:00:00.250Z", datetime(2025, 6, 30, 12, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_tokens_valid_after_is_read_as_rfc_3339(written: str, moment: datetime) -> None:
    user = alice(tokens_valid_after=written).users["alice"]
    assert user.tokens_valid_after == moment.timestamp()


def test_tokens_valid_after_is_optional() -> None:
    assert alice().users["alice"].tokens_valid_after is None


@pytest.mark.parametrize(
    "written",
    [
        "2025-06-30",
        "2025-06-30T12:00:00",
        "2025-06-30 12:00:00Z",
        "2025-02-30T12:00:00Z",
        "2025-06-30T25:00:00Z",
        "2025-06-30T12:00:00+2:00",
        "yesterday",
        "",
        1750000000,
        True,
        ["2025-06-30T12:00:00Z"],
    ],
)
def test_a_bad_tokens_valid_after_names_file_user_and_key(written: object) -> None:
    with pytest.raises(PolicyError) as caught:
        alice(tokens_valid_after=written)
    error = caught.value
    assert (error.file, error.path) == ("users.json", "alice.tokens_valid_after")
    assert str(error).startswith("users.json: alice.tokens_valid_after: expected an RFC 3339 time")


def test_changing_tokens_valid_after_is_a_change_the_reload_reports() -> None:
    before = alice()
    after = alice(tokens_valid_after="2025-06-30T12:00:00Z")
    assert policy_change(before, after).changed == ("alice",)
    assert not policy_change(after, alice(tokens_valid_after="2025-06-30T14:00:00+02:00"))


def set_of(current: tuple[str, SigningKey], *previous: tuple[str, SigningKey]) -> KeySet:
    """A key set as a keys directory would give it: ``current``, then previous keys."""
    name, key = current
    return KeySet(
        SetKey(name, CURRENT, key, Path(f"{name}.key"), None),
        tuple(SetKey(n, PREVIOUS, k, Path(f"{n}.key"), None) for n, k in previous),
    )


def test_a_rotation_keeps_refresh_tokens_and_retiring_the_key_revokes_them(
    key_pairs: dict[str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed under A; B becomes current with A previous: still valid (nobody is logged out),
    new tokens come from B. A retired: A's tokens refuse, the verified cache included."""
    a, b = load_signing_key(*key_pairs["p256"]), load_signing_key(*key_pairs["rsa"])
    holder = KeyHolder(set_of(("a", a)), NOW)
    tokens = RefreshTokens(holder, ISSUER, DEFAULT_TTL)
    checks = CountingVerify(tokens, monkeypatch)
    under_a = tokens.issue("alice", USERS, HASH.encode(), NOW)
    assert tokens.verify(under_a, alice(), NOW + 1).account == "alice"

    holder.replace(set_of(("b", b), ("a", a)), NOW + 2)
    assert tokens.verify(under_a, alice(), NOW + 3).account == "alice"
    assert refusal(tokens, under_a, alice(OTHER_HASH)) == "revoked: password changed"
    under_b = tokens.issue("alice", USERS, HASH.encode(), NOW + 4)
    header, _ = verify_jwt(under_b, load_certificate(key_pairs["rsa"][1]))
    assert header["alg"] == "RS256"
    assert header["kid"] == str(b.jose_key.thumbprint())
    assert tokens.verify(under_b, alice(), NOW + 5).account == "alice"
    assert checks.calls == 2, "A's token stayed in the cache across the rotation"

    holder.replace(set_of(("b", b)), NOW + 6)
    assert refusal(tokens, under_a, alice()) == UNKNOWN_KEY
    assert tokens.verify(under_b, alice(), NOW + 7).account == "alice"

    holder.replace(set_of(("b", b), ("a", a)), NOW + 8)
    assert tokens.verify(under_a, alice(), NOW + 9).account == "alice", "trusted again"


def test_a_fixed_key_is_a_set_of_one(key: SigningKey) -> None:
    """Given one key (the tool, a test), tokens are signed and checked with it alone."""
    tokens = RefreshTokens(FixedKeys.of(key), ISSUER)
    token = tokens.issue("alice", USERS, HASH.encode(), NOW)
    assert RefreshTokens(key, ISSUER).verify(token, alice(), NOW + 1).account == "alice"
