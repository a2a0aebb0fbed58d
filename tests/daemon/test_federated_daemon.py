"""The real daemon logs a workload in with its platform JWT: the door, IssuerKeys and the realm
wired as ``twistd registry-token`` builds them, keys read from a trust's ``jwks_file`` (a cluster
whose issuer is not reachable: ``kubectl get --raw /openid/v1/jwks``)."""

from __future__ import annotations

import json
import signal
import time
from base64 import b64encode
from pathlib import Path
from urllib.parse import urlencode

from minting import IssuerKey, jwks, kubernetes_claims
from support import (
    UnixHTTPConnection,
    load_certificate,
    start_twistd,
    stop_process,
    verify_jwt,
    wait_for,
    write_key_pair,
    write_policy,
)
from trusted_issuers import CLUSTER, CLUSTER_TRUST, write_trusts

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def ask(
    sock: Path, method: str, path: str, body: str | None = None, **headers: str
) -> tuple[int, dict]:
    connection = UnixHTTPConnection(sock)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_a_pod_logs_in_with_its_service_account_token(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_policy(config, {"bar": ("bar", {"*": ["pull"]})})
    key = IssuerKey.generate("ES256", "cluster-1")
    (config / "cluster-jwks.json").write_text(json.dumps(jwks(key)))
    trust = {**CLUSTER_TRUST, "jwks_file": "cluster-jwks.json"}
    del trust["jwks_uri"]
    write_trusts(config, {"cluster": trust})
    key_path, cert_path = write_key_pair(tmp_path)
    sock = tmp_path / "tokend.sock"
    log = tmp_path / "tokend.log"
    process = start_twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
        "--cert", str(cert_path), "--issuer", "iss", "--service", "svc",
        log=log,
    )  # fmt: skip
    token = key.sign(kubernetes_claims(CLUSTER, now=time.time()))
    try:
        wait_for("the socket", sock.exists, process=process, log=log)
        auth = b64encode(f"cluster:{token}".encode()).decode()
        path = "/v2/token?service=svc&scope=repository:ci/tools:pull,push"
        code, body = ask(sock, "GET", path, Authorization=f"Basic {auth}")
        assert code == 200, body
        _, claims = verify_jwt(body["token"], load_certificate(cert_path))
        assert claims["sub"] == "k8s:ci/builder"
        assert claims["access"] == [{"type": "repository", "name": "ci/tools", "actions": ["pull"]}]
        form = urlencode(
            {
                "grant_type": EXCHANGE,
                "subject_token": token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "service": "svc",
                "scope": "repository:ci/tools:pull",
            }
        )
        content = {"Content-Type": "application/x-www-form-urlencoded"}
        code, body = ask(sock, "POST", "/v2/token", form, **content)
        assert code == 200, body
        assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
        other = IssuerKey.generate("ES256", "cluster-1").sign(
            kubernetes_claims(CLUSTER, time.time())
        )
        assert ask(sock, "POST", "/v2/token", form.replace(token, other), **content)[0] == 400
    finally:
        assert stop_process(process) == -signal.SIGTERM
    text = log.read_text()
    assert "trust 'cluster', JWT" in text
    assert token.split(".")[1] not in text
