"""Access tokens (issue 26) with the real clients and the real databases.

On the session's stack (its SQLite database by default, beside the config directory): docker
login with a token then pushes within the token's cap and not outside it, skopeo ``--creds``,
containerd's ``ctr`` (the POST password grant), a robot account with no password, and a docker
client holding the refresh token of a token that ``tokend token revoke`` ends. Tokens are made
and revoked with the ``tokend`` tool, as an operator does.

Apart, tokend alone on its socket: two daemons on one real PostgreSQL (a revocation through one
daemon's HTTP API is refused by the other within 2 s; the database stopped mid-test makes token
logins 503 while passwords and anonymous logins go on, and they recover by themselves), and
``--workers 2`` on SQLite (a revocation refused in every worker within 2 s).

Refusals asked of tokend's socket come from an ``X-Real-IP`` of this module's own, so they count
against that address in the login throttle, not against 127.0.0.1, which the session shares.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from daemons import worker_pids
from e2e.engines import Engine
from e2e.stack import (
    BCRYPT_COST,
    SERVICE,
    CommandResult,
    Stack,
    launch_tokend,
    new_stack,
    wait_until,
)
from postgres_server import PostgresServer, running_postgres
from support import REPO, UnixHTTPConnection, hash_password

pytestmark = pytest.mark.e2e

USER, PASSWORD = "atok", "atok-secret-pw"
ROBOT = "atok-robot"
CLIENT = "203.0.113.26"
"""Where this module's direct requests come from (TEST-NET-3), as X-Real-IP on tokend's socket."""
REVOCATION_SEEN_WITHIN = 2.0
"""Seconds the issue allows before every process sharing the database refuses a revoked token."""
SHOWN: list[str] = []
"""Every secret the tool showed in this module: none may reach a log."""


@dataclass(frozen=True)
class Created:
    """What ``tokend token create --json`` printed: the record, and the secret shown once."""

    id: str
    secret: str
    document: dict[str, Any]


def tool(*args: str) -> CommandResult:
    """The operator's ``tokend`` from this checkout, with no TOKEND_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    done = subprocess.run(
        [sys.executable, "-m", "tokend", *args],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return CommandResult(done.returncode, done.stdout, done.stderr)


def create(
    stack: Stack, owner: str, name: str, *scopes: str, database: str | None = None
) -> Created:
    where = ["--config-dir", str(stack.config), *(("--database", database) if database else ())]
    caps = [f"--scope={scope}" for scope in scopes]
    made = tool("token", "create", *where, "--owner", owner, "--name", name, "--expires", "1h",
                *caps, "--json")  # fmt: skip
    assert made.ok, made.stdout + made.stderr
    document = json.loads(made.stdout)
    SHOWN.append(document["secret"])
    assert document["owner"] == owner and document["state"] == "active", document
    assert document["scopes"] == list(scopes), document
    assert document["secret"].startswith("tkd_at_"), document
    return Created(document["id"], document["secret"], document)


def token_command(stack: Stack, verb: str, token: Created, database: str | None = None) -> Any:
    """``tokend token show|revoke ID --json``: the record as the tool prints it."""
    where = ["--config-dir", str(stack.config), *(("--database", database) if database else ())]
    done = tool("token", verb, token.id, *where, "--json")
    assert done.ok, done.stdout + done.stderr
    shown = json.loads(done.stdout)
    assert "secret" not in shown and token.secret not in done.stdout, shown
    return shown


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


def login(
    stack: Stack, user: str | None = None, password: str = "", scope: str = "repository:x/y:pull"
) -> tuple[int, Any, Any]:
    """``GET /v2/token`` on tokend's socket as skopeo sends it (anonymous without ``user``)."""
    parameters = {"service": SERVICE, "scope": scope}
    headers = {"X-Real-IP": CLIENT}
    if user is not None:
        parameters["account"] = user
        headers.update(basic(user, password))
    return stack.ask_tokend(f"/v2/token?{urlencode(parameters)}", headers)


def status_of(stack: Stack, user: str, password: str) -> int:
    return login(stack, user, password)[0]


@pytest.fixture(scope="module")
def owners(stack: Stack) -> Iterator[dict[str, Any]]:
    """users.json with ``USER`` added (push and pull on atok/* and atok-other/*); the original
    restored after."""
    original = stack.read("users.json")
    users = json.loads(json.dumps(original))
    users[USER] = {
        "pass_hash": hash_password(PASSWORD, BCRYPT_COST),
        "repositories": {"atok/*": ["pull", "push"], "atok-other/*": ["pull", "push"]},
    }
    stack.rewrite("users.json", users)
    try:
        yield users
    finally:
        stack.rewrite("users.json", original)


@pytest.fixture(scope="module")
def seeded(stack: Stack, owners: dict[str, Any]) -> str:
    """``atok/seed:latest`` pushed with the owner's password."""
    image = stack.new_image()
    pushed = stack.push(image, "atok/seed", f"{USER}:{PASSWORD}")
    assert pushed.ok, pushed.stderr
    return image.manifest_digest


def test_docker_login_with_a_token_pushes_within_its_cap_only(
    stack: Stack, engine: Engine, owners: dict[str, Any]
) -> None:
    token = create(stack, USER, "docker-ci", "atok/*:pull,push")
    logged_in = engine.login("atok-docker", USER, token.secret)
    assert logged_in.ok, logged_in.stderr
    config_text = (engine.root / "clients" / "atok-docker" / "config.json").read_text()
    assert token.secret not in config_text  # docker keeps the refresh token, not the secret

    image = stack.new_image()
    engine.push_stored("atok-docker", image, "atok/docker-app")

    outside = f"{stack.registry}/atok-other/docker-app:latest"
    engine.load(image, outside)
    refused = engine.docker("atok-docker", "push", outside)
    assert not refused.ok, refused.stdout
    assert not stack.repository_exists("atok-other/docker-app")
    # The owner may push there: it is the token's cap that refused.
    by_password = stack.push(image, "atok-other/docker-app", f"{USER}:{PASSWORD}")
    assert by_password.ok, by_password.stderr

    def recorded() -> bool:
        return token_command(stack, "show", token)["last_used_at"] is not None

    wait_until(recorded, "the token's last use in the database", timeout=10)
    shown = token_command(stack, "show", token)
    assert shown["last_used_from"] == "127.0.0.1", shown  # nginx's X-Real-IP: the client


def test_skopeo_creds_with_a_token_and_its_actions(stack: Stack, owners: dict[str, Any]) -> None:
    writer = create(stack, USER, "skopeo-writer", "atok/skopeo-*:pull,push")
    reader = create(stack, USER, "skopeo-reader", "atok/*:pull")
    image = stack.new_image()
    pushed = stack.push(image, "atok/skopeo-app", f"{USER}:{writer.secret}")
    assert pushed.ok, pushed.stderr
    assert stack.stored_tag("atok/skopeo-app") == image.manifest_digest
    pulled, _ = stack.pull("atok/skopeo-app", f"{USER}:{reader.secret}")
    assert pulled.ok, pulled.stderr

    refused = stack.push(stack.new_image(), "atok/skopeo-other", f"{USER}:{reader.secret}")
    assert not refused.ok, refused.stdout
    assert not stack.repository_exists("atok/skopeo-other")
    # Another account's name with this owner's token: no login at all.
    assert status_of(stack, "foo", writer.secret) == 401


def test_ctr_pulls_with_a_token_by_the_post_password_grant(
    stack: Stack, engine: Engine, seeded: str
) -> None:
    token = create(stack, USER, "ctr", "atok/seed:pull")
    offset = stack.tokend_log_offset()
    pulled = engine.ctr_pull(f"{stack.registry}/atok/seed:latest", f"{USER}:{token.secret}")
    assert pulled.ok, pulled.stdout + pulled.stderr
    assert seeded in pulled.stdout + pulled.stderr
    posted = [
        line
        for line in stack.tokend_log_since(offset).splitlines()
        if f"issued POST token to '{USER}' from " in line
        and "(client_id containerd-client)" in line
    ]
    assert posted, "ctr did not use the POST password grant"


def test_a_robot_logs_in_only_with_its_tokens(stack: Stack, owners: dict[str, Any]) -> None:
    users = json.loads(json.dumps(owners))
    users[ROBOT] = {"repositories": {"robots/*": ["pull", "push"]}}  # no pass_hash: a robot
    users[f"{ROBOT}-null"] = {"pass_hash": None, "repositories": {"robots/*": ["pull"]}}
    stack.rewrite("users.json", users)
    try:
        token = create(stack, ROBOT, "deploy", "robots/*:pull,push")
        image = stack.new_image()
        pushed = stack.push(image, "robots/app", f"{ROBOT}:{token.secret}")
        assert pushed.ok, pushed.stderr
        assert stack.stored_tag("robots/app") == image.manifest_digest
        for robot in (ROBOT, f"{ROBOT}-null"):
            for password in ("", "a-guess", token.secret.removeprefix("tkd_at_")):
                status, _, body = login(stack, robot, password, "repository:robots/app:pull")
                assert status == 401, (robot, password, body)
    finally:
        stack.rewrite("users.json", owners)


def test_a_docker_client_holding_the_refresh_token_fails_after_revoke(
    stack: Stack, engine: Engine, owners: dict[str, Any]
) -> None:
    token = create(stack, USER, "docker-revoked", "atok/*:pull,push")
    assert engine.login("atok-revoke", USER, token.secret).ok
    reference, stored = engine.push_stored("atok-revoke", stack.new_image(), "atok/revoke-app")

    revoked = token_command(stack, "revoke", token)
    assert revoked["state"] == "revoked" and revoked["revoked_at"], revoked
    time.sleep(REVOCATION_SEEN_WITHIN)
    assert engine.docker("atok-revoke", "rmi", reference).ok
    pulled = engine.docker("atok-revoke", "pull", reference)
    assert not pulled.ok, pulled.stdout
    assert "invalid_grant" in pulled.stderr, pulled.stderr  # docker quotes the 400's body
    assert stack.stored_tag("atok/revoke-app") == stored  # it is there to pull
    again = engine.login("atok-revoke-again", USER, token.secret)
    assert not again.ok, again.stdout


def test_a_token_shrinks_with_its_owner_and_ends_with_them(
    stack: Stack, owners: dict[str, Any]
) -> None:
    token = create(stack, USER, "shrinking", "atok/*:pull,push")
    creds = f"{USER}:{token.secret}"
    image = stack.new_image()
    assert stack.push(image, "atok/shrink-before", creds).ok
    users = json.loads(json.dumps(owners))
    users[USER]["repositories"] = {"atok/*": ["pull"]}
    stack.rewrite("users.json", users)
    try:
        refused = stack.push(stack.new_image(), "atok/shrink-after", creds)
        assert not refused.ok, refused.stdout
        assert not stack.repository_exists("atok/shrink-after")
        pulled, _ = stack.pull("atok/shrink-before", creds)
        assert pulled.ok, pulled.stderr
        del users[USER]
        stack.rewrite("users.json", users)
        assert status_of(stack, USER, token.secret) == 401
    finally:
        stack.rewrite("users.json", owners)


def test_the_http_api_behind_nginx_makes_and_revokes_a_token(
    stack: Stack, owners: dict[str, Any], seeded: str
) -> None:
    auth = basic(USER, PASSWORD)
    body = {"name": "api-made", "expires_in": "1h", "scopes": ["atok/seed:pull"]}
    status, headers, made = stack.request(
        "/api/v1/tokens",
        {**auth, "Content-Type": "application/json"},
        "POST",
        json.dumps(body).encode(),
    )
    assert status == 201, made
    SHOWN.append(made["secret"])
    assert headers["Location"] == f"/api/v1/tokens/{made['id']}", headers
    pulled, _ = stack.pull("atok/seed", f"{USER}:{made['secret']}")
    assert pulled.ok, pulled.stderr
    status, _, listed = stack.request("/api/v1/tokens", auth)
    assert status == 200 and made["id"] in [t["id"] for t in listed["tokens"]], listed
    status, _, refused = stack.request("/api/v1/tokens", basic(USER, made["secret"]))
    assert status == 403, refused  # a token does not manage tokens

    status, _, revoked = stack.request(f"/api/v1/tokens/{made['id']}", auth, "DELETE")
    assert status == 200 and revoked["state"] == "revoked", revoked
    assert status_of(stack, USER, made["secret"]) == 401  # this daemon revoked it: at once
    status, _, shown = stack.request(f"/api/v1/tokens/{made['id']}", auth)
    assert status == 200 and shown["last_used_from"] == "127.0.0.1", shown


def test_malformed_and_oversized_secrets_are_refused(stack: Stack, owners: dict[str, Any]) -> None:
    token = create(stack, USER, "well-formed", "atok/*:pull")
    damaged = token.secret[:-1] + ("A" if token.secret[-1] != "A" else "B")  # its check fails
    for secret in (damaged, "tkd_at_", "tkd_at_short", token.secret + "x" * 4000):
        status, _, body = login(stack, USER, secret)
        assert status == 401, (secret[:20], body)
    assert status_of(stack, USER, token.secret) == 200


def test_no_secret_reaches_a_log(stack: Stack) -> None:
    assert SHOWN, "run with the scenarios above"
    logs = [stack.root / "tokend.log", stack.root / "tokend.out", stack.root / "registry.log"]
    logs.append(stack.root / "nginx" / "access.log")
    for log in logs:
        text = log.read_text(errors="replace")
        assert not [secret for secret in SHOWN if secret in text], log


# --- two daemons on one PostgreSQL ----------------------------------------------------------


@dataclass
class Pair:
    database: PostgresServer
    url: str
    first: Stack
    second: Stack


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """tokend twice on one PostgreSQL database, started together (both migrate it at start-up:
    the first one's lock keeps the second from racing it)."""
    stacks: list[Stack] = []
    with running_postgres() as database:
        try:
            for name in ("first", "second"):
                root = tmp_path_factory.mktemp(f"pg-{name}")
                stacks.append(new_stack(root, tokend_args=("--database", database.url)))
            launched = _launch_together(stacks)
            yield Pair(database, database.url, *launched)
        finally:
            for stack in stacks:
                stack.stop()


def _launch_together(stacks: list[Stack]) -> list[Stack]:
    failures: list[BaseException] = []

    def launch(stack: Stack) -> None:
        try:
            launch_tokend(stack)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=launch, args=(stack,)) for stack in stacks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        logs = "\n".join(tail for stack in stacks for _, tail in stack.logs())
        raise AssertionError(f"{failures[0]}\n{logs}")
    return stacks


def api(stack: Stack, method: str, path: str, user: str, password: str) -> tuple[int, Any]:
    status, _, body = stack.ask_tokend(path, {**basic(user, password), "X-Real-IP": CLIENT}, method)
    return status, body


def test_a_revocation_through_one_daemon_is_refused_by_the_other(pair: Pair) -> None:
    token = create(pair.first, "bar", "shared", "pg/*:pull", database=pair.url)
    for stack in (pair.first, pair.second):
        assert status_of(stack, "bar", token.secret) == 200
    status, listed = api(pair.second, "GET", "/api/v1/tokens", "bar", "bar")
    assert status == 200, listed
    assert token.id in [shown["id"] for shown in listed["tokens"]], listed

    assert status_of(pair.second, "bar", token.secret) == 200  # the lookup is fresh in its cache
    status, revoked = api(pair.first, "DELETE", f"/api/v1/tokens/{token.id}", "bar", "bar")
    assert status == 200 and revoked["state"] == "revoked", revoked
    assert status_of(pair.first, "bar", token.secret) == 401  # the revoking daemon: at once
    time.sleep(REVOCATION_SEEN_WITHIN)
    assert status_of(pair.second, "bar", token.secret) == 401


def test_token_logins_wait_out_a_postgresql_outage(pair: Pair) -> None:
    token = create(pair.first, "bar", "outage", "pg/*:pull", database=pair.url)
    assert status_of(pair.first, "bar", token.secret) == 200
    offsets = [stack.tokend_log_offset() for stack in (pair.first, pair.second)]
    pair.database.stop()
    try:
        for stack in (pair.first, pair.second):
            wait_until(
                lambda stack=stack: status_of(stack, "bar", token.secret) != 200,
                "the cached lookup to lapse",
                timeout=10,
            )
            for _ in range(3):
                status, headers, body = login(stack, "bar", token.secret)
                assert status == 503, body
                assert int(headers["Retry-After"]) > 0, headers
            assert status_of(stack, "bar", "bar") == 200  # passwords do not need the database
            assert login(stack)[0] == 200  # nor does an anonymous login
    finally:
        pair.database.start()
    for stack, offset in zip((pair.first, pair.second), offsets, strict=True):
        wait_until(
            lambda stack=stack: status_of(stack, "bar", token.secret) == 200,
            "token logins to recover",
            timeout=30,
        )
        log = stack.tokend_log_since(offset)
        assert log.count("access token logins unavailable") == 1, log  # once an outage
        assert "access token logins: the database answers again" in log, log


# --- --workers 2 on SQLite ------------------------------------------------------------------

ANSWERED_BY = re.compile(r" pid (\d+)\] (issued|refused|throttled) ")


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """tokend with two workers on its default SQLite database (state/ beside the config)."""
    limits = ("--max-failures-per-account", "0", "--max-failures-per-address", "0")
    stack = new_stack(tmp_path_factory.mktemp("at-workers"), ("--workers", "2", *limits))
    try:
        yield launch_tokend(stack)
    finally:
        stack.stop()


def answers_by_worker(stack: Stack, secret: str, connections: int = 16) -> dict[int, set[str]]:
    """pid → how it answered (``issued``/``refused``) token logins sent on ``connections``
    connections opened together, so that both workers take some."""
    offset = stack.tokend_log_offset()
    path = f"/v2/token?{urlencode({'service': SERVICE, 'account': 'bar'})}"
    headers = {**basic("bar", secret), "X-Real-IP": CLIENT}
    opened = [UnixHTTPConnection(stack.tokend_socket) for _ in range(connections)]
    try:
        for connection in opened:
            connection.connect()
        for connection in opened:
            connection.request("GET", path, headers=headers)
        for connection in opened:
            connection.getresponse().read()
    finally:
        for connection in opened:
            connection.close()
    seen: dict[int, set[str]] = {}

    def logged() -> bool:
        seen.clear()
        for pid, outcome in ANSWERED_BY.findall(stack.tokend_log_since(offset)):
            seen.setdefault(int(pid), set()).add(outcome)
        return sum(1 for _ in ANSWERED_BY.finditer(stack.tokend_log_since(offset))) >= connections

    wait_until(logged, f"{connections} answers in the log", timeout=30)
    return seen


def test_a_revocation_is_refused_in_every_worker(workers: Stack) -> None:
    stack = workers
    parent = next(p.process.pid for p in stack.processes if p.name == "tokend")
    wait_until(lambda: len(worker_pids(parent)) == 2, "two workers")
    token = create(stack, "bar", "workers", "w/*:pull")

    def both(outcome: str) -> bool:
        answers = answers_by_worker(stack, token.secret)
        assert all(outcomes == {outcome} for outcomes in answers.values()), answers
        return set(answers) == worker_pids(parent)

    wait_until(lambda: both("issued"), "both workers to accept the token")
    revoked = token_command(stack, "revoke", token)
    assert revoked["state"] == "revoked", revoked
    time.sleep(REVOCATION_SEEN_WITHIN)
    wait_until(lambda: both("refused"), "both workers to answer (refusing)")


def test_the_workers_database_is_the_default_beside_the_config(workers: Stack) -> None:
    database = workers.config.parent / "state" / "tokend.db"
    assert database.exists()
    assert database.stat().st_mode & 0o777 == 0o600
    assert (database.parent.stat().st_mode & 0o777) == 0o700
