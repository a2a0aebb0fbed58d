"""Workload identity (issue 25) on the real stack: CI jobs and pods log in with their platform's
OpenID Connect token, checked against keys a real HTTPS issuer serves.

The issuers are nginx over TLS with a CA of the test's own (tests/e2e/issuer.py), serving
discovery and JWKS as GitHub Actions and a Kubernetes cluster do. The trusts are the GitHub
Actions and Kubernetes examples of docs/workload-identity.md, read from the page, with this
test's issuer URLs put in: the documentation cannot drift from what works. The real clients
present the tokens: docker login and push, skopeo ``--creds``, containerd's ``ctr`` (the POST
password grant), and the token-exchange grant over HTTPS; what they push is read back from the
registry's storage.

Refusals are asked of tokend's socket directly, with an ``X-Real-IP`` of this module's own (the
socket's peer is trusted to name the client): they count against that address in the login
throttle, not against 127.0.0.1, whose failures the rest of the session shares.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from e2e.engines import Engine
from e2e.issuer import (
    Issuer,
    IssuerServer,
    SigningKey,
    github_claims,
    hmac_with_public_key,
    signed,
    unsigned_token,
)
from e2e.stack import SERVICE, Stack
from support import REPO, UnixHTTPConnection, free_port, load_certificate, verify_jwt

from tokend.signing.tokens import CLOCK_SKEW_SECONDS

pytestmark = pytest.mark.e2e

AUDIENCE = "https://registry.e2e"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
KUBE_JWKS = "e2e-cluster-jwks.json"
ATTACKER = "198.51.100.25"
"""The client address the refusals come from (TEST-NET-2), as X-Real-IP on tokend's socket."""
PAGE = (REPO / "docs" / "workload-identity.md").read_text()


def documented_trust(name: str) -> dict[str, Any]:
    """The ``<!-- trust NAME -->`` example of docs/workload-identity.md, as a trust entry."""
    match = re.search(rf"<!-- trust {re.escape(name)} -->\n```json\n(.*?)```", PAGE, re.DOTALL)
    assert match, f"docs/workload-identity.md has no {name} example"
    return dict(json.loads(match.group(1))["trusts"][name])


@dataclass
class Federation:
    """What the tests run against: the issuers and the issuers.json written for them."""

    server: IssuerServer
    github: Issuer
    kube: Issuer
    rotating: Issuer
    outage: Issuer
    document: dict[str, Any]


@pytest.fixture(scope="module")
def federation(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    server = IssuerServer(tmp_path_factory.mktemp("issuers"))
    github = server.add("github", SigningKey.rs256("gh-2026-1"))
    kube = server.add("kube", SigningKey.es256("k8s-sa-1"), "openid/v1/jwks")
    rotating = server.add("rotating", SigningKey.rs256("rot-1"))
    outage = server.add("outage", SigningKey.rs256("out-1"))
    running = server.start()
    stack.processes.append(running)
    (stack.config / KUBE_JWKS).write_text(json.dumps(kube.jwks()))

    actions = documented_trust("github-actions")
    actions.update(issuer=github.url, audience=AUDIENCE, ca_file=str(server.ca_file))
    kubernetes = documented_trust("kubernetes")
    kubernetes.update(issuer=kube.url, audience=AUDIENCE, jwks_file=KUBE_JWKS)
    document = {
        "trusts": {
            "github-actions": actions,
            "kubernetes": kubernetes,
            "rotating": {
                "issuer": rotating.url,
                "audience": AUDIENCE,
                "jwks_uri": rotating.jwks_uri,
                "ca_file": str(server.ca_file),
                "conditions": {"repository_owner": "acme"},
                "account": "rotating:${claim.repository}",
                "rules": {"${claim.repository}": ["pull"]},
            },
            "outage": {
                "issuer": outage.url,
                "audience": AUDIENCE,
                "ca_file": str(server.ca_file),
                "conditions": {"repository_owner": "acme"},
                "account": "outage:${claim.repository}",
                "rules": {"${claim.repository}": ["pull"]},
            },
            "unreachable": {
                "issuer": f"https://127.0.0.1:{free_port()}/never",
                "audience": AUDIENCE,
                "ca_file": str(server.ca_file),
                "conditions": {"repository_owner": "acme"},
                "account": "never:${claim.repository}",
                "rules": {"${claim.repository}": ["pull"]},
            },
        }
    }
    stack.rewrite("issuers.json", document)
    try:
        yield Federation(server, github, kube, rotating, outage, document)
    finally:
        stack.remove("issuers.json")
        (stack.config / KUBE_JWKS).unlink(missing_ok=True)
        server.stop()


def access_of(token: str, stack: Stack) -> list[dict[str, Any]]:
    """The ``access`` claim of an access token tokend signed (its signature checked)."""
    _, claims = verify_jwt(token, load_certificate(stack.certs / "RootCA.crt"))
    return list(claims["access"])


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def direct(
    stack: Stack,
    path: str,
    headers: dict[str, str] | None = None,
    form: list[tuple[str, str]] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """A request on tokend's own socket, from ``ATTACKER`` (X-Real-IP, as nginx names it)."""
    connection = UnixHTTPConnection(stack.tokend_socket, timeout=30)
    sent = {"X-Real-IP": ATTACKER, **(headers or {})}
    try:
        if form is None:
            connection.request("GET", path, headers=sent)
        else:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
            connection.request("POST", path, body=urlencode(form).encode(), headers=sent)
        response = connection.getresponse()
        raw = response.read()
        answer_headers = {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return response.status, answer_headers, body


def raw_post(stack: Stack, body: bytes) -> tuple[int, bytes]:
    """A form POST on tokend's socket written whole at once: tokend may answer and close
    before a large body is all sent, and its answer is still read."""
    head = (
        "POST /v2/token HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"X-Real-IP: {ATTACKER}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(str(stack.tokend_socket))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.sendall(head.encode() + body)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                answer += chunk
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.1 ") else b"0"
    return int(status), answer


def metrics(stack: Stack) -> str:
    """tokend's Prometheus exposition, from its metrics listener."""
    connection = UnixHTTPConnection(stack.metrics_socket)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def basic_login(stack: Stack, trust: str, jwt: str, scope: str) -> tuple[int, Any]:
    basic = base64.b64encode(f"{trust}:{jwt}".encode()).decode()
    query = urlencode({"service": SERVICE, "scope": scope, "account": trust})
    status, _, body = direct(stack, f"/v2/token?{query}", {"Authorization": f"Basic {basic}"})
    return status, body


def exchange_form(jwt: str, scope: str) -> list[tuple[str, str]]:
    return [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", jwt),
        ("subject_token_type", JWT_TYPE),
        ("service", SERVICE),
        ("scope", scope),
    ]


def test_docker_logs_in_with_a_github_actions_token_and_pushes_its_own_repository(
    stack: Stack, engine: Engine, federation: Federation
) -> None:
    jwt = federation.github.github(AUDIENCE, repository="acme/app")
    offset = stack.tokend_log_offset()
    login = engine.login("gha", "github-actions", jwt)
    assert login.ok, login.stderr
    saved = (engine.root / "clients" / "gha" / "config.json").read_text()
    assert "identitytoken" not in saved, "a federated login must get no refresh token"

    reference, _ = engine.push_stored("gha", stack.new_image(), "acme/app")

    other = f"{stack.registry}/acme/other:latest"
    assert engine.docker("gha", "tag", reference, other).ok
    denied = engine.docker("gha", "push", other)
    assert not denied.ok, "the rule gives each repository's workflow its own image only"
    assert not stack.repository_exists("acme/other")

    log = stack.tokend_log_since(offset)
    issued = [line for line in log.splitlines() if "issued GET token to 'github:acme/app'" in line]
    assert issued, log
    logged_in = issued[0]  # docker login's, before the push's
    assert "no refresh token" in logged_in, "docker asked offline_token=true: the log says why"
    assert jwt.split(".")[2] not in log, "the log never holds the JWT"


def test_skopeo_pushes_with_a_kubernetes_token_as_creds(
    stack: Stack, federation: Federation
) -> None:
    jwt = federation.kube.kubernetes(AUDIENCE, namespace="builds", service_account="pusher")
    image = stack.new_image()
    pushed = stack.push(image, "builds/pusher", f"kubernetes:{jwt}")
    assert pushed.ok, pushed.stderr
    assert stack.stored_tag("builds/pusher") == image.manifest_digest

    pulled, _ = stack.pull("builds/pusher", f"kubernetes:{jwt}")
    assert pulled.ok, pulled.stderr
    denied = stack.push(stack.new_image(), "builds/someone-else", f"kubernetes:{jwt}")
    assert not denied.ok, "the namespace's other repositories are pull only"
    assert not stack.repository_exists("builds/someone-else")

    stranger = federation.kube.kubernetes(AUDIENCE, namespace="default", service_account="web")
    refused = stack.push(stack.new_image(), "default/web", f"kubernetes:{stranger}")
    assert not refused.ok, "the trust's conditions admit the builds namespace only"
    assert not stack.repository_exists("default/web")


def test_containerd_pulls_with_the_post_password_grant(
    stack: Stack, engine: Engine, federation: Federation
) -> None:
    jwt = federation.github.github(AUDIENCE, repository="acme/ctr")
    image = stack.new_image()
    assert stack.push(image, "acme/ctr", f"github-actions:{jwt}").ok

    offset = stack.tokend_log_offset()
    pulled = engine.ctr_pull(f"{stack.registry}/acme/ctr:latest", f"github-actions:{jwt}")
    assert pulled.ok, pulled.stderr
    assert image.manifest_digest in pulled.stdout + pulled.stderr
    log = stack.tokend_log_since(offset)
    assert "issued POST token to 'github:acme/ctr'" in log, log


def test_the_token_exchange_grant_over_https(stack: Stack, federation: Federation) -> None:
    image = stack.new_image()
    creds = f"github-actions:{federation.github.github(AUDIENCE, repository='acme/xchg')}"
    assert stack.push(image, "acme/xchg", creds).ok

    jwt = federation.github.github(AUDIENCE, repository="acme/xchg", lifetime=90)
    status, body = stack.post_form("/v2/token", exchange_form(jwt, "repository:acme/xchg:pull"))
    assert status == 200, body
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert "refresh_token" not in body
    access = access_of(body["access_token"], stack)
    assert access == [{"type": "repository", "name": "acme/xchg", "actions": ["pull"]}]
    assert claims_of(body["access_token"])["exp"] <= claims_of(jwt)["exp"], (
        "no access token outlives the platform's token"
    )

    bearer = {
        "Authorization": f"Bearer {body['access_token']}",
        "Accept": "application/vnd.oci.image.manifest.v1+json",
    }
    got, headers, _ = stack.request("/v2/acme/xchg/manifests/latest", bearer)
    assert got == 200
    assert headers["Docker-Content-Digest"] == image.manifest_digest


def test_forged_and_misdirected_tokens_are_refused_and_grant_nothing(
    stack: Stack, federation: Federation
) -> None:
    github, kube = federation.github, federation.kube
    now = time.time()
    good = github_claims(github.url, AUDIENCE, "acme/app")
    stranger = SigningKey.rs256(github.key.kid)
    attacker = federation.server.add("attacker", SigningKey.rs256("evil-1"))
    attacks = {
        "alg none": unsigned_token(good),
        "HS256 keyed with the issuer's public key": hmac_with_public_key(github.key, good),
        "a kid not in the JWKS": signed(SigningKey.rs256("gh-unknown"), good),
        "the issuer's kid, another key": signed(stranger, good),
        "an embedded jwk": signed(stranger, good, jwk=stranger.jwk()),
        "a jku to the attacker's keys": signed(
            attacker.key, good, kid=attacker.key.kid, jku=attacker.jwks_uri
        ),
        "a wrong iss": github.mint({**good, "iss": attacker.url}),
        "a wrong aud": github.mint({**good, "aud": "https://elsewhere.example"}),
        "expired": github.mint(github_claims(github.url, AUDIENCE, now=now - 900)),
        "nbf in the future": github.mint({**good, "nbf": int(now) + 600}),
        "no exp": github.mint({k: v for k, v in good.items() if k != "exp"}),
        "trust A's token as trust B": kube.kubernetes(AUDIENCE),
    }
    scope = "repository:acme/app:pull,push"
    offset = stack.tokend_log_offset()
    for what, jwt in attacks.items():
        status, body = basic_login(stack, "github-actions", jwt, scope)
        assert status == 401, (what, status, body)
        assert "token" not in body, what
    for what in ("a wrong iss", "alg none", "a kid not in the JWKS"):
        status, _, body = direct(stack, "/v2/token", form=exchange_form(attacks[what], scope))
        assert status in (400, 401), (what, status, body)
        assert "access_token" not in body, what

    huge = github.mint({**good, "padding": "x" * 1_000_000})
    status, answer = raw_post(stack, urlencode(exchange_form(huge, scope)).encode())
    assert status in (400, 401, 413), answer
    assert b"access_token" not in answer

    for repository in ("acme/*", "acme/../app", "acme/App"):
        jwt = github.github(AUDIENCE, repository=repository)
        status, body = basic_login(stack, "github-actions", jwt, scope)
        granted = [] if status != 200 else access_of(body["token"], stack)
        assert not any("push" in entry["actions"] for entry in granted), (repository, granted)

    assert federation.server.fetches("/attacker/.well-known/jwks") == 0, "a jku was fetched"
    assert federation.server.fetches("/attacker/.well-known/openid-configuration") == 0
    log = stack.tokend_log_since(offset)
    for what, jwt in attacks.items():
        assert jwt.split(".")[1] not in log, f"the log holds the token of {what}"


def test_a_rotated_key_is_picked_up(stack: Stack, federation: Federation) -> None:
    rotating = federation.rotating
    jwks = f"/rotating/{rotating.jwks_path}"
    first = rotating.github(AUDIENCE, repository="acme/app")
    status, body = basic_login(stack, "rotating", first, "repository:acme/app:pull")
    assert status == 200, body
    fetched = federation.server.fetches(jwks)

    rotating.rotate(SigningKey.rs256("rot-2"))
    jwt = rotating.github(AUDIENCE, repository="acme/app")
    status, body = basic_login(stack, "rotating", jwt, "repository:acme/app:pull")
    assert status == 200, body
    assert access_of(body["token"], stack) == [
        {"type": "repository", "name": "acme/app", "actions": ["pull"]}
    ]
    assert federation.server.fetches(jwks) == fetched + 1, "the new kid made tokend fetch again"


def test_the_issuers_cached_keys_keep_working_while_it_is_down(
    stack: Stack, federation: Federation
) -> None:
    outage = federation.outage
    scope = "repository:acme/app:pull"
    status, body = basic_login(stack, "outage", outage.github(AUDIENCE), scope)
    assert status == 200, "the keys are fetched before the outage"
    offset = stack.tokend_log_offset()
    federation.server.stop()
    try:
        # A kid tokend does not know makes it fetch the keys again: the fetch fails.
        unknown = signed(SigningKey.rs256("out-unpublished"), github_claims(outage.url, AUDIENCE))
        status, body = basic_login(stack, "outage", unknown, scope)
        assert status == 401, (status, body)
        for _ in range(2):
            status, body = basic_login(stack, "outage", outage.github(AUDIENCE), scope)
            assert status == 200, body
            assert access_of(body["token"], stack) == [
                {"type": "repository", "name": "acme/app", "actions": ["pull"]}
            ]
    finally:
        stack.processes.append(federation.server.start())
    log = stack.tokend_log_since(offset)
    warning = "issuer keys of outage cannot be fetched"
    warned = [line for line in log.splitlines() if warning in line]
    assert len(warned) == 1, log
    assert "the keys fetched before are kept" in warned[0]
    assert re.search(
        r'^tokend_federation_key_fetches_total\{(?=[^}]*outcome="failed")(?=[^}]*trust="outage")'
        r"[^}]*\} 1\.0$",
        metrics(stack),
        re.MULTILINE,
    ), "the failed fetch is counted"


def test_an_issuer_never_reached_answers_503_with_retry_after(
    stack: Stack, federation: Federation
) -> None:
    trust = federation.document["trusts"]["unreachable"]
    jwt = signed(SigningKey.rs256("never-1"), github_claims(trust["issuer"], AUDIENCE))
    status, headers, body = direct(
        stack,
        f"/v2/token?{urlencode({'service': SERVICE, 'scope': 'repository:acme/app:pull'})}",
        {"Authorization": "Basic " + base64.b64encode(f"unreachable:{jwt}".encode()).decode()},
    )
    assert status == 503, body
    assert int(headers["retry-after"]) > 0
    status, headers, body = direct(
        stack, "/v2/token", form=exchange_form(jwt, "repository:acme/app:pull")
    )
    assert status == 503, body
    assert int(headers["retry-after"]) > 0


def test_a_trust_edited_live_takes_effect_at_once(stack: Stack, federation: Federation) -> None:
    jwt = federation.github.github(AUDIENCE, repository="acme/app", ref="refs/heads/main")
    scope = "repository:acme/app:pull,push"
    status, body = stack.token_response(scope, "github-actions", jwt)
    assert status == 200, body
    assert access_of(body["token"], stack)[0]["actions"] == ["pull", "push"]
    issued = claims_of(body["token"])
    ttl = federation.document["trusts"]["github-actions"]["token_ttl"]
    assert body["expires_in"] <= ttl < 300, "the trust's token_ttl, below --token-ttl"
    assert issued["exp"] - (issued["iat"] + CLOCK_SKEW_SECONDS) <= ttl

    edited = json.loads(json.dumps(federation.document))
    actions = edited["trusts"]["github-actions"]
    actions["rules"] = {"${claim.repository}": ["pull"]}
    stack.rewrite("issuers.json", edited)
    try:
        status, body = stack.token_response(scope, "github-actions", jwt)
        assert status == 200, body
        assert access_of(body["token"], stack)[0]["actions"] == ["pull"], "the same JWT"

        actions["conditions"]["ref"] = "refs/tags/*"
        stack.rewrite("issuers.json", edited)
        status, body = basic_login(stack, "github-actions", jwt, scope)
        assert status == 401, body
    finally:
        stack.rewrite("issuers.json", federation.document)
    status, body = stack.token_response(scope, "github-actions", jwt)
    assert status == 200, body
    assert access_of(body["token"], stack)[0]["actions"] == ["pull", "push"]
