"""Issuers a test realm trusts: an issuers.json written beside the other policy files, and the
issuers' published keys held in memory: as a JWKS per issuer (:class:`Published`, what
:class:`tokend.login.federation.issuer_keys.IssuerKeys` answers) or as the documents their
endpoints serve (:class:`Served`, what IssuerKeys fetches), for the tests of the federated door
and the web layer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from minting import AUDIENCE, GITHUB

from tokend.login.federation.fetch import Fetched, FetchFailed
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


class Served:
    """The issuers' endpoints in memory, for a real IssuerKeys: each issuer's OpenID discovery
    document and JWKS (the cluster's at its trust's ``jwks_uri``); ``down`` answers every GET
    as a refused connection. ``fetched`` lists the URLs asked."""

    def __init__(self, sets: Mapping[str, dict[str, Any]], down: bool = False) -> None:
        self.documents: dict[str, bytes] = {}
        for issuer, keys in sets.items():
            jwks_uri = CLUSTER_TRUST["jwks_uri"] if issuer == CLUSTER else f"{issuer}/jwks"
            discovery = {"issuer": issuer, "jwks_uri": jwks_uri}
            self.documents[f"{issuer}/.well-known/openid-configuration"] = json.dumps(
                discovery
            ).encode()
            self.documents[jwks_uri] = json.dumps(keys).encode()
        self.down = down
        self.fetched: list[str] = []

    async def __call__(self, url: str, ca_file: Path | None) -> Fetched:
        self.fetched.append(url)
        if self.down or url not in self.documents:
            raise FetchFailed("connection refused")
        return Fetched(self.documents[url], "max-age=300")
