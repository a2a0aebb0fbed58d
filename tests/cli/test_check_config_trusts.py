"""``tokend check-config`` with issuers.json: each trust's discovery and keys fetched from a real
HTTPS issuer (test CA) and reported, a trust whose keys cannot be had named with the reason.
The command runs as a process (it runs the reactor once, as the daemon's tools do); the issuer
runs in the test's reactor meanwhile."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from issuer_server import Issuer
from minting import AUDIENCE, IssuerKey, jwks
from support import REPO, free_port, write_policy
from twisted.internet import reactor as global_reactor
from twisted.internet.utils import getProcessOutputAndValue

reactor: Any = global_reactor
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
RSA = IssuerKey.generate("RS256", "k1")
EC = IssuerKey.generate("ES256", "k2")


def trust(issuer: str, **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "issuer": issuer,
        "audience": AUDIENCE,
        "conditions": {"repository_owner": "acme"},
        "account": "github:${claim.repository}",
        "rules": {"${claim.repository}": ["pull", "push"]},
    }
    entry.update(changes)
    return entry


def write_trusts(config: Path, trusts: dict[str, Any]) -> None:
    write_policy(config, {"alice": ("pw", {"alice/*": ["pull"]})})
    (config / "issuers.json").write_text(json.dumps({"trusts": trusts}))


async def check_config(config: Path) -> tuple[int, str]:
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-m", "tokend", "check-config", "--config-dir", str(config)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        path=str(REPO),
    )
    return code, out.decode() + err.decode()


@pytest_twisted.ensureDeferred
async def test_check_config_fetches_each_trusts_keys_and_reports_them(tmp_path: Path) -> None:
    issuer = Issuer(reactor, tmp_path / "issuer", jwks(RSA, EC))
    try:
        config = tmp_path / "config"
        write_trusts(
            config,
            {
                "github-actions": trust(issuer.url, ca_file=str(issuer.ca_file)),
                "pinned": trust(
                    issuer.url,
                    audience="https://other.example.com",
                    jwks_uri=f"{issuer.url}/jwks",
                    ca_file=str(issuer.ca_file),
                ),
                "untrusted-tls": trust(issuer.url, audience="https://third.example.com"),
                "down": trust(f"https://localhost:{free_port()}"),
            },
        )
        code, out = await check_config(config)
    finally:
        await issuer.stop()
    assert code == 0, out
    lines = out.splitlines()
    assert (
        f"trust github-actions: keys from {issuer.url}/jwks (discovery {issuer.url}/"
        ".well-known/openid-configuration), kept 300 s: k1 RS256 (RSA 2048 bits), "
        "k2 ES256 (EC P-256)"
    ) in lines
    assert (
        f"trust pinned: keys from {issuer.url}/jwks, kept 300 s: k1 RS256 (RSA 2048 bits), "
        "k2 ES256 (EC P-256)"
    ) in lines
    assert (
        f"warning: trust untrusted-tls: its keys cannot be fetched: {issuer.url}/.well-known/"
        "openid-configuration: the issuer's certificate is not trusted "
        "(certificate verify failed); its tokens are refused with 503 until they can"
    ) in lines
    [down] = [line for line in lines if line.startswith("warning: trust down:")]
    assert "cannot connect" in down
    assert issuer.state.asked == ["discovery", "jwks", "jwks"]


@pytest_twisted.ensureDeferred
async def test_check_config_reads_a_jwks_file_and_warns_of_keys_it_cannot_use(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    hmac_key = {"kty": "oct", "k": "c2VjcmV0", "kid": "shared"}
    without_alg = {name: value for name, value in EC.jwk.items() if name != "alg"}
    (config / "cluster-jwks.json").write_text(json.dumps({"keys": [hmac_key]}))
    (config / "ok-jwks.json").write_text(json.dumps({"keys": [without_alg]}))
    write_trusts(
        config,
        {
            "cluster": trust("https://kubernetes.default.svc", jwks_file="cluster-jwks.json"),
            "cluster-ok": trust(
                "https://kubernetes.default.svc",
                audience="https://other.example.com",
                jwks_file="ok-jwks.json",
            ),
        },
    )
    code, out = await check_config(config)
    assert code == 0, out
    lines = out.splitlines()
    assert (
        f"trust cluster: keys from {config}/cluster-jwks.json, kept 3600 s: shared oct (not usable)"
    ) in lines
    assert (
        "warning: trust cluster: no key of its issuer is one tokend verifies with "
        "(RSA, EC P-256/P-384/P-521 or OKP Ed25519/Ed448 for RS/PS/ES 256-512 or EdDSA)"
    ) in lines
    assert (
        f"trust cluster-ok: keys from {config}/ok-jwks.json, kept 3600 s: k2 ES256 (EC P-256)"
    ) in lines
