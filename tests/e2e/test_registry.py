"""docker-registry 2.8 accepts what tokend issues, through nginx, driven by skopeo."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from e2e.stack import ISSUER, SERVICE, Stack
from support import write_key_pair

from tokend.keys import load_signing_key
from tokend.scope import ResourceScope
from tokend.tokens import TokenIssuer

pytestmark = pytest.mark.e2e

DENIED = ("denied", "unauthorized", "authentication required", "401", "403")


def refused(stderr: str) -> bool:
    return any(word in stderr.lower() for word in DENIED)


def pulled_manifest(target: Path) -> str:
    index = json.loads((target / "index.json").read_text())
    return str(index["manifests"][0]["digest"])


def test_push_by_a_push_user_is_stored_and_visible(stack: Stack) -> None:
    image = stack.new_image()
    result = stack.push(image, "team/app", "bar:bar")
    assert result.ok, result.stderr
    assert stack.stored_tag("team/app") == image.manifest_digest

    inspect = stack.skopeo(
        "inspect", "--tls-verify=false", "--creds", "bar:bar", f"docker://{stack.registry}/team/app"
    )
    assert inspect.ok, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == image.manifest_digest
    tags = stack.skopeo(
        "list-tags",
        "--tls-verify=false",
        "--creds",
        "bar:bar",
        f"docker://{stack.registry}/team/app",
    )
    assert tags.ok, tags.stderr
    assert json.loads(tags.stdout)["Tags"] == ["latest"]


def test_pull_only_user_pulls_but_cannot_push(stack: Stack) -> None:
    image = stack.new_image()
    assert stack.push(image, "team/readable", "bar:bar").ok

    result, target = stack.pull("team/readable", "foo:foo")
    assert result.ok, result.stderr
    assert pulled_manifest(target) == image.manifest_digest

    denied = stack.push(stack.new_image(), "team/foo-was-here", "foo:foo")
    assert not denied.ok
    assert refused(denied.stderr), denied.stderr
    assert not stack.repository_exists("team/foo-was-here")


@pytest.mark.parametrize("creds", ["bar:wrong", "nobody:bar", "bar:"])
def test_bad_credentials_are_refused(stack: Stack, creds: str) -> None:
    result = stack.push(stack.new_image(), "team/bad-creds", creds)
    assert not result.ok
    assert refused(result.stderr), result.stderr
    assert not stack.repository_exists("team/bad-creds")
    pull, _ = stack.pull("team/app", creds)
    assert not pull.ok


def test_anonymous_pull_follows_the_whitelist_then_the_blacklist(stack: Stack) -> None:
    public, private = stack.new_image(), stack.new_image()
    assert stack.push(public, "public/hello", "bar:bar").ok
    assert stack.push(private, "private/thing", "bar:bar").ok

    result, target = stack.pull("public/hello", None)
    assert result.ok, result.stderr
    assert pulled_manifest(target) == public.manifest_digest
    result, _ = stack.pull("private/thing", None)
    assert not result.ok
    assert refused(result.stderr), result.stderr
    assert not stack.push(stack.new_image(), "public/hello", None).ok
    assert stack.stored_tag("public/hello") == public.manifest_digest

    original = stack.read("repositories.json")
    stack.rewrite("repositories.json", {**original, "blacklist": True})
    try:
        result, target = stack.pull("private/thing", None)
        assert result.ok, result.stderr
        assert pulled_manifest(target) == private.manifest_digest
        result, _ = stack.pull("public/hello", None)
        assert not result.ok
    finally:
        stack.rewrite("repositories.json", original)


def test_catalog_lists_pushed_repositories_for_an_authenticated_user(stack: Stack) -> None:
    assert stack.push(stack.new_image(), "catalog/one", "bar:bar").ok
    token = stack.token("registry:catalog:*", "foo", "foo")
    status, body = stack.https("/v2/_catalog", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    assert "catalog/one" in body["repositories"]

    anonymous = stack.token("registry:catalog:*")
    status, _ = stack.https("/v2/_catalog", {"Authorization": f"Bearer {anonymous}"})
    assert status == 401


def test_cross_repository_blob_mount(stack: Stack) -> None:
    image = stack.new_image()
    home = stack.client_home("mounter")
    assert stack.push(image, "mount/source", "bar:bar", home=home).ok
    copied = stack.push(image, "mount/target", "bar:bar", home=home)
    assert copied.ok, copied.stderr
    assert stack.stored_tag("mount/target") == image.manifest_digest

    access_log = (stack.root / "nginx" / "access.log").read_text()
    mounts = [
        line
        for line in access_log.splitlines()
        if "POST /v2/mount/target/blobs/uploads/?" in line
        and "from=mount%2Fsource" in line
        and f"mount={quote(image.layer_digest)}" in line
    ]
    assert mounts, "skopeo did not mount the layer from mount/source"
    assert all('" 201 ' in line for line in mounts), mounts


def test_live_policy_change_grants_and_revokes_push(stack: Stack) -> None:
    original = stack.read("users.json")
    granted: dict[str, Any] = json.loads(json.dumps(original))
    granted["foo"]["repositories"]["*"] = ["pull", "push"]
    image = stack.new_image()

    stack.rewrite("users.json", granted)
    try:
        result = stack.push(image, "live/foo-app", "foo:foo")
        assert result.ok, result.stderr
        assert stack.stored_tag("live/foo-app") == image.manifest_digest
    finally:
        stack.rewrite("users.json", original)

    again = stack.push(stack.new_image(), "live/foo-app-2", "foo:foo")
    assert not again.ok
    assert refused(again.stderr), again.stderr
    assert not stack.repository_exists("live/foo-app-2")


def test_registry_rejects_a_token_signed_by_another_key(stack: Stack, tmp_path: Path) -> None:
    genuine = stack.token("registry:catalog:*", "bar", "bar")
    status, _ = stack.https("/v2/_catalog", {"Authorization": f"Bearer {genuine}"})
    assert status == 200

    key_path, cert_path = write_key_pair(tmp_path)
    catalog = (ResourceScope("registry", "catalog", ("*",)),)
    for forged_key in (
        load_signing_key(key_path, cert_path),
        load_signing_key(key_path, None, "libtrust"),
    ):
        forged = TokenIssuer(forged_key, ISSUER, 300).issue("bar", SERVICE, catalog, time.time())
        status, body = stack.https("/v2/_catalog", {"Authorization": f"Bearer {forged.token}"})
        assert status == 401, body
