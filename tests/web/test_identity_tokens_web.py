"""Identity (refresh) tokens through the web layer, in memory: issuing them at login, the
refresh_token grant, revocation through the policy, no rotation, no confusion with access
tokens, repeated scope fields, throttling and logging."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from realms import SERVICE, USERS, Realm, Response, offline_login, post, refresh, throttle
from support import verify_jwt
from twisted.logger import LogEvent, capturedLogs, formatEvent

from tokend.policy.files import load_policy

ASKED = "repository:public/hello:pull,push"
TTL = 90 * 86_400


def test_a_password_login_that_asks_gets_a_refresh_token(tmp_path: Path) -> None:
    realm = Realm(tmp_path, refresh_ttl=TTL)
    body = offline_login(realm)
    assert body["refresh_token"].count(".") == 2
    assert "refresh_token" not in realm.get("bar", "bar")[2], "not asked for"
    anonymous = realm.finish(realm.start(None, query="&offline_token=true"))
    assert anonymous[0] == 200 and "refresh_token" not in anonymous[2], "never anonymous"
    code, _, posted = post(
        realm,
        {
            "grant_type": "password",
            "username": "foo",
            "password": "foo",
            "service": SERVICE,
            "client_id": "containerd-client",
            "access_type": "offline",
        },
    )
    assert code == 200 and "refresh_token" in posted


def test_no_refresh_token_when_issuing_is_off(tmp_path: Path) -> None:
    for realm in (Realm(tmp_path / "zero", refresh_ttl=0), Realm(tmp_path / "none")):
        assert "refresh_token" not in offline_login(realm)


def test_the_refresh_grant_answers_what_the_account_may_do_now_without_bcrypt(
    tmp_path: Path,
) -> None:
    realm = Realm(tmp_path, refresh_ttl=TTL)
    token = offline_login(realm)["refresh_token"]
    runs = realm.bcrypt_runs
    code, headers, body = refresh(realm, token, ASKED, "repository:other/app:pull")
    assert code == 200, body
    assert realm.bcrypt_runs == runs
    _, claims = verify_jwt(body["access_token"], realm.certificate)
    assert claims["sub"] == "bar"
    assert claims["aud"] == SERVICE
    assert claims["access"] == [
        {"type": "repository", "name": "public/hello", "actions": ["pull", "push"]},
        {"type": "repository", "name": "other/app", "actions": ["pull"]},
    ]
    assert body["scope"] == "repository:public/hello:pull,push repository:other/app:pull"
    assert body["refresh_token"] == token, "never rotated"
    assert headers[b"Cache-Control"] == [b"no-store"]

    users = json.loads((realm.config / "users.json").read_text())
    users["bar"]["repositories"] = {"*": ["pull"]}  # the same hash: the token stays good
    (realm.config / "users.json").write_text(json.dumps(users))
    realm.holder.replace(load_policy(realm.config).policy, realm.clock.seconds())
    _, claims = verify_jwt(refresh(realm, token, ASKED)[2]["access_token"], realm.certificate)
    assert claims["access"][0]["actions"] == ["pull"], "rights as they are now"


def test_scope_may_be_repeated_or_space_separated_on_every_post_grant(tmp_path: Path) -> None:
    """containers/image repeats scope for a cross-repository mount; it used to get 400."""
    realm = Realm(tmp_path, refresh_ttl=TTL)
    token = offline_login(realm)["refresh_token"]
    wanted = "repository:a/b:pull repository:c/d:pull,push"
    repeated = refresh(realm, token, "repository:a/b:pull", "repository:c/d:pull,push")
    joined = refresh(realm, token, wanted)
    assert repeated[2]["scope"] == joined[2]["scope"] == wanted
    form = [
        ("grant_type", "password"),
        ("username", "bar"),
        ("password", "bar"),
        ("service", SERVICE),
        ("client_id", "containerd-client"),
        ("scope", "repository:a/b:pull"),
        ("scope", "repository:c/d:pull,push"),
    ]
    code, _, body = post(realm, form)
    assert code == 200 and body["scope"] == wanted


def invalid_grant(response: Response, reason: str) -> None:
    code, _, body = response
    assert code == 400, body
    assert body["error"] == "invalid_grant"
    assert reason in body["error_description"]


def test_a_changed_password_revokes_the_refresh_token(tmp_path: Path) -> None:
    realm = Realm(tmp_path, refresh_ttl=TTL)
    token = offline_login(realm)["refresh_token"]
    realm.reload({**USERS, "bar": ("new password", USERS["bar"][1])})
    invalid_grant(refresh(realm, token, ASKED), "password changed")


def test_a_removed_user_loses_the_refresh_token(tmp_path: Path) -> None:
    realm = Realm(tmp_path, refresh_ttl=TTL)
    token = offline_login(realm)["refresh_token"]
    realm.reload({"foo": USERS["foo"]})
    invalid_grant(refresh(realm, token, ASKED), "unknown account")


def test_tokens_valid_after_revokes_older_refresh_tokens(tmp_path: Path) -> None:
    realm = Realm(tmp_path, refresh_ttl=TTL)
    old = offline_login(realm)["refresh_token"]
    users = json.loads((realm.config / "users.json").read_text())
    users["bar"]["tokens_valid_after"] = "2027-01-15T08:00:01Z"  # NOW is 2027-01-15T08:00:00Z
    (realm.config / "users.json").write_text(json.dumps(users))
    realm.holder.replace(load_policy(realm.config).policy, realm.clock.seconds())
    invalid_grant(refresh(realm, old, ASKED), "tokens_valid_after")
    realm.clock.advance(2)
    new = offline_login(realm)["refresh_token"]
    assert refresh(realm, new, ASKED)[0] == 200, "a token issued since works"


def test_a_refresh_token_ends_with_its_lifetime(tmp_path: Path) -> None:
    realm = Realm(tmp_path, refresh_ttl=3600)
    token = offline_login(realm)["refresh_token"]
    realm.clock.advance(3599)
    assert refresh(realm, token, ASKED)[0] == 200
    realm.clock.advance(1)
    invalid_grant(refresh(realm, token, ASKED), "expired")


def test_an_access_token_is_not_a_refresh_token(tmp_path: Path) -> None:
    realm = Realm(tmp_path, refresh_ttl=TTL)
    access = offline_login(realm)["access_token"]
    invalid_grant(refresh(realm, access, ASKED), "not a refresh token")


def test_a_refresh_token_is_not_an_access_token(tmp_path: Path) -> None:
    """What the registry checks first: the audience. The e2e suite shows the real registry
    refusing it."""
    realm = Realm(tmp_path, refresh_ttl=TTL)
    token = offline_login(realm)["refresh_token"]
    _, claims = verify_jwt(token, realm.certificate)
    assert claims["aud"] != SERVICE
    assert "access" not in claims


REFRESH = {"grant_type": "refresh_token"}


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({**REFRESH, "client_id": "x"}, "invalid_request"),
        ({**REFRESH, "refresh_token": "a.b.c"}, "invalid_request"),
        ({**REFRESH, "refresh_token": "a.b.c", "client_id": "x"}, "invalid_grant"),
        ({**REFRESH, "refresh_token": "x" * 5000, "client_id": "x"}, "invalid_request"),
        ({"grant_type": "client_credentials", "client_id": "x"}, "unsupported_grant_type"),
    ],
)
def test_malformed_refresh_grants(tmp_path: Path, fields: dict[str, str], error: str) -> None:
    code, _, body = post(Realm(tmp_path, refresh_ttl=TTL), {**fields, "service": SERVICE})
    assert (code, body["error"]) == (400, error), body


def test_bad_refresh_tokens_count_against_the_address(tmp_path: Path) -> None:
    realm = Realm(tmp_path, refresh_ttl=TTL, throttle=throttle(per_address=3))
    good = offline_login(realm, "foo")["refresh_token"]
    for n in range(3):
        invalid_grant(refresh(realm, f"x.y.{n}", ASKED), "refused")
    code, _, body = refresh(realm, good, ASKED)
    assert code == 429, body
    assert body["error"] == "temporarily_unavailable"
    assert realm.get("bar", "bar")[0] == 429, "the same address"


def test_the_log_names_the_account_and_a_fingerprint_never_the_token(tmp_path: Path) -> None:
    realm = Realm(tmp_path, refresh_ttl=TTL)
    events: list[LogEvent]
    with capturedLogs() as events:
        token = offline_login(realm)["refresh_token"]
        assert refresh(realm, token, ASKED)[0] == 200
        realm.reload({"foo": USERS["foo"]})
        invalid_grant(refresh(realm, token, ASKED), "unknown account")
    lines = [formatEvent(e) for e in events if "outcome" in e]
    assert len(lines) == 3
    issued_login, issued_refresh, refused = lines
    assert "to 'bar'" in issued_login and "by password" in issued_login
    assert "to 'bar'" in issued_refresh and "by refresh_token" in issued_refresh
    assert "(client_id docker)" in issued_refresh
    assert "account 'bar'" in refused, "a signed token's account is named when it is refused"
    fingerprint = issued_login.rsplit("refresh token ", 1)[1]
    assert fingerprint and fingerprint in issued_refresh and fingerprint in refused
    for line in lines:
        assert token not in line
        assert token.split(".")[2] not in line
    assert base64.b64encode(b"bar:bar").decode() not in "".join(lines)
