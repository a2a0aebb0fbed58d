"""Platform JWTs for the tests: an issuer's keys, its JWKS, and tokens in the claim shapes
GitHub Actions and Kubernetes really send (SPEC.md "Platform identity tokens"), signed by hand
so that the hostile ones (``alg: none``, HS256 under the public key, an embedded ``jwk``) can be
made too."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, replace
from typing import Any

from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from tokend.policy.trusts import Trust

GITHUB = "https://token.actions.githubusercontent.com"
AUDIENCE = "https://registry.example.com"
NOW = 1_790_000_000.0


def trust(**changes: Any) -> Trust:
    """A trust of GitHub Actions tokens for the registry (what verify and IssuerKeys read)."""
    return replace(Trust(name="github-actions", issuer=GITHUB, audience=AUDIENCE), **changes)


def segment(value: object) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class IssuerKey:
    alg: str
    kid: str
    key: RSAKey | ECKey | OKPKey

    @classmethod
    def generate(cls, alg: str, kid: str) -> IssuerKey:
        if alg.startswith(("RS", "PS")):
            return cls(alg, kid, RSAKey.generate_key(2048))
        if alg.startswith("ES"):
            crv = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]
            return cls(alg, kid, ECKey.generate_key(crv))
        return cls(alg, kid, OKPKey.generate_key("Ed25519"))

    @property
    def jwk(self) -> dict[str, Any]:
        public = dict(self.key.as_dict(private=False))
        return {**public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **header}
        head = {name: value for name, value in head.items() if value is not None}
        signing_input = f"{segment(head)}.{segment(claims)}"
        signature = JWSRegistry.algorithms[head["alg"]].sign(signing_input.encode(), self.key)
        return f"{signing_input}.{segment(signature)}"


def jwks(*keys: IssuerKey) -> dict[str, Any]:
    return {"keys": [key.jwk for key in keys]}


def hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{segment(mac)}"


def unsigned(claims: dict[str, Any], kid: str) -> str:
    return f"{segment({'alg': 'none', 'kid': kid})}.{segment(claims)}."


def github_claims(now: float = NOW, **changes: Any) -> dict[str, Any]:
    """What a GitHub Actions job of acme/widget on main gets from ACTIONS_ID_TOKEN_REQUEST_URL."""
    claims: dict[str, Any] = {
        "jti": "8d6f2a3c-5a8e-4d6b-9b8e-2f1c3d4e5f60",
        "sub": "repo:acme/widget:ref:refs/heads/main",
        "aud": AUDIENCE,
        "ref": "refs/heads/main",
        "sha": "4f2b7c1d9e8a6b5c3d2e1f0a9b8c7d6e5f4a3b2c",
        "repository": "acme/widget",
        "repository_owner": "acme",
        "repository_owner_id": "1234567",
        "run_id": "9876543210",
        "run_number": "42",
        "run_attempt": "1",
        "repository_visibility": "private",
        "repository_id": "7654321",
        "actor_id": "111222",
        "actor": "octocat",
        "workflow": "release",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_protected": "true",
        "ref_type": "branch",
        "workflow_ref": "acme/widget/.github/workflows/release.yml@refs/heads/main",
        "job_workflow_ref": "acme/widget/.github/workflows/release.yml@refs/heads/main",
        "runner_environment": "github-hosted",
        "iss": GITHUB,
        "nbf": int(now) - 5,
        "iat": int(now) - 5,
        "exp": int(now) + 295,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def kubernetes_claims(issuer: str, now: float = NOW, **changes: Any) -> dict[str, Any]:
    """A projected service-account token of builder in namespace ci (audience from the volume)."""
    claims: dict[str, Any] = {
        "aud": [AUDIENCE],
        "exp": int(now) + 3600,
        "iat": int(now) - 10,
        "iss": issuer,
        "jti": "5b1d7a9e-3c2f-4e8d-a6b0-9f8e7d6c5b4a",
        "kubernetes.io": {
            "namespace": "ci",
            "node": {"name": "node-1", "uid": "0c8f6e5d-4b3a-2918-7f6e-5d4c3b2a1908"},
            "pod": {"name": "builder-7d9f8", "uid": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"},
            "serviceaccount": {"name": "builder", "uid": "f0e1d2c3-b4a5-4968-8776-655443322110"},
        },
        "nbf": int(now) - 10,
        "sub": "system:serviceaccount:ci:builder",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}
