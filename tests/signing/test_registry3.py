"""tokend's tokens against distribution 3.x's rules (tests/signing/registry3.py), for every key
type and both kid forms, over enough keys that EC coordinates with leading zero bytes occur."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from signing.registry3 import (
    CURVES,
    Refused,
    Registry3,
    StartupError,
    go_thumbprint,
    zero_leading_key,
)
from support import self_signed, write_private_key

from tokend.cli import main
from tokend.scope import ResourceScope
from tokend.signing.key_dir import activate, create_key, load_key_dir, retire
from tokend.signing.key_set import kid_only
from tokend.signing.keys import (
    jwk_thumbprint,
    libtrust_key_id,
    load_signing_key,
    registry_thumbprint,
)
from tokend.signing.tokens import TokenIssuer

NOW = float(int(time.time()))
"""A whole second, as tokens carry it, so the leeway boundaries below are exact."""
ISSUER, SERVICE = "tokend", "registry"
PULL = (ResourceScope("repository", "team/app", ("pull",)),)

KEY_COUNTS = {"P-256": 300, "P-384": 120, "P-521": 40, "RSA-2048": 3, "Ed25519": 20}
"""Random keys per type: with 300 P-256 keys a coordinate starting with a zero byte turns up
about twice in three runs; the zero-leading keys below make sure of it every run."""


def new_key(kind: str) -> Any:
    if kind in CURVES:
        return ec.generate_private_key(CURVES[kind])
    if kind == "RSA-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ed25519.Ed25519PrivateKey.generate()


@dataclass(frozen=True)
class Pair:
    kind: str
    key_path: Path
    cert_path: Path
    certificate: x509.Certificate

    @property
    def public_key(self) -> Any:
        return self.certificate.public_key()


def write_pair(directory: Path, kind: str, index: int, key: Any) -> Pair:
    key_path, cert_path = directory / f"{kind}-{index}.key", directory / f"{kind}-{index}.crt"
    write_private_key(key_path, key)
    certificate = self_signed(key)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Pair(kind, key_path, cert_path, certificate)


@pytest.fixture(scope="module")
def zero_leading(tmp_path_factory: pytest.TempPathFactory) -> list[Pair]:
    directory = tmp_path_factory.mktemp("zero-leading")
    return [
        write_pair(directory, kind, which, zero_leading_key(kind, which))
        for kind in CURVES
        for which in (0, 1)
    ]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory, zero_leading: list[Pair]) -> list[Pair]:
    directory = tmp_path_factory.mktemp("keys")
    generated = [
        write_pair(directory, kind, index, new_key(kind))
        for kind, count in KEY_COUNTS.items()
        for index in range(count)
    ]
    return [*zero_leading, *generated]


def issue(key_path: Path, cert_path: Path | None, kid_form: str) -> str:
    """A token as the daemon issues it: the real key loading and TokenIssuer."""
    signing_key = load_signing_key(key_path, cert_path, kid_form, now=NOW)
    return TokenIssuer(signing_key, ISSUER, 300).issue("alice", SERVICE, PULL, NOW).token


def bundle_registry(*roots: x509.Certificate, **options: Any) -> Registry3:
    return Registry3.configure(ISSUER, SERVICE, roots=roots, **options)


def test_the_zero_leading_keys_disagree_between_rfc_7638_and_the_registry(
    zero_leading: list[Pair],
) -> None:
    for pair in zero_leading:
        assert jwk_thumbprint(pair.public_key) != go_thumbprint(pair.public_key), pair.kind


def test_registry_thumbprint_is_what_get_jwk_thumbprint_computes(pairs: list[Pair]) -> None:
    differing = set()
    for pair in pairs:
        assert registry_thumbprint(pair.public_key) == go_thumbprint(pair.public_key), pair
        if registry_thumbprint(pair.public_key) != jwk_thumbprint(pair.public_key):
            differing.add(pair.kind)
    # Only EC coordinates are fixed-size in RFC 7518; RSA n/e and Ed25519 x agree.
    assert differing == {"P-256", "P-384", "P-521"}


@pytest.mark.parametrize("with_x5c", [True, False], ids=["x5c", "kid-only"])
def test_thumbprint_kid_tokens_pass_registry_3_for_every_key(
    pairs: list[Pair], with_x5c: bool
) -> None:
    for pair in pairs:
        token = issue(pair.key_path, pair.cert_path if with_x5c else None, "thumbprint")
        claims = bundle_registry(pair.certificate).verify(token, NOW)
        assert claims["sub"] == "alice", pair


def test_libtrust_kid_tokens_pass_registry_3_through_x5c(pairs: list[Pair]) -> None:
    for pair in pairs:
        token = issue(pair.key_path, pair.cert_path, "libtrust")
        assert bundle_registry(pair.certificate).verify(token, NOW)["aud"] == [SERVICE], pair


def test_libtrust_kid_without_x5c_is_unknown_to_registry_3(zero_leading: list[Pair]) -> None:
    pair = zero_leading[0]
    with pytest.raises(Refused, match="untrusted key with ID"):
        bundle_registry(pair.certificate).verify(issue(pair.key_path, None, "libtrust"), NOW)


def test_an_rfc_7638_kid_for_a_zero_leading_key_is_refused(zero_leading: list[Pair]) -> None:
    """Why tokend sends the registry's thumbprint: the standard one is a key it does not know."""
    for pair in zero_leading:
        signing_key = load_signing_key(pair.key_path, None, "thumbprint", now=NOW)
        standard = type(signing_key)(
            alg=signing_key.alg,
            kid=jwk_thumbprint(pair.public_key),
            header={**signing_key.header, "kid": jwk_thumbprint(pair.public_key)},
            jose_key=signing_key.jose_key,
        )
        token = TokenIssuer(standard, ISSUER, 300).issue("alice", SERVICE, PULL, NOW).token
        with pytest.raises(Refused, match="untrusted key with ID"):
            bundle_registry(pair.certificate).verify(token, NOW)


def test_jwks_kids_are_taken_as_given(zero_leading: list[Pair]) -> None:
    pair = zero_leading[0]
    signing_key = load_signing_key(pair.key_path, None, "thumbprint", now=NOW)
    jwk = {**signing_key.jose_key.as_dict(private=False), "kid": signing_key.kid}
    registry = Registry3.configure(ISSUER, SERVICE, jwks={"keys": [jwk]})
    assert registry.verify(issue(pair.key_path, None, "thumbprint"), NOW)["sub"] == "alice"
    renamed = Registry3.configure(ISSUER, SERVICE, jwks={"keys": [{**jwk, "kid": "other"}]})
    with pytest.raises(Refused, match="untrusted key"):
        renamed.verify(issue(pair.key_path, None, "thumbprint"), NOW)


def test_a_jwks_with_shortened_coordinates_stops_the_registry(zero_leading: list[Pair]) -> None:
    """go-jose refuses EC coordinates shorter than the curve: a JWKS must not use the registry's
    own big.Int encoding."""
    pair = zero_leading[0]
    jwk = load_signing_key(pair.key_path).jose_key.as_dict(private=False)
    with pytest.raises(StartupError, match="wrong length"):
        Registry3.configure(ISSUER, SERVICE, jwks={"keys": [{**jwk, "x": jwk["x"][1:]}]})


def test_a_bad_x5c_does_not_fall_back_to_the_kid(tmp_path: Path, zero_leading: list[Pair]) -> None:
    pair, stranger = zero_leading[0], zero_leading[2]
    token = issue(pair.key_path, pair.cert_path, "thumbprint")
    with pytest.raises(Refused, match="unknown authority"):
        bundle_registry(stranger.certificate).verify(token, NOW)
    # With its own certificate in the bundle too, the chain verifies.
    both = bundle_registry(stranger.certificate, pair.certificate)
    assert both.verify(token, NOW)["sub"] == "alice"


def test_claims_rules(zero_leading: list[Pair]) -> None:
    pair = zero_leading[0]
    token = issue(pair.key_path, pair.cert_path, "thumbprint")
    registry = bundle_registry(pair.certificate)
    assert registry.verify(token, NOW + 300 + 60)
    with pytest.raises(Refused, match="expired"):
        registry.verify(token, NOW + 300 + 62)
    assert registry.verify(token, NOW - 10 - 60)
    with pytest.raises(Refused, match="not valid yet"):
        registry.verify(token, NOW - 10 - 62)
    with pytest.raises(Refused, match="untrusted issuer"):
        Registry3.configure("Tokend", SERVICE, roots=[pair.certificate]).verify(token, NOW)
    with pytest.raises(Refused, match="another audience"):
        Registry3.configure(ISSUER, "registry2", roots=[pair.certificate]).verify(token, NOW)


def test_signing_algorithms_restrict_alg(zero_leading: list[Pair]) -> None:
    pair = zero_leading[0]
    token = issue(pair.key_path, pair.cert_path, "thumbprint")
    assert bundle_registry(pair.certificate, signing_algorithms=["ES256"]).verify(token, NOW)
    with pytest.raises(Refused, match="not allowed"):
        bundle_registry(pair.certificate, signing_algorithms=["RS256"]).verify(token, NOW)
    with pytest.raises(StartupError, match="unsupported signing algorithm"):
        bundle_registry(pair.certificate, signing_algorithms=["ES257"])


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdin=io.StringIO(), stdout=out), out.getvalue()


def test_tokend_kid_says_when_the_registry_thumbprint_differs(
    zero_leading: list[Pair], pairs: list[Pair]
) -> None:
    pair = zero_leading[0]
    code, out = run("kid", str(pair.cert_path))
    assert code == 0
    assert f"thumbprint {go_thumbprint(pair.public_key)}" in out
    assert f"rfc7638    {jwk_thumbprint(pair.public_key)}" in out
    assert "leading zero bytes" in out
    code, out = run("kid", "--json", str(pair.cert_path))
    assert json.loads(out) == {
        "libtrust": libtrust_key_id(pair.public_key),
        "thumbprint": go_thumbprint(pair.public_key),
        "rfc7638": jwk_thumbprint(pair.public_key),
    }
    rsa_pair = next(p for p in pairs if p.kind == "RSA-2048")
    code, out = run("kid", str(rsa_pair.cert_path))
    assert (code, "rfc7638" in out) == (0, False)


@pytest.mark.parametrize("kid_form", ["libtrust", "thumbprint"])
def test_a_jwks_only_registry_3_trusts_a_keys_directory_sent_without_x5c(
    tmp_path: Path, kid_form: str
) -> None:
    """``tokend keys jwks`` for a 3.x registry with no rootcertbundle: the daemon's tokens
    carry x5c (refused: no fallback to the kid) unless --no-x5c, which sends the kid the JWKS
    names, for every key type, before and after a rotation."""
    keys = tmp_path / "keys"
    create_key(keys, now=NOW)  # NOW is the module's: the suite may have taken minutes since
    for key_type in ("P-384", "P-521", "RSA-2048", "Ed25519"):
        create_key(keys, key_type=key_type, now=NOW)
        out = io.StringIO()
        assert main(["keys", "jwks", "--keys-dir", str(keys), "--kid", kid_form], stdout=out) == 0
        registry = Registry3.configure(ISSUER, SERVICE, jwks=json.loads(out.getvalue()))
        for step in ("current", "next once activated"):
            if step != "current":
                activate(keys, now=NOW)
            loaded = load_key_dir(keys, kid_form, NOW)
            with_x5c = TokenIssuer(loaded, ISSUER, 300).issue("alice", SERVICE, PULL, NOW)
            with pytest.raises(Refused):
                registry.verify(with_x5c.token, NOW)
            kid_only_token = TokenIssuer(kid_only(loaded), ISSUER, 300).issue(
                "alice", SERVICE, PULL, NOW
            )
            assert registry.verify(kid_only_token.token, NOW)["sub"] == "alice", (key_type, step)
        retire(keys, None)
