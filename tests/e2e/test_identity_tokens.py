"""Identity tokens (issue 13) with the real clients: docker login keeps a refresh token and no
password, skopeo refreshes from an auth file, and neither kind of token passes for the other.

One account of this module's own (``ident``) is added to the session's users.json and removed at
the end, so revoking its tokens leaves every other scenario's accounts as they were.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from e2e.engines import Engine
from e2e.stack import BCRYPT_COST, SERVICE, Stack
from support import hash_password

from tokend.login.refresh_tokens import fingerprint

pytestmark = pytest.mark.e2e

USER, PASSWORD = "ident", "ident-secret-pw"
REALM = "/v2/token"


def log_lines(log: str, *parts: str) -> list[str]:
    return [line for line in log.splitlines() if all(part in line for part in parts)]


def refreshed(log: str, client_id: str, token: str) -> list[str]:
    """tokend's lines for access tokens issued to ``USER`` by the refresh grant of ``token``."""
    return log_lines(
        log,
        f"issued POST token to '{USER}' from ",
        f"(client_id {client_id}) by refresh_token:",
        f"; refresh token {fingerprint(token)}",
    )


def password_logins(log: str) -> list[str]:
    return log_lines(log, f"token to '{USER}' from ", "by password:")


@pytest.fixture(scope="module")
def ident(stack: Stack) -> Iterator[dict[str, Any]]:
    """users.json with ``USER`` added (push and pull on ident/*); the original restored after."""
    original = stack.read("users.json")
    users = json.loads(json.dumps(original))
    users[USER] = {
        "pass_hash": hash_password(PASSWORD, BCRYPT_COST),
        "repositories": {"ident/*": ["pull", "push"]},
    }
    stack.rewrite("users.json", users)
    try:
        yield users
    finally:
        stack.rewrite("users.json", original)


def offline_login(stack: Stack, scope: str | None = None) -> dict[str, Any]:
    """GET the realm as ``docker login`` does (Basic, ``offline_token=true``), through nginx."""
    parameters = {
        "account": USER,
        "client_id": "tokend-e2e",
        "offline_token": "true",
        "service": SERVICE,
    }
    if scope is not None:
        parameters["scope"] = scope
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    status, body = stack.https(
        f"{REALM}?{urlencode(parameters)}", {"Authorization": f"Basic {basic}"}
    )
    assert status == 200, body
    assert body.get("refresh_token"), body
    return dict(body)


def refresh_grant(stack: Stack, refresh_token: str, *scopes: str) -> tuple[int, Any]:
    fields = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("service", SERVICE),
        ("client_id", "tokend-e2e"),
        *(("scope", scope) for scope in scopes),
    ]
    return stack.post_form(REALM, fields)


def tags(stack: Stack, repository: str, bearer: str) -> tuple[int, str, Any]:
    status, headers, body = stack.request(
        f"/v2/{repository}/tags/list", {"Authorization": f"Bearer {bearer}"}
    )
    return status, headers.get("WWW-Authenticate", ""), body


@pytest.fixture(scope="module")
def seeded(stack: Stack, ident: dict[str, Any]) -> str:
    """``ident/seed:latest`` pushed with the password; what the confusion scenarios read."""
    image = stack.new_image()
    pushed = stack.push(image, "ident/seed", f"{USER}:{PASSWORD}")
    assert pushed.ok, pushed.stderr
    return image.manifest_digest


def test_docker_login_keeps_an_identity_token_and_no_password(
    stack: Stack, engine: Engine, ident: dict[str, Any]
) -> None:
    offset = stack.tokend_log_offset()
    login = engine.login("ident-docker", USER, PASSWORD)
    assert login.ok, login.stderr
    config_file = engine.root / "clients" / "ident-docker" / "config.json"
    config_text = config_file.read_text()
    entry = json.loads(config_text)["auths"][stack.registry]
    identity_token = entry.get("identitytoken")
    assert identity_token, config_text
    assert PASSWORD not in config_text
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in config_text
    if "auth" in entry:
        assert base64.b64decode(entry["auth"]).decode() == f"{USER}:", config_text
    login_log = stack.tokend_log_since(offset)
    # The token docker stored is the refresh token tokend issued at this login.
    issued_at_login = log_lines(
        login_log,
        "(client_id docker) by password:",
        f"; refresh token {fingerprint(identity_token)}",
    )
    assert issued_at_login, login_log

    offset = stack.tokend_log_offset()
    reference, stored = engine.push_stored("ident-docker", stack.new_image(), "ident/docker-app")
    assert engine.docker("ident-docker", "rmi", reference).ok
    pulled = engine.docker("ident-docker", "pull", reference)
    assert pulled.ok, pulled.stderr
    assert f"Digest: {stored}" in pulled.stdout
    log = stack.tokend_log_since(offset)
    assert refreshed(log, "docker", identity_token), log
    assert not password_logins(log), log
    assert "refused" not in log, log

    users = json.loads(json.dumps(ident))
    users[USER]["pass_hash"] = hash_password("a-new-password", BCRYPT_COST)
    stack.rewrite("users.json", users)
    try:
        assert engine.docker("ident-docker", "rmi", reference).ok
        offset = stack.tokend_log_offset()
        revoked = engine.docker("ident-docker", "pull", reference)
        assert not revoked.ok, revoked.stdout
        # docker 20.10 does not parse RFC 6749 error bodies: it quotes the 400's body whole.
        assert "invalid_grant" in revoked.stderr, revoked.stderr
        log = stack.tokend_log_since(offset)
        assert log_lines(
            log,
            "refused POST /v2/token from ",
            ": 400 ",
            "client_id docker); refresh token " + fingerprint(identity_token),
        ), log
        assert not refreshed(log, "docker", identity_token), log
    finally:
        stack.rewrite("users.json", ident)


def _auth_file_home(stack: Stack, name: str, identity_token: str) -> Path:
    """A skopeo HOME whose auth file holds the identity token and no password: containers/image
    sends the refresh grant only when the entry's ``auth`` is base64("user:") too (E2E.md)."""
    home = stack.client_home(name)
    entry = {
        "auth": base64.b64encode(f"{USER}:".encode()).decode(),
        "identitytoken": identity_token,
    }
    (home / "auth.json").write_text(json.dumps({"auths": {stack.registry: entry}}))
    return home


def test_skopeo_reads_pushes_and_mounts_with_an_identity_token(
    stack: Stack, ident: dict[str, Any]
) -> None:
    identity_token = offline_login(stack)["refresh_token"]
    home = _auth_file_home(stack, "ident-skopeo", identity_token)
    image = stack.new_image()
    offset = stack.tokend_log_offset()

    def copy(repository: str) -> None:
        result = stack.skopeo(
            "copy", "--dest-tls-verify=false", f"oci:{image.path}:latest",
            f"docker://{stack.registry}/{repository}:latest", home=home,
        )  # fmt: skip
        assert result.ok, result.stderr
        assert stack.stored_tag(repository) == image.manifest_digest

    copy("ident/source")
    inspect = stack.skopeo(
        "inspect", "--tls-verify=false", f"docker://{stack.registry}/ident/source", home=home
    )
    assert inspect.ok, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == image.manifest_digest
    copy("ident/target")  # same HOME: skopeo's blob cache knows ident/source has the layer

    access_log = (stack.root / "nginx" / "access.log").read_text()
    mounts = log_lines(
        access_log,
        "POST /v2/ident/target/blobs/uploads/?",
        "from=ident%2Fsource",
        f"mount={quote(image.layer_digest)}",
    )
    assert mounts, "skopeo did not mount the layer from ident/source"
    assert all('" 201 ' in line for line in mounts), mounts

    log = stack.tokend_log_since(offset)
    lines = refreshed(log, "containers/image", identity_token)
    assert lines, log
    # The mount's grant repeated the scope field, one per repository, and both were granted.
    assert [
        line
        for line in lines
        if "repository:ident/source:pull" in line.partition("granted")[2]
        and "repository:ident/target:pull,push" in line.partition("granted")[2]
    ], lines
    assert not password_logins(log), log
    assert "refused" not in log, log


def test_the_registry_refuses_a_refresh_token_as_bearer(stack: Stack, seeded: str) -> None:
    scope = "repository:ident/seed:pull"
    login = offline_login(stack, scope)
    status, body = refresh_grant(stack, login["refresh_token"], scope)
    assert status == 200, body
    assert body["refresh_token"] == login["refresh_token"], "the refresh token was rotated"

    for access_token in (login["token"], body["access_token"]):
        status, challenge, listed = tags(stack, "ident/seed", access_token)
        assert status == 200, (challenge, listed)
        assert listed["tags"] == ["latest"]
    status, challenge, refused = tags(stack, "ident/seed", login["refresh_token"])
    assert status == 401, refused
    assert refused["errors"][0]["code"] == "UNAUTHORIZED", refused
    assert 'error="invalid_token"' in challenge, challenge


def test_tokend_refuses_an_access_token_as_refresh_token(stack: Stack, seeded: str) -> None:
    scope = "repository:ident/seed:pull"
    login = offline_login(stack, scope)
    status, body = refresh_grant(stack, login["refresh_token"], scope)
    assert status == 200, body
    assert body["scope"] == scope, body

    for access_token in (login["token"], body["access_token"]):
        offset = stack.tokend_log_offset()
        status, refused = refresh_grant(stack, access_token, scope)
        assert status == 400, refused
        assert refused["error"] == "invalid_grant", refused
        assert "access_token" not in refused, refused
        log = stack.tokend_log_since(offset)
        assert log_lines(log, "refused POST", f"refresh token {fingerprint(access_token)}"), log
