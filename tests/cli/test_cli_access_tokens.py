"""``tokend token create|list|show|revoke`` (#26) on a real SQLite file and a real PostgreSQL:
the secret shown once and never again, a table for people and ``--json`` for scripts, owners
checked against users.json (robots included), and one sentence with exit 1 or 2 for what cannot
be done. ``tokend token TOKEN`` still reads a token back."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import pytest
from ldap_server import Slapd
from postgres_server import PostgresServer, running_postgres
from support import REPO, doc_section, hash_password

from tokend.access_tokens.secrets import SECRET_PATTERN, parse
from tokend.cli import main
from tokend.store.database import connect, locate
from tokend.store.queries import AccessTokens, secret_hash

USERS = {
    "alice": {"pass_hash": hash_password("alice-pw", 4), "repositories": {"team/*": ["*"]}},
    "ci-robot": {"repositories": {"team/app": ["pull", "push"]}},
}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """--database of each kind; the SQLite file does not exist yet."""
    if request.param == "sqlite":
        return str(tmp_path / "tokens.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "users.json").write_text(json.dumps(USERS))
    return directory


def token(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stderr(err):
        code = main(["token", *argv], stdin=io.StringIO(), stdout=out)
    return code, out.getvalue(), err.getvalue()


def answer(*argv: str) -> Any:
    code, out, err = token(*argv, "--json")
    assert (code, err) == (0, ""), err
    return json.loads(out)


def test_create_list_show_revoke(database: str, config: Path) -> None:
    where = ("--database", database, "--config-dir", str(config))
    code, out, err = token(
        "create", "--owner", "alice", "--name", "ci-deploy", "--expires", "30d",
        "--scope", "team/*:pull,push", *where,
    )  # fmt: skip
    assert (code, err) == (0, "")
    lines = out.splitlines()
    secret = lines[-1]
    assert parse(secret) is not None
    assert "shown once" in out and out.count(secret) == 1
    made = AccessTokens(connect(locate(database)), locate(database)).find_by_hash(
        secret_hash(secret)
    )
    assert made is not None and made.owner == "alice" and made.name == "ci-deploy"
    assert made.cap == {"team/*": ("pull", "push")}
    assert made.expires_at - made.created_at == 30 * 86400
    assert made.id in out and "ci-deploy" in out

    listed = answer("list", *where)
    assert [t["id"] for t in listed["tokens"]] == [made.id]
    assert listed["tokens"][0] == made.as_json(time.time())
    code, table, _ = token("list", *where)
    header, row = table.splitlines()
    assert header.split() == ["ID", "NAME", "OWNER", "STATE", "EXPIRES", "LAST", "USED", "SCOPES"]
    assert row.split()[:4] == [made.id, "ci-deploy", "alice", "active"]
    assert row.endswith("team/*:pull,push")

    shown = answer("show", made.id, *where)
    assert shown == made.as_json(time.time())
    code, text, _ = token("show", made.id, *where)
    assert code == 0 and f"id: {made.id}" in text and "state: active" in text
    for output in (json.dumps(listed), table, json.dumps(shown), text):
        assert secret not in output and made.secret_hash not in output

    revoked = answer("revoke", made.id, *where)
    assert revoked["state"] == "revoked" and revoked["revoked_at"] is not None
    assert answer("show", made.id, *where)["revoked_at"] == revoked["revoked_at"]
    code, out, _ = token("revoke", made.id, *where)
    assert code == 0 and "already revoked" in out
    assert answer("list", "--owner", "bob", *where) == {"tokens": []}
    assert len(answer("list", "--owner", "alice", *where)["tokens"]) == 1


def test_create_with_json_shows_the_secret_in_the_tokens_json_form(
    tmp_path: Path, config: Path
) -> None:
    database = tmp_path / "tokens.db"
    made = answer(
        "create", "--owner", "ci-robot", "--name", "deploy", "--scope", "team/app:pull,push",
        "--database", str(database), "--config-dir", str(config),
    )  # fmt: skip
    secret = made.pop("secret")
    assert parse(secret) is not None
    assert made["owner"] == "ci-robot" and made["state"] == "active"
    assert made["cap"] == {"team/app": ["pull", "push"]}
    assert made["scopes"] == ["team/app:pull,push"]
    assert set(made) == {
        "id", "owner", "name", "state", "cap", "scopes", "created_at", "expires_at",
        "revoked_at", "last_used_at", "last_used_from",
    }  # fmt: skip
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_the_default_database_is_the_daemons_beside_the_config_directory(
    tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEND_CONFIG_DIR", str(config))
    answer("create", "--owner", "alice", "--name", "n", "--scope", "team/*:pull")
    assert stat.S_IMODE((tmp_path / "state" / "tokend.db").stat().st_mode) == 0o600
    assert len(answer("list")["tokens"]) == 1


@pytest.mark.parametrize(
    ("argv", "status", "said"),
    [
        (["--owner", "bob"], 1, "no account 'bob' in "),
        (["--expires", "1y"], 2, "--expires: expected a lifetime such as 90d"),
        (["--expires", "400d"], 2, "--expires: a token lives at most 365d"),
        (["--scope", "team/*:pul"], 2, "--scope: "),
        (["--scope", "team/*"], 2, "--scope: "),
        (["--name", " x"], 2, "--name: a token's name must be printable"),
    ],
)
def test_a_token_that_cannot_be_made_is_one_sentence(
    tmp_path: Path, config: Path, argv: list[str], status: int, said: str
) -> None:
    asked = {"--owner": "alice", "--name": "n", "--scope": "team/*:pull"}
    asked.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    database = tmp_path / "tokens.db"
    code, out, err = token(
        "create", *[word for pair in asked.items() for word in pair],
        "--database", str(database), "--config-dir", str(config),
    )  # fmt: skip
    assert (code, out) == (status, "")
    assert err.startswith(f"tokend token: {said}") and err.count("\n") == 1, err
    assert not database.exists() or answer("list", "--database", str(database)) == {"tokens": []}


def test_an_unknown_id_is_exit_1(tmp_path: Path, config: Path) -> None:
    where = ("--database", str(tmp_path / "tokens.db"), "--config-dir", str(config))
    answer("create", "--owner", "alice", "--name", "n", "--scope", "team/*:pull", *where)
    for action in ("show", "revoke"):
        code, out, err = token(action, "0123456789abcdef", *where)
        assert (code, out) == (1, "")
        assert err == "tokend token: no access token 0123456789abcdef\n"


def test_the_max_ttl_is_the_daemons(tmp_path: Path, config: Path) -> None:
    code, _, err = token(
        "create", "--owner", "alice", "--name", "n", "--scope", "team/*:pull",
        "--expires", "2d", "--access-token-max-ttl", "86400",
        "--database", str(tmp_path / "t.db"), "--config-dir", str(config),
    )  # fmt: skip
    assert code == 2 and "at most 1d (--access-token-max-ttl)" in err


def test_reading_a_token_back_is_unchanged(tmp_path: Path) -> None:
    code, _, err = token("not-a-token", "--cert", str(tmp_path / "none.crt"))
    assert code == 1 and err.startswith("tokend token: ") and "create" not in err


def test_the_readme_gives_the_scanners_expression_and_every_command() -> None:
    section = doc_section("Access tokens")
    assert f"`{SECRET_PATTERN}`" in section
    for action in ("create", "list", "show", "revoke"):
        assert f"`tokend token {action} " in section, action
    for name in ("--database", "TOKEND_DATABASE", "--access-token-max-ttl", "state/tokend.db"):
        assert name in section, name


@pytest.mark.filterwarnings("ignore:'parseString' deprecated")
def test_a_directory_account_may_own_a_token(slapd: Slapd, tmp_path: Path, config: Path) -> None:
    """With the daemon's --ldap-* options, an owner users.json does not hold is looked up in
    the directory (as a process: the directory is asked on the global reactor, once)."""
    ldap = (
        "--ldap-url", slapd.url, "--ldap-base", slapd.base, "--ldap-bind-dn", slapd.bind_dn,
        "--ldap-bind-password-file", str(slapd.bind_password_file), "--ldap-timeout", "2",
    )  # fmt: skip
    where = ("--database", str(tmp_path / "t.db"), "--config-dir", str(config))

    def create(owner: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tokend", "token", "create", "--owner", owner, "--name", "n",
             "--scope", "x:pull", "--json", *where, *ldap],
            capture_output=True, cwd=REPO, stdin=subprocess.DEVNULL, text=True, timeout=60,
            check=False,
        )  # fmt: skip

    made = create("mozart")
    assert (made.returncode, made.stderr) == (0, "")
    assert json.loads(made.stdout)["owner"] == "mozart"
    outside = create("kant")  # outside the search base
    assert (outside.returncode, outside.stdout) == (1, "")
    assert "the directory has no single entry for it" in outside.stderr
    assert [t["owner"] for t in answer("list", *where)["tokens"]] == ["mozart"]
