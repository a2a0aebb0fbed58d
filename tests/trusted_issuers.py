"""Issuers a test realm trusts: an issuers.json written beside the other policy files, and the
issuers' published keys held in memory (what :class:`tokend.login.federation.issuer_keys.
IssuerKeys` would have fetched), for the tests of the federated door and the web layer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from minting import AUDIENCE, GITHUB

from tokend.policy.trusts import Trust

CLUSTER = "https://kubernetes.default.svc.cluster.local"
GITHUB_TRUST: dict[str, Any] = {
    "issuer": GITHUB,
    "audience": AUDIENCE,
    "conditions": {"repository_owner": "acme", "ref": ["refs/heads/main", "refs/tags/*"]},
    "account": "github:${claim.repository}",
    "rules": {"${claim.repository}": ["pull", "push"]},
    "token_ttl": 120,
    "max_token_age": 3600,
}
CLUSTER_TRUST: dict[str, Any] = {
    "issuer": CLUSTER,
    "audience": AUDIENCE,
    "jwks_uri": "https://cluster.example/openid/v1/jwks",
    "conditions": {"[kubernetes.io].namespace": "ci"},
    "account": "k8s:${claim[kubernetes.io].namespace}/${claim[kubernetes.io].serviceaccount.name}",
    "rules": {"${claim[kubernetes.io].namespace}/*": ["pull"]},
}
TRUSTS = {"github-actions": GITHUB_TRUST, "cluster": CLUSTER_TRUST}


def write_trusts(config: Path, trusts: Mapping[str, Any] = TRUSTS) -> None:
    config.mkdir(parents=True, exist_ok=True)
    (config / "issuers.json").write_text(json.dumps({"trusts": trusts}, indent=2))


class Published:
    """Each issuer's JWKS, as its keys endpoint would answer now; ``asked`` counts the
    questions (a remembered token asks none)."""

    def __init__(self, sets: Mapping[str, dict[str, Any]]) -> None:
        self.sets = dict(sets)
        self.asked = 0

    async def keys(self, trust: Trust, kid: str | None) -> dict[str, Any]:
        self.asked += 1
        return self.sets[trust.issuer]
