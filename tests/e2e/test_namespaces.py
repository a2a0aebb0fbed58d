"""Personal namespaces through a group: ``${account}/**`` holds everything, ``*`` pulls.

alice and bob get their rights only from one group in groups.json, so every outcome here goes
through pattern matching, ``${account}`` binding and the union over sources. Each scenario checks
what the registry stored (its filesystem, not the client's word) and what tokend logged that it
granted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.stack import BCRYPT_COST, Stack
from support import hash_password, load_certificate, verify_jwt

pytestmark = pytest.mark.e2e

DENIED = ("denied", "unauthorized", "authentication required", "401", "403")
GROUP = "developers"
GROUPS = {GROUP: {"repositories": {"${account}/**": ["*"], "*": ["pull"]}}}
ALICE, BOB = "alice:alice-pw", "bob:bob-pw"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def refused(stderr: str) -> bool:
    return any(word in stderr.lower() for word in DENIED)


def pulled_manifest(target: Path) -> str:
    index = json.loads((target / "index.json").read_text())
    return str(index["manifests"][0]["digest"])


def log_says(log: str, account: str, asked: str, granted: list[str]) -> bool:
    """Whether tokend logged a token for ``account`` asking ``asked`` and granting ``granted``.

    The line is matched on its parts, not whole, so the flow and client address may vary.
    """
    return any(
        f"to {account!r}" in line and f"asked [{asked!r}], granted {granted!r}" in line
        for line in log.splitlines()
    )


@pytest.fixture(scope="module")
def members(stack: Stack) -> Iterator[None]:
    """alice and bob, members of the group and nothing else; the stack is restored afterwards.

    groups.json goes in first and comes out last: users.json may only name groups that exist.
    """
    original = stack.read("users.json")
    users: dict[str, Any] = json.loads(json.dumps(original))
    for creds in (ALICE, BOB):
        name, password = creds.split(":")
        users[name] = {"pass_hash": hash_password(password, BCRYPT_COST), "groups": [GROUP]}
    stack.rewrite("groups.json", GROUPS)
    try:
        stack.rewrite("users.json", users)
        try:
            yield
        finally:
            stack.rewrite("users.json", original)
    finally:
        stack.remove("groups.json")


@pytest.fixture(scope="module")
def alice_app(stack: Stack, members: None) -> str:
    """The manifest digest alice pushed to ``alice/app:latest``; the registry must hold it."""
    image = stack.new_image()
    offset = stack.tokend_log_offset()
    result = stack.push(image, "alice/app", ALICE)
    assert result.ok, result.stderr
    assert stack.stored_tag("alice/app") == image.manifest_digest
    log = stack.tokend_log_since(offset)
    assert log_says(
        log, "alice", "repository:alice/app:pull,push", ["repository:alice/app:pull,push"]
    ), log
    return image.manifest_digest


def test_owner_pushes_into_her_namespace(stack: Stack, alice_app: str) -> None:
    inspect = stack.skopeo(
        "inspect", "--tls-verify=false", "--creds", ALICE, f"docker://{stack.registry}/alice/app"
    )
    assert inspect.ok, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == alice_app


def test_member_cannot_push_into_anothers_namespace(stack: Stack, alice_app: str) -> None:
    before = stack.stored_files()
    offset = stack.tokend_log_offset()
    for repository in ("alice/app", "alice/bob-was-here"):
        denied = stack.push(stack.new_image(), repository, BOB)
        assert not denied.ok, repository
        assert refused(denied.stderr), denied.stderr
    assert stack.stored_files() == before, "a refused push left something in the registry"
    assert stack.stored_tag("alice/app") == alice_app
    assert not stack.repository_exists("alice/bob-was-here")
    log = stack.tokend_log_since(offset)
    # The group's "*" rule still lets bob pull: push is what the token lacks.
    assert log_says(log, "bob", "repository:alice/app:pull,push", ["repository:alice/app:pull"]), (
        log
    )


def test_member_pulls_from_anothers_namespace(stack: Stack, alice_app: str) -> None:
    result, target = stack.pull("alice/app", BOB)
    assert result.ok, result.stderr
    assert pulled_manifest(target) == alice_app


def test_member_pushes_into_his_own_namespace(stack: Stack, alice_app: str) -> None:
    image = stack.new_image()
    result = stack.push(image, "bob/app", BOB)
    assert result.ok, result.stderr
    assert stack.stored_tag("bob/app") == image.manifest_digest
    assert stack.stored_tag("alice/app") == alice_app

    # ** reaches any depth below the account's name, and nothing outside it.
    nested = stack.new_image()
    result = stack.push(nested, "bob/tools/builder", BOB)
    assert result.ok, result.stderr
    assert stack.stored_tag("bob/tools/builder") == nested.manifest_digest
    outside = stack.push(stack.new_image(), "bobby/app", BOB)
    assert not outside.ok
    assert refused(outside.stderr), outside.stderr
    assert not stack.repository_exists("bobby/app")


def _delete_token(stack: Stack, repository: str, creds: str) -> tuple[str, list[str]]:
    """A token asking for ``delete`` on ``repository``, and the actions it actually holds."""
    user, password = creds.split(":")
    token = stack.token(f"repository:{repository}:delete", user, password)
    _, claims = verify_jwt(token, load_certificate(stack.certs / "RootCA.crt"))
    actions = [
        action
        for entry in claims["access"]
        if entry["name"] == repository
        for action in entry["actions"]
    ]
    return token, actions


def _delete_manifest(stack: Stack, repository: str, digest: str, token: str) -> tuple[int, Any]:
    status, _, body = stack.request(
        f"/v2/{repository}/manifests/{digest}",
        {"Authorization": f"Bearer {token}", "Accept": MANIFEST_TYPES},
        method="DELETE",
    )
    return status, body


def test_only_the_owner_deletes_a_manifest(stack: Stack, members: None) -> None:
    image = stack.new_image()
    assert stack.push(image, "alice/scratch", ALICE).ok
    assert stack.stored_tag("alice/scratch") == image.manifest_digest
    revision = (
        stack.storage
        / "docker/registry/v2/repositories/alice/scratch/_manifests/revisions/sha256"
        / image.manifest_digest.removeprefix("sha256:")
        / "link"
    )  # the registry deletes this link file, not its directory
    assert revision.exists()

    token, actions = _delete_token(stack, "alice/scratch", BOB)
    assert actions == []
    status, body = _delete_manifest(stack, "alice/scratch", image.manifest_digest, token)
    assert status in (401, 403), body
    assert stack.stored_tag("alice/scratch") == image.manifest_digest
    assert revision.exists()

    token, actions = _delete_token(stack, "alice/scratch", ALICE)
    assert actions == ["delete"]
    status, body = _delete_manifest(stack, "alice/scratch", image.manifest_digest, token)
    assert status == 202, body
    assert stack.stored_tag("alice/scratch") is None, "the tag still names the deleted manifest"
    assert not revision.exists()
    pulled, _ = stack.pull("alice/scratch", ALICE)
    assert not pulled.ok
    assert "manifest unknown" in pulled.stderr.lower(), pulled.stderr
