"""A platform JWT against one trust: good tokens of every accepted algorithm family, and every
attack of issue #25 refused with a reason that never holds the token."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc.errors import SecurityWarning
from joserfc.jwk import RSAKey
from minting import (
    AUDIENCE,
    GITHUB,
    NOW,
    IssuerKey,
    github_claims,
    hs256,
    jwks,
    kubernetes_claims,
    segment,
    trust,
    unsigned,
)

from tokend.login.federation.verify import (
    MAX_TOKEN_CHARS,
    FederatedRefused,
    audiences,
    read_unverified,
    verify,
)

TRUST = trust()
RSA = IssuerKey.generate("RS256", "rsa-1")
NAN = segment(b'{"exp": NaN}')
TWICE = segment(b'{"alg": "RS256", "alg": "none"}')


def refusal(token: str, keys: dict[str, Any] | None = None, trust: Any = TRUST) -> str:
    with pytest.raises(FederatedRefused) as refused:
        verify(token, trust, jwks(RSA) if keys is None else keys, NOW)
    assert not token or token not in refused.value.reason
    return refused.value.reason


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS512", "ES256", "ES384"])
def test_a_good_token_of_each_algorithm_gives_its_claims(alg: str) -> None:
    key = IssuerKey.generate(alg, f"{alg}-key")
    token = key.sign(github_claims())
    claims = verify(token, TRUST, jwks(RSA, key), NOW)
    assert claims["repository"] == "acme/widget"
    assert claims["exp"] == int(NOW) + 295


def test_an_eddsa_token_is_accepted() -> None:
    key = IssuerKey.generate("EdDSA", "ed-1")
    assert verify(key.sign(github_claims()), TRUST, jwks(key), NOW)["actor"] == "octocat"


def test_a_kubernetes_token_with_a_list_audience_and_no_kid_is_accepted() -> None:
    cluster = "https://kubernetes.default.svc.cluster.local"
    key = IssuerKey.generate("ES256", "cluster")
    token = key.sign(kubernetes_claims(cluster), kid=None, typ=None)
    trust = replace(TRUST, name="cluster", issuer=cluster)
    claims = verify(token, trust, jwks(key, RSA), NOW)
    assert claims["kubernetes.io"]["serviceaccount"]["name"] == "builder"
    assert audiences(claims) == [AUDIENCE]


def test_without_a_kid_two_keys_of_the_type_are_ambiguous() -> None:
    other = IssuerKey.generate("RS256", "rsa-2")
    reason = refusal(RSA.sign(github_claims(), kid=None), jwks(RSA, other))
    assert reason == "the token names no kid and the issuer has 2 RS256 keys"


def test_alg_none_is_refused() -> None:
    assert refusal(unsigned(github_claims(), "rsa-1")) == "algorithm 'none' is not accepted"


def test_hs256_signed_with_the_issuers_public_key_is_refused() -> None:
    pem = RSA.key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(RSA.jwk).encode()):
        token = hs256(github_claims(), secret, "rsa-1")
        assert refusal(token) == "algorithm 'HS256' is not accepted"


def test_a_kid_not_in_the_key_set_is_refused() -> None:
    stranger = IssuerKey.generate("RS256", "rsa-9")
    assert refusal(stranger.sign(github_claims())) == "no RS256 key 'rsa-9' in the issuer's key set"


def test_a_key_of_the_issuer_used_with_another_algorithm_is_refused() -> None:
    ps = IssuerKey("PS256", "rsa-1", RSA.key)
    assert refusal(ps.sign(github_claims())) == "no PS256 key 'rsa-1' in the issuer's key set"


def test_another_key_under_a_known_kid_is_a_bad_signature() -> None:
    forger = IssuerKey.generate("RS256", "rsa-1")
    assert refusal(forger.sign(github_claims())) == "bad signature"


@pytest.mark.parametrize("header", ["jwk", "jku", "x5u", "x5c", "crit"])
def test_a_token_naming_its_own_key_is_refused(header: str) -> None:
    attacker = IssuerKey.generate("RS256", "rsa-1")
    value: Any = {
        "jwk": attacker.jwk,
        "jku": "https://attacker.example/jwks",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIB"],
        "crit": ["exp"],
    }[header]
    token = attacker.sign(github_claims(), **{header: value})
    assert refusal(token) == f"a {header} header (keys come from the trust alone)"
    with pytest.raises(FederatedRefused):
        read_unverified(token)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (github_claims(iss="https://gitlab.example.com"), "the issuer is not github-actions's"),
        (github_claims(iss=None), "the issuer is not github-actions's"),
        (github_claims(aud="https://other.example.com"), "the audience is not github-actions's"),
        (github_claims(aud=["a", "b"]), "the audience is not github-actions's"),
        (github_claims(aud=None), "the audience is not github-actions's"),
        (github_claims(exp=int(NOW) - 1), "expired"),
        (github_claims(exp=int(NOW)), "expired"),
        (github_claims(exp=None), "no exp (a token without an end is refused)"),
        (github_claims(exp="2099-01-01"), "exp is not a number"),
        (github_claims(exp=True), "exp is not a number"),
        (github_claims(nbf=int(NOW) + 61), "not valid yet (nbf)"),
        (github_claims(iat=int(NOW) + 61), "issued in the future (iat)"),
    ],
)
def test_claims_that_do_not_fit_the_trust_are_refused(claims: dict[str, Any], reason: str) -> None:
    assert refusal(RSA.sign(claims)) == reason


def test_nbf_and_iat_within_the_leeway_are_accepted() -> None:
    claims = github_claims(nbf=int(NOW) + 60, iat=int(NOW) + 60)
    assert verify(RSA.sign(claims), TRUST, jwks(RSA), NOW)["nbf"] == int(NOW) + 60


def test_a_list_audience_containing_the_trusts_is_accepted() -> None:
    claims = github_claims(aud=["https://other.example.com", AUDIENCE])
    assert verify(RSA.sign(claims), TRUST, jwks(RSA), NOW)["iss"] == GITHUB


def test_a_token_older_than_the_trust_allows_is_refused() -> None:
    trust = replace(TRUST, max_token_age=600)
    old = github_claims(iat=int(NOW) - 601, nbf=int(NOW) - 601)
    assert refusal(RSA.sign(old), trust=trust) == "older than 600 s"
    assert refusal(RSA.sign(github_claims(iat=None)), trust=trust) == (
        "no iat, and the trust bounds the token's age"
    )
    fresh = github_claims(iat=int(NOW) - 600)
    assert verify(RSA.sign(fresh), trust, jwks(RSA), NOW)["iat"] == int(NOW) - 600


def test_a_token_of_trust_a_is_refused_by_trust_b() -> None:
    gitlab = replace(TRUST, name="gitlab", issuer="https://gitlab.example.com")
    assert refusal(RSA.sign(github_claims()), trust=gitlab) == "the issuer is not gitlab's"


def test_a_megabyte_token_is_refused_before_it_is_decoded() -> None:
    huge = RSA.sign(github_claims(padding="x" * 1_000_000))
    assert len(huge) > 1_000_000
    assert refusal(huge) == f"a token over {MAX_TOKEN_CHARS} characters"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "no token"),
        ("a.b", "not a compact JWS (three dot-separated parts)"),
        ("a.b.c.d.e", "not a compact JWS (three dot-separated parts)"),
        ("e30=.e30.", "the header is not base64url"),
        (f"{segment(b'[1]')}.e30.", "the header is not a JSON object"),
        (f"{segment(b'{')}.e30.", "the header is not JSON"),
        ("e30.e30.", "no alg in the header"),
        (f"{segment({'alg': 'RS256'})}.{segment(b'1')}.", "the payload is not a JSON object"),
        (
            f"{segment({'alg': 'RS256'})}.{NAN}.",
            "a JSON NaN in the token",
        ),
        (
            f"{TWICE}.e30.",
            "a member 'alg' twice in the token",
        ),
        (f"{segment({'alg': 'RS256', 'kid': 7})}.e30.", "a kid that is not a string"),
    ],
)
def test_malformed_tokens_are_refused(token: str, reason: str) -> None:
    assert refusal(token) == reason


def test_a_bad_signature_segment_is_refused() -> None:
    token = RSA.sign(github_claims())
    assert refusal(token[:-4] + "!!!!") == "the signature is not base64url"
    assert refusal(token.rsplit(".", 1)[0] + ".") == "bad signature"


def test_a_small_rsa_key_in_the_key_set_is_refused() -> None:
    with pytest.warns(SecurityWarning):
        weak = IssuerKey("RS256", "weak", RSAKey.generate_key(1024, private=True))
    reason = refusal(weak.sign(github_claims()), jwks(weak))
    assert reason == "the issuer's RSA key 'weak' is under 2048 bits"


def test_a_malformed_key_in_the_key_set_is_refused() -> None:
    broken = {"keys": [{**RSA.jwk, "n": base64.urlsafe_b64encode(b"\x00").decode()}]}
    assert refusal(RSA.sign(github_claims()), broken) in {
        "the issuer's key 'rsa-1' is malformed",
        "the issuer's RSA key 'rsa-1' is under 2048 bits",
    }
    assert refusal(RSA.sign(github_claims()), {"nothing": []}) == (
        "the issuer's key set has no keys"
    )
