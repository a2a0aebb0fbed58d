"""The realm through the web layer, in memory (StubTreq, a Clock, inline bcrypt at cost 4)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from realms import NOW, SERVICE, TEAM_USERS, Realm
from support import verify_jwt
from twisted.logger import LogEvent, capturedLogs


def web_realm(tmp_path: Path, anonymous: dict[str, Any] | None = None) -> Realm:
    """Three accounts (``team`` among them), two services."""
    return Realm(tmp_path, users=TEAM_USERS, anonymous=anonymous, services=(SERVICE, "other.test"))


def entry(name: str, *actions: str, kind: str = "repository") -> dict[str, Any]:
    return {"type": kind, "name": name, "actions": list(actions)}


@pytest.fixture
def realm(tmp_path: Path) -> Realm:
    return web_realm(tmp_path)


def test_token_claims_header_and_body(realm: Realm) -> None:
    claims, body = realm.token(
        [("service", SERVICE), ("scope", "repository:a/b:pull,push"), ("account", "bar")],
        user="bar",
        password="bar",
    )
    header, _ = verify_jwt(body["access_token"], realm.certificate)
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"] == "2027-01-15T08:00:00Z"
    assert "refresh_token" not in body
    assert header["typ"] == "JWT" and header["alg"] == "ES256"
    assert base64.b64decode(header["x5c"][0]) == realm.certificate.public_bytes(Encoding.DER)
    assert len(header["kid"].split(":")) == 12
    assert claims["iss"] == "tokend-test"
    assert claims["sub"] == "bar"
    assert claims["aud"] == SERVICE
    assert claims["exp"] == NOW + 300
    assert NOW - 60 < claims["nbf"] == claims["iat"] < NOW
    assert len(claims["jti"]) == 32 and int(claims["jti"], 16) >= 0
    assert claims["access"] == [entry("a/b", "pull", "push")]


def test_every_token_has_a_fresh_jti(realm: Realm) -> None:
    first, _ = realm.token([("service", SERVICE)])
    second, _ = realm.token([("service", SERVICE)])
    assert first["jti"] != second["jti"]


def test_anonymous_whitelist(realm: Realm) -> None:
    assert realm.access("repository:public/hello:pull,push") == [entry("public/hello", "pull")]
    assert realm.access("repository:private/app:pull") == []
    claims, _ = realm.token([("service", SERVICE), ("scope", "repository:public/hello:pull")])
    assert claims["sub"] == ""


def test_anonymous_blacklist(tmp_path: Path) -> None:
    realm = web_realm(tmp_path, {"blacklist": True, "repositories": ["private/app"]})
    assert realm.access("repository:private/app:pull") == []
    assert realm.access("repository:any/thing:pull,push") == [entry("any/thing", "pull")]


def test_each_users_rights_and_the_intersection(realm: Realm) -> None:
    assert realm.access("repository:x:pull,push", user="foo", password="foo") == [
        entry("x", "pull")
    ]
    assert realm.access("repository:x:pull,push", user="bar", password="bar") == [
        entry("x", "pull", "push")
    ]
    assert realm.access("repository:x:pull", user="bar", password="bar") == [entry("x", "pull")]
    assert realm.access("repository:team/app:push,pull", user="team", password="s3cret") == [
        entry("team/app", "push", "pull")
    ]
    assert realm.access("repository:secret/x:pull", user="team", password="s3cret") == []


def test_multiple_scopes_are_all_answered(realm: Realm) -> None:
    access = realm.access(
        "repository:team/app:pull,push repository:other:pull,push",
        "repository:secret/x:pull",
        "registry:catalog:*",
        "repository(plugin):classy:pull",
        user="team",
        password="s3cret",
    )
    assert access == [
        entry("team/app", "pull", "push"),
        entry("other", "pull"),
        entry("catalog", "*", kind="registry"),
        entry("classy", "pull"),
    ]


def test_catalog(tmp_path: Path) -> None:
    closed = web_realm(tmp_path / "a")
    assert closed.access("registry:catalog:*") == []
    assert closed.access("registry:catalog:*", user="foo", password="foo") == [
        entry("catalog", "*", kind="registry")
    ]
    opened = web_realm(tmp_path / "b", {"catalog": True})
    assert opened.access("registry:catalog:*") == [entry("catalog", "*", kind="registry")]


def test_unknown_resource_types_get_nothing(realm: Realm) -> None:
    assert realm.access("madeup:x:pull", user="bar", password="bar") == []


def test_no_scope_is_a_login_check(realm: Realm) -> None:
    assert realm.access(user="foo", password="foo") == []


@pytest.mark.parametrize(("user", "password"), [("foo", "wrong"), ("nobody", "foo"), ("foo", "")])
def test_failed_authentication_is_401_with_a_basic_challenge(
    realm: Realm, user: str, password: str
) -> None:
    code, headers, body = realm.call(
        "GET", f"/v2/token?service={SERVICE}", user=user, password=password
    )
    assert code == 401
    assert headers[b"WWW-Authenticate"] == [b'Basic realm="tokend-test"']
    assert body["errors"][0]["code"] == "UNAUTHORIZED"


def raw_auth(value: bytes) -> dict[bytes, list[bytes]]:
    return {b"Authorization": [value]}


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "message"),
    [
        ("GET", f"/v2/token?service={SERVICE}", raw_auth(b"Basic %%%"), 400, "base64"),
        (
            "GET",
            f"/v2/token?service={SERVICE}",
            raw_auth(b"Basic " + base64.b64encode(b"nocolon")),
            400,
            "no ':'",
        ),
        (
            "GET",
            f"/v2/token?service={SERVICE}",
            raw_auth(b"Basic " + base64.b64encode(b"\xff\xfe:x")),
            400,
            "UTF-8",
        ),
        ("GET", f"/v2/token?service={SERVICE}", raw_auth(b"Bearer abc.def.ghi"), 401, "Basic"),
        ("GET", f"/v2/token?service={SERVICE}&scope=" + "a" * 9000, {}, 400, "longer"),
        (
            "GET",
            f"/v2/token?service={SERVICE}&scope=repository:Bad:pull",
            {},
            400,
            "'repository:Bad:pull'",
        ),
        ("GET", f"/v2/token?service={SERVICE}&scope=nonsense", {}, 400, "invalid scope"),
        ("GET", "/v2/token?service=elsewhere", {}, 400, "unknown service"),
        ("GET", "/v2/token", {}, 400, "the service parameter is required: one of"),
        ("GET", f"/v2/token?service={SERVICE}&service=other.test", {}, 400, "more than once"),
        ("GET", f"/v2/token?service={SERVICE}&scope=%ff", {}, 400, "UTF-8"),
        ("GET", "/v2/token/%ff", {}, 400, "UTF-8"),
        ("GET", "/elsewhere", {}, 404, "/v2/token"),
        ("DELETE", "/v2/token", {}, 405, "GET and POST"),
        ("PATCH", "/v2/token", {}, 405, "GET and POST"),
    ],
)
def test_bad_input_gets_a_json_error_never_a_500(
    realm: Realm,
    method: str,
    path: str,
    headers: dict[bytes, list[bytes]],
    status: int,
    message: str,
) -> None:
    code, _, body = realm.call(method, path, headers=headers)
    assert code == status
    assert message in body["errors"][0]["message"]


def test_account_must_match_the_basic_user(realm: Realm) -> None:
    code, _, body = realm.call(
        "GET", f"/v2/token?service={SERVICE}&account=bar", user="foo", password="foo"
    )
    assert code == 400
    assert "account" in body["errors"][0]["message"]


def test_password_longer_than_bcrypt_reads_is_refused_cleanly(realm: Realm) -> None:
    """Refused like any wrong password (no users.json hash can match one): a message of its
    own would tell users.json names from directory names, which may have such passwords."""
    code, _, body = realm.call("GET", f"/v2/token?service={SERVICE}", user="foo", password="x" * 73)
    assert code == 401
    assert body["errors"][0]["message"] == "invalid user name or password"


def test_method_not_allowed_lists_the_allowed_ones(realm: Realm) -> None:
    _, headers, _ = realm.call("PUT", "/v2/token")
    assert headers[b"Allow"] == [b"GET, HEAD, POST"]


def post(
    realm: Realm, form: dict[str, str], content_type: bytes = b"application/x-www-form-urlencoded"
) -> tuple[int, Any]:
    code, _, body = realm.call(
        "POST",
        "/v2/token",
        data=urlencode(form).encode(),
        headers={b"Content-Type": [content_type]},
    )
    return code, body


PASSWORD_GRANT = {
    "grant_type": "password",
    "username": "bar",
    "password": "bar",
    "service": SERVICE,
    "client_id": "containerd-client",
    "scope": "repository:x:pull,push repository:y:pull",
    "access_type": "offline",
}


def test_post_password_grant(realm: Realm) -> None:
    code, body = post(realm, PASSWORD_GRANT)
    assert code == 200, body
    _, claims = verify_jwt(body["access_token"], realm.certificate)
    assert claims["sub"] == "bar"
    assert claims["access"] == [entry("x", "pull", "push"), entry("y", "pull")]
    assert body["scope"] == "repository:x:pull,push repository:y:pull"
    assert body["expires_in"] == 300
    assert body["issued_at"] == "2027-01-15T08:00:00Z"
    assert "refresh_token" not in body


def test_post_grants_the_intersection(realm: Realm) -> None:
    code, body = post(realm, {**PASSWORD_GRANT, "username": "foo", "password": "foo"})
    assert code == 200
    assert body["scope"] == "repository:x:pull repository:y:pull"


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"password": "wrong"}, 401, "invalid_grant"),
        ({"username": "ghost"}, 401, "invalid_grant"),
        ({"grant_type": "refresh_token", "refresh_token": "x"}, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
        ({"client_id": ""}, 400, "invalid_request"),
        ({"service": "elsewhere"}, 400, "invalid_request"),
        ({"scope": "repository:x"}, 400, "invalid_request"),
        ({"username": ""}, 400, "invalid_request"),
    ],
)
def test_post_errors_follow_rfc6749(
    realm: Realm, change: dict[str, str], status: int, error: str
) -> None:
    code, body = post(realm, {**PASSWORD_GRANT, **change})
    assert code == status
    assert body["error"] == error
    assert body["error_description"]


def test_post_needs_a_form(realm: Realm) -> None:
    code, body = post(realm, PASSWORD_GRANT, content_type=b"application/json")
    assert code == 400
    assert body["error"] == "invalid_request"


def test_healthz(realm: Realm) -> None:
    """Only ok or degraded: the details are the metrics listener's (tests/web/test_healthz.py)."""
    code, _, body = realm.call("GET", "/healthz")
    assert (code, body) == (200, {"status": "ok"})


def test_one_log_event_per_request_without_secrets(realm: Realm) -> None:
    events: list[LogEvent]
    with capturedLogs() as events:
        realm.access(
            "repository:x:pull,push",
            user="foo",
            password="foo",
            headers={b"X-Forwarded-For": [b"203.0.113.9, 10.0.0.1"]},
        )
        realm.call("GET", f"/v2/token?service={SERVICE}", user="foo", password="hunter2")
    issued = [e for e in events if e.get("outcome") == "issued"]
    refused = [e for e in events if e.get("outcome") == "refused"]
    assert len(issued) == 1 and len(refused) == 1
    assert issued[0]["account"] == "foo"
    assert issued[0]["client"] == "127.0.0.1", "headers from an untrusted peer are ignored"
    assert issued[0]["asked"] == ["repository:x:pull,push"]
    assert issued[0]["granted"] == ["repository:x:pull"]
    assert refused[0]["status"] == 401
    flattened = repr(events)
    assert "hunter2" not in flattened and "Basic " not in flattened
