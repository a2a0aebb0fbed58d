"""The docker engine and containerd as clients: docker login/push/pull, ctr's POST grant."""

from __future__ import annotations

import re

import pytest
from e2e.engines import Engine
from e2e.stack import Stack

pytestmark = pytest.mark.e2e


def issued(log: str, flow: str, account: str, client_id: str) -> list[str]:
    pattern = f"issued {flow} token to '{account}' from "
    return [
        line for line in log.splitlines() if pattern in line and f"(client_id {client_id})" in line
    ]


def test_docker_login_and_logout(stack: Stack, engine: Engine) -> None:
    offset = stack.tokend_log_offset()
    result = engine.login("login-ok", "bar", "bar")
    assert result.ok, result.stderr
    assert "Login Succeeded" in result.stdout
    log = stack.tokend_log_since(offset)
    assert issued(log, "GET", "bar", "docker"), log

    for user, password in (("bar", "wrong"), ("nobody", "bar")):
        failed = engine.login("login-bad", user, password)
        assert not failed.ok
        assert "unauthorized" in failed.stderr.lower(), failed.stderr

    logout = engine.docker("login-ok", "logout", stack.registry)
    assert logout.ok, logout.stderr
    assert stack.registry not in (engine.root / "clients" / "login-ok" / "config.json").read_text()


def test_docker_push_and_pull_follow_each_users_rights(stack: Stack, engine: Engine) -> None:
    assert engine.login("pusher", "bar", "bar").ok
    reference, stored = engine.push_stored("pusher", stack.new_image(), "dock/app")

    assert engine.docker("pusher", "rmi", reference).ok
    assert engine.login("puller", "foo", "foo").ok
    pulled = engine.docker("puller", "pull", reference)
    assert pulled.ok, pulled.stderr
    assert f"Digest: {stored}" in pulled.stdout

    denied_ref = f"{stack.registry}/dock/foo-was-here:latest"
    assert engine.docker("puller", "tag", reference, denied_ref).ok
    denied = engine.docker("puller", "push", denied_ref)
    assert not denied.ok
    assert re.search(r"denied|unauthorized", denied.stderr + denied.stdout), denied.stderr
    assert not stack.repository_exists("dock/foo-was-here")


def test_anonymous_docker_pull_of_a_whitelisted_repository(stack: Stack, engine: Engine) -> None:
    image = stack.new_image()
    assert stack.push(image, "public/hello", "bar:bar").ok
    assert engine.docker("anonymous", "logout", stack.registry).ok
    pulled = engine.docker("anonymous", "pull", f"{stack.registry}/public/hello:latest")
    assert pulled.ok, pulled.stderr
    assert f"Digest: {image.manifest_digest}" in pulled.stdout
    refused = engine.docker("anonymous", "pull", f"{stack.registry}/dock/app:latest")
    assert not refused.ok


def test_containerd_uses_the_post_password_grant(stack: Stack, engine: Engine) -> None:
    image = stack.new_image()
    assert stack.push(image, "ctr/app", "bar:bar").ok
    reference = f"{stack.registry}/ctr/app:latest"

    offset = stack.tokend_log_offset()
    pulled = engine.ctr_pull(reference, "foo:foo")
    assert pulled.ok, pulled.stderr
    assert image.manifest_digest in pulled.stdout + pulled.stderr
    log = stack.tokend_log_since(offset)
    assert issued(log, "POST", "foo", "containerd-client"), log
    assert "refused POST" not in log, log

    wrong = engine.ctr_pull(reference, "foo:wrong")
    assert not wrong.ok

    public = stack.new_image()
    assert stack.push(public, "public/hello", "bar:bar").ok
    anonymous = engine.ctr_pull(f"{stack.registry}/public/hello:latest")
    assert anonymous.ok, anonymous.stderr
    denied = engine.ctr_pull(reference)
    assert not denied.ok
