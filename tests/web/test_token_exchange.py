"""Federated logins through the web layer, in memory: RFC 8693's token-exchange grant, a trust's
name and its platform JWT as Basic credentials or containerd's password grant, the refusals
(400/401 JSON bodies, 503 with Retry-After when an issuer's keys were never fetched) and the
throttle, which counts federated failures by address, never by trust name."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from realms import SERVICE, Realm, Response, post

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
