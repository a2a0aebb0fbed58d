"""Federated logins through the web layer, in memory: RFC 8693's token-exchange grant, a trust's
name and its platform JWT as Basic credentials or containerd's password grant, the refusals
(400/401 JSON bodies, 503 with Retry-After when an issuer's keys were never fetched) and the
throttle, which counts federated failures by address, never by trust name."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, cast

from minting import NOW, IssuerKey, github_claims, jwks, kubernetes_claims, unsigned
from realms import SERVICE, USERS, Realm, Response, post, throttle
from support import verify_jwt, write_policy
from trusted_issuers import CLUSTER, GITHUB, Served, write_trusts
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent

from tokend.client_address import TrustedProxies, parse_networks
from tokend.login.federation.issuer_keys import IssuerKeys
from tokend.login.federation.verify import jwt_fingerprint as fingerprint

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def exchange(realm: Realm, token: str, *scopes: str, **more: str) -> Response:
    """A token-exchange grant for ``scopes`` (no client_id: RFC 8693 makes it optional)."""
    form = [
        ("grant_type", EXCHANGE),
        ("subject_token", token),
        ("subject_token_type", JWT_TYPE),
        ("service", SERVICE),
        *(("scope", scope) for scope in scopes),
        *more.items(),
    ]
    return post(realm, form)


def oauth_error(response: Response) -> tuple[int, str, str]:
    code, _, body = response
    return code, body["error"], body["error_description"]


def test_a_realm_that_trusts_no_issuer_refuses_the_exchange_grant_by_name(
    tmp_path: Path,
) -> None:
    realm = Realm(tmp_path)
    code, error, description = oauth_error(exchange(realm, "a.b.c", "repository:x/y:pull"))
    assert (code, error) == (400, "unsupported_grant_type")
    assert "trusts no token issuers" in description


def test_the_exchange_grant_is_read_as_rfc_8693_writes_it(tmp_path: Path) -> None:
    realm = Realm(tmp_path)
    base = {"grant_type": EXCHANGE, "service": SERVICE}
    refused: list[tuple[dict[str, str], str]] = [
        ({**base, "subject_token_type": JWT_TYPE}, "needs subject_token and subject_token_type"),
        ({**base, "subject_token": "a.b.c"}, "needs subject_token and subject_token_type"),
        (
            {**base, "subject_token": "a.b.c", "subject_token_type": "urn:x:saml2"},
            "subject_token_type 'urn:x:saml2' is not accepted",
        ),
        (
            {**base, "subject_token": "a.b.c", "subject_token_type": JWT_TYPE, "actor_token": "x"},
            "actor_token is not accepted",
        ),
        (
            {
                **base,
                "subject_token": "a.b.c",
                "subject_token_type": JWT_TYPE,
                "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
            },
            "requested_token_type must be " + ACCESS_TYPE,
        ),
    ]
    for form, message in refused:
        code, error, description = oauth_error(post(realm, form))
        assert (code, error) == (400, "invalid_request"), form
        assert message in description, form


def test_a_subject_token_in_the_url_is_refused_before_anything_else(tmp_path: Path) -> None:
    realm = Realm(tmp_path)
    request = realm.http.post(
        f"http://tokend/v2/token?subject_token=a.b.c&service={SERVICE}",
        data=f"grant_type={EXCHANGE}&subject_token_type={JWT_TYPE}".encode(),
        headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
    )
    code, error, description = oauth_error(realm.finish(request))
    assert (code, error) == (400, "invalid_request")
    assert "never in the URL" in description


def basic(user: str, password: str) -> dict[bytes, list[bytes]]:
    raw = f"{user}:{password}".encode()
    return {b"Authorization": [b"Basic " + base64.b64encode(raw)]}


def test_a_password_as_long_as_a_platform_jwt_reaches_the_login(tmp_path: Path) -> None:
    """A GitHub Actions JWT runs to 2 kB and more: as a Basic password (3 kB of base64) or in
    containerd's password grant it must be checked (here: refused as wrong), not refused as
    too long."""
    realm = Realm(tmp_path)
    jwt_sized = "e" * 3000
    got: Any = realm.get("someone", jwt_sized)
    assert got[0] == 401, got
    assert realm.post("someone", jwt_sized)[0] == 401


GITHUB_KEY = IssuerKey.generate("RS256", "gh-1")
CLUSTER_KEY = IssuerKey.generate("ES256", "k8s-1")
PUSH = "repository:acme/widget:pull,push"


def federated_realm(tmp_path: Path, down: bool = False, **kwargs: Any) -> Realm:
    """A realm trusting GitHub Actions and a cluster (tests/trusted_issuers.py), at NOW on
    the same clock the tokens are minted for, with a real IssuerKeys fetching their keys from
    memory (``down``: every fetch fails)."""
    config = tmp_path / "config"
    write_policy(config, USERS, {"repositories": ["public/hello"]})
    write_trusts(config)
    clock = Clock()
    clock.advance(NOW)
    served = Served({GITHUB: jwks(GITHUB_KEY), CLUSTER: jwks(CLUSTER_KEY)}, down=down)
    keys = IssuerKeys(clock, served, clock.seconds)
    return Realm(tmp_path, config=config, clock=clock, issuer_keys=keys, **kwargs)


def github_token(**changes: Any) -> str:
    return GITHUB_KEY.sign(github_claims(**changes))


def test_the_exchange_grant_gives_a_platform_jwt_its_trusts_rights(tmp_path: Path) -> None:
    """No longer than the trust's token_ttl (120 s), nor the JWT; the configured 300 s when
    neither is shorter."""
    realm = federated_realm(tmp_path)
    code, headers, body = exchange(realm, github_token(), PUSH, "repository:acme/other:pull")
    assert code == 200, body
    assert headers[b"Cache-Control"] == [b"no-store"]
    assert body["issued_token_type"] == ACCESS_TYPE
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 120, PUSH)
    assert "refresh_token" not in body
    _, claims = verify_jwt(body["access_token"], realm.certificate)
    assert (claims["sub"], claims["aud"], claims["exp"]) == (
        "github:acme/widget",
        SERVICE,
        NOW + 120,
    )
    assert claims["access"] == [
        {"type": "repository", "name": "acme/widget", "actions": ["pull", "push"]}
    ]
    soon = exchange(realm, github_token(exp=int(NOW) + 42), PUSH)
    assert (soon[0], soon[2]["expires_in"]) == (200, 42), "never outlives the JWT"
    pod = exchange(realm, CLUSTER_KEY.sign(kubernetes_claims(CLUSTER)), "repository:ci/tools:pull")
    assert (pod[0], pod[2]["expires_in"], pod[2]["scope"]) == (200, 300, "repository:ci/tools:pull")
    _, claims = verify_jwt(pod[2]["access_token"], realm.certificate)
    assert claims["sub"] == "k8s:ci/builder"


def test_a_trust_name_and_its_jwt_log_in_by_basic_and_the_password_grant_without_refresh(
    tmp_path: Path,
) -> None:
    """docker login (GET, offline_token=true), skopeo and podman (GET), containerd (POST
    password grant, access_type=offline): the token, never a refresh token, and the log says
    why, naming the trust and the JWT by its fingerprint."""
    realm = federated_realm(tmp_path, refresh_ttl=86_400)
    token = github_token()
    events: list[LogEvent]
    with capturedLogs() as events:
        code, _, body = realm.get(
            "github-actions",
            token,
            scope="acme/widget:pull,push",
            query="&client_id=docker&offline_token=true",
        )
        assert code == 200, body
        assert "refresh_token" not in body and body["expires_in"] == 120
        _, claims = verify_jwt(body["token"], realm.certificate)
        assert claims["access"][0]["actions"] == ["pull", "push"]
        form = {
            "grant_type": "password",
            "username": "github-actions",
            "password": token,
            "service": SERVICE,
            "client_id": "containerd-client",
            "access_type": "offline",
            "scope": PUSH,
        }
        code, _, body = post(realm, form)
        assert code == 200, body
        assert "refresh_token" not in body and body["scope"] == PUSH
    lines = [formatEvent(e) for e in events if e.get("outcome") == "issued"]
    assert len(lines) == 2
    for line in lines:
        assert "to 'github:acme/widget'" in line
        assert f"trust 'github-actions', JWT {fingerprint(token)}" in line
        assert "no refresh token: a federated client asks its platform for a new JWT" in line
    assert not any(token.split(".")[1] in repr(e) for e in events), "never the token"


def test_refused_platform_tokens_are_json_refusals_that_grant_nothing(tmp_path: Path) -> None:
    realm = federated_realm(tmp_path)
    events: list[LogEvent]
    bad = github_token(repository_owner="evil")
    with capturedLogs() as events:
        code, error, description = oauth_error(exchange(realm, bad, PUSH))
        assert (code, error) == (400, "invalid_request")
        assert "a condition of the trust does not hold" in description
        code, headers, body = realm.get("github-actions", bad, scope="acme/widget:pull")
        assert code == 401, body
        assert headers[b"WWW-Authenticate"] == [b'Basic realm="tokend-test"']
        assert body["errors"][0]["code"] == "UNAUTHORIZED"
        code, _, body = realm.post("github-actions", bad)
        assert (code, body["error"]) == (401, "invalid_grant")
    refused = [formatEvent(e) for e in events if e.get("outcome") == "refused"]
    assert len(refused) == 3
    for line in refused:
        assert f"trust 'github-actions', JWT {fingerprint(bad)}" in line
        assert bad.split(".")[1] not in line
    for token in (
        unsigned(github_claims(), "gh-1"),
        GITHUB_KEY.sign(github_claims(), jwk=GITHUB_KEY.jwk),
        github_token(aud="https://other.example"),
        github_token(exp=int(NOW) - 1),
    ):
        code, error, _ = oauth_error(exchange(realm, token, PUSH))
        assert (code, error) == (400, "invalid_request"), token
        assert realm.get("github-actions", token, scope="acme/widget:pull")[0] == 401
    huge = exchange(realm, "e" * 1_000_000, PUSH)
    assert (huge[0], huge[2]["error"]) == (400, "invalid_request")


def test_an_issuer_whose_keys_were_never_fetched_is_503_with_retry_after(tmp_path: Path) -> None:
    """Asked again at most every 30 s per issuer; never counted as a failed login."""
    realm = federated_realm(tmp_path, down=True, throttle=throttle(per_address=1))
    for waited in (0, 10, 10):
        realm.clock.advance(waited)
        code, headers, body = exchange(realm, github_token(), PUSH)
        assert (code, body["error"]) == (503, "temporarily_unavailable"), body
        assert "github-actions" in body["error_description"]
        code, headers, body = realm.get("github-actions", github_token())
        assert code == 503, body
        assert int(headers[b"Retry-After"][0]) == 30 - realm.clock.seconds() + NOW


def test_federated_failures_are_throttled_by_address_never_by_the_trust_name(
    tmp_path: Path,
) -> None:
    """One job with a bad token must not lock out every pipeline that logs in as its trust:
    the failures count against the job's address only (here far more of them than the
    per-account limit), and cost no bcrypt."""
    proxies = TrustedProxies(networks=parse_networks(["127.0.0.0/8"]))
    realm = federated_realm(
        tmp_path, throttle=throttle(per_account=2, per_address=4), proxies=proxies
    )
    bad = github_token(ref="refs/heads/feature")
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        for _ in range(4):
            code = realm.get("github-actions", bad, real_ip=address, scope="acme/widget:pull")[0]
            assert code == 401
        assert realm.get("github-actions", bad, real_ip=address)[0] == 429
    assert realm.bcrypt_runs == 0
    code, _, body = realm.get("github-actions", github_token(), real_ip="198.51.100.7")
    assert code == 200, body
    exchanged = realm.finish(
        realm.start_post(
            {
                "grant_type": EXCHANGE,
                "subject_token": github_token(),
                "subject_token_type": JWT_TYPE,
                "service": SERVICE,
            },
            {b"X-Real-IP": [b"192.0.2.1"]},
        )
    )
    assert exchanged[0] == 429, "the address stays throttled whichever way it asks"
    assert cast(int, realm.get("foo", "foo", real_ip="198.51.100.7")[0]) == 200
