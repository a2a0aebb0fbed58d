"""docker-registry 2.8 accepts what tokend issues, through nginx, driven by skopeo.

Each scenario asserts the client's exit status and, where it matters, what the registry stored
(read from its filesystem storage, not from the same HTTP path the client used).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from e2e.stack import ISSUER, SERVICE, Stack
from support import load_certificate, verify_jwt, write_key_pair

pytestmark = pytest.mark.e2e

DENIED = ("denied", "unauthorized", "authentication required", "401", "403")
SEEDED = "seed/app"
"""Pushed once per module by the push user: what the read-only scenarios read."""


def refused(stderr: str) -> bool:
    return any(word in stderr.lower() for word in DENIED)


def pulled_manifest(target: Path) -> str:
    index = json.loads((target / "index.json").read_text())
    return str(index["manifests"][0]["digest"])


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> str:
    """The manifest digest of ``seed/app:latest``, pushed by ``bar``."""
    image = stack.new_image()
    result = stack.push(image, SEEDED, "bar:bar")
    assert result.ok, result.stderr
    return image.manifest_digest


def test_push_by_a_push_user_is_stored_and_visible(stack: Stack) -> None:
    image = stack.new_image()
    result = stack.push(image, "team/app", "bar:bar")
    assert result.ok, result.stderr
    assert stack.stored_tag("team/app") == image.manifest_digest

    inspect = stack.skopeo(
        "inspect", "--tls-verify=false", "--creds", "bar:bar", f"docker://{stack.registry}/team/app"
    )
    assert inspect.ok, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == image.manifest_digest
    tags = stack.skopeo(
        "list-tags",
        "--tls-verify=false",
        "--creds",
        "bar:bar",
        f"docker://{stack.registry}/team/app",
    )
    assert tags.ok, tags.stderr
    assert json.loads(tags.stdout)["Tags"] == ["latest"]


def test_pull_only_user_pulls_but_cannot_push(stack: Stack, seeded: str) -> None:
    result, target = stack.pull(SEEDED, "foo:foo")
    assert result.ok, result.stderr
    assert pulled_manifest(target) == seeded

    before = stack.stored_files()
    for repository in (SEEDED, "team/foo-was-here"):
        denied = stack.push(stack.new_image(), repository, "foo:foo")
        assert not denied.ok, repository
        assert refused(denied.stderr), denied.stderr
    assert stack.stored_files() == before, "a refused push left something in the registry"
    assert stack.stored_tag(SEEDED) == seeded
    assert not stack.repository_exists("team/foo-was-here")


@pytest.mark.parametrize(
    ("user", "password"),
    [("bar", "wrong"), ("nobody", "bar"), ("bar", "")],
    ids=["wrong-password", "unknown-user", "empty-password"],
)
def test_bad_credentials_are_refused(stack: Stack, seeded: str, user: str, password: str) -> None:
    status, body = stack.token_response(f"repository:{SEEDED}:pull", user, password)
    assert status == 401, body

    before = stack.stored_files()
    pushed = stack.push(stack.new_image(), "team/bad-creds", f"{user}:{password}")
    assert not pushed.ok
    assert refused(pushed.stderr), pushed.stderr
    pulled, _ = stack.pull(SEEDED, f"{user}:{password}")
    assert not pulled.ok
    assert refused(pulled.stderr), pulled.stderr
    assert stack.stored_files() == before


def test_anonymous_pull_follows_the_whitelist_then_the_blacklist(stack: Stack) -> None:
    public, private = stack.new_image(), stack.new_image()
    assert stack.push(public, "public/hello", "bar:bar").ok
    assert stack.push(private, "private/thing", "bar:bar").ok

    result, target = stack.pull("public/hello", None)
    assert result.ok, result.stderr
    assert pulled_manifest(target) == public.manifest_digest
    result, _ = stack.pull("private/thing", None)
    assert not result.ok
    assert refused(result.stderr), result.stderr
    assert not stack.push(stack.new_image(), "public/hello", None).ok
    assert stack.stored_tag("public/hello") == public.manifest_digest

    original = stack.read("repositories.json")
    stack.rewrite("repositories.json", {**original, "blacklist": True})
    try:
        result, target = stack.pull("private/thing", None)
        assert result.ok, result.stderr
        assert pulled_manifest(target) == private.manifest_digest
        result, _ = stack.pull("public/hello", None)
        assert not result.ok
        assert refused(result.stderr), result.stderr
    finally:
        stack.rewrite("repositories.json", original)


def test_catalog_lists_pushed_repositories_for_an_authenticated_user(stack: Stack) -> None:
    assert stack.push(stack.new_image(), "catalog/one", "bar:bar").ok
    token = stack.token("registry:catalog:*", "foo", "foo")
    status, body = stack.https("/v2/_catalog", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    assert "catalog/one" in body["repositories"]

    anonymous = stack.token("registry:catalog:*")
    status, _ = stack.https("/v2/_catalog", {"Authorization": f"Bearer {anonymous}"})
    assert status == 401


def test_cross_repository_blob_mount(stack: Stack) -> None:
    image = stack.new_image()
    home = stack.client_home("mounter")  # skopeo's blob cache there remembers mount/source
    assert stack.push(image, "mount/source", "bar:bar", home=home).ok
    copied = stack.push(image, "mount/target", "bar:bar", home=home)
    assert copied.ok, copied.stderr
    assert stack.stored_tag("mount/target") == image.manifest_digest

    access_log = (stack.root / "nginx" / "access.log").read_text()
    mounts = [
        line
        for line in access_log.splitlines()
        if "POST /v2/mount/target/blobs/uploads/?" in line
        and "from=mount%2Fsource" in line
        and f"mount={quote(image.layer_digest)}" in line
    ]
    assert mounts, "skopeo did not mount the layer from mount/source"
    assert all('" 201 ' in line for line in mounts), mounts


def test_live_policy_change_grants_and_revokes_push(stack: Stack) -> None:
    certificate = load_certificate(stack.certs / "RootCA.crt")
    scope = "repository:live/foo-app:pull,push"

    def granted_actions() -> list[str]:
        _, claims = verify_jwt(stack.token(scope, "foo", "foo"), certificate)
        return [action for entry in claims["access"] for action in entry["actions"]]

    assert granted_actions() == ["pull"]
    original = stack.read("users.json")
    granted: dict[str, Any] = json.loads(json.dumps(original))
    granted["foo"]["repositories"]["*"] = ["pull", "push"]
    image = stack.new_image()

    stack.rewrite("users.json", granted)
    try:
        assert granted_actions() == ["pull", "push"]
        result = stack.push(image, "live/foo-app", "foo:foo")
        assert result.ok, result.stderr
        assert stack.stored_tag("live/foo-app") == image.manifest_digest
    finally:
        stack.rewrite("users.json", original)

    assert granted_actions() == ["pull"]
    again = stack.push(stack.new_image(), "live/foo-app-2", "foo:foo")
    assert not again.ok
    assert refused(again.stderr), again.stderr
    assert not stack.repository_exists("live/foo-app-2")


# --- tokens tokend did not sign ----------------------------------------------------------------
# Built by hand with ``cryptography``, independently of tokend's signing code. The same builder
# with tokend's own key is accepted, so a refusal can only be about the key or the signature.


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _libtrust_kid(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _x5c(certificate: x509.Certificate) -> list[str]:
    return [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]


def _jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def _claims(repository: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "sub": "bar",
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now - 10,
        "jti": uuid.uuid4().hex,
        "access": [{"type": "repository", "name": repository, "actions": ["pull"]}],
    }


def _es256_jwt(
    key: ec.EllipticCurvePrivateKey, header: dict[str, Any], claims: dict[str, Any]
) -> str:
    full_header = {"typ": "JWT", "alg": "ES256", **header}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (full_header, claims)
    )
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _public(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _tags(stack: Stack, token: str) -> tuple[int, str, Any]:
    status, headers, body = stack.request(
        f"/v2/{SEEDED}/tags/list", {"Authorization": f"Bearer {token}"}
    )
    return status, headers.get("WWW-Authenticate", ""), body


def test_registry_accepts_a_hand_built_token_signed_with_tokends_key(
    stack: Stack, seeded: str
) -> None:
    ours = _load_ec_key(stack.certs / "RootCA.key")
    certificate = load_certificate(stack.certs / "RootCA.crt")
    genuine = stack.token(f"repository:{SEEDED}:pull", "bar", "bar")
    for token in (
        genuine,
        _es256_jwt(ours, {"x5c": _x5c(certificate)}, _claims(SEEDED)),
        _es256_jwt(ours, {"kid": _libtrust_kid(_public(certificate))}, _claims(SEEDED)),
    ):
        status, challenge, body = _tags(stack, token)
        assert status == 200, (challenge, body)
        assert body["tags"] == ["latest"]


@pytest.mark.parametrize(
    "forgery",
    [
        "x5c-of-another-certificate",
        "x5c-of-tokends-certificate",
        "kid-of-tokends-key",
        "jwk-of-another-key",
        "tampered-claims",
    ],
)
def test_registry_rejects_a_token_tokend_did_not_sign(
    stack: Stack, seeded: str, tmp_path: Path, forgery: str
) -> None:
    key_path, cert_path = write_key_pair(tmp_path)
    other, other_certificate = _load_ec_key(key_path), load_certificate(cert_path)
    certificate = load_certificate(stack.certs / "RootCA.crt")
    claims = _claims(SEEDED)
    if forgery == "tampered-claims":
        # tokend's genuine signature over a pull on another repository, claims swapped.
        header, _, signature = stack.token("repository:other/repo:pull", "bar", "bar").split(".")
        token = f"{header}.{_b64url(json.dumps(claims).encode())}.{signature}"
    else:
        header = {
            "x5c-of-another-certificate": {"x5c": _x5c(other_certificate)},
            "x5c-of-tokends-certificate": {"x5c": _x5c(certificate)},
            "kid-of-tokends-key": {"kid": _libtrust_kid(_public(certificate))},
            "jwk-of-another-key": {"jwk": _jwk(_public(other_certificate))},
        }[forgery]
        token = _es256_jwt(other, header, claims)

    status, challenge, body = _tags(stack, token)
    assert status == 401, body
    assert body["errors"][0]["code"] == "UNAUTHORIZED", body
    assert 'error="invalid_token"' in challenge, challenge


def test_repositories_named_token_star_are_reached_through_nginx(stack: Stack) -> None:
    """nginx sends only the realm itself to tokend: /v2/tokenizer/... belongs to the registry."""
    image = stack.new_image()
    pushed = stack.push(image, "tokenizer/app", "bar:bar")
    assert pushed.ok, pushed.stderr
    assert stack.stored_tag("tokenizer/app") == image.manifest_digest
    pulled, target = stack.pull("tokenizer/app", "foo:foo")
    assert pulled.ok, pulled.stderr
    assert pulled_manifest(target) == image.manifest_digest
