"""``tokend user``: users.json edited in place, through the daemon's own loader, atomically,
keeping what it does not touch; and a running daemon taking the edit up (issue #21.12)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time
from base64 import b64encode
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from support import (
    REPO,
    UnixHTTPConnection,
    accepts,
    hash_password,
    load_certificate,
    start_twistd,
    stop_process,
    verify_jwt,
    wait_for,
    write_key_pair,
)

from tokend.cli import main
from tokend.policy.editing import ConcurrentEdit, read_users, with_user, write_users
from tokend.policy.files import load_policy

GROUPS = {"devs": {"repositories": {"dev/**": ["pull", "push"]}}, "ops": {"catalog": True}}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(["user", *argv], stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    users = {
        "ann": {
            "catalog": False,
            "pass_hash": hash_password("ann-pw"),
            "tokens_valid_after": "2025-06-30T12:00:00Z",
            "repositories": {"ann/**": ["*"]},
        }
    }
    (directory / "users.json").write_text(json.dumps(users, indent=4) + "\n")
    (directory / "groups.json").write_text(json.dumps(GROUPS))
    (directory / "repositories.json").write_text('{"repositories": []}')
    return directory


def users_json(config: Path) -> dict[str, dict[str, object]]:
    document: dict[str, dict[str, object]] = json.loads((config / "users.json").read_text())
    return document


def test_add_passwd_remove_and_list_round_trip_through_the_loader(config: Path) -> None:
    code, out = run(
        "add", "carol", "--config-dir", str(config), "--stdin", "--cost", "4",
        "--pull", "library/*", "--push", "carol/**", "--group", "devs", "--group", "ops",
        stdin="carol-pw\n",
    )  # fmt: skip
    assert code == 0, out
    assert out == (
        f"added carol to {config / 'users.json'} (2 rules, groups: devs, ops); the running "
        "daemon takes it up with its live reload\n"
    )
    carol = load_policy(config).policy.users["carol"]
    assert dict(carol.repositories) == {"library/*": {"pull"}, "carol/**": {"pull", "push"}}
    assert carol.groups == ("devs", "ops")
    assert bcrypt.checkpw(b"carol-pw", carol.pass_hash)
    assert carol.pass_hash.startswith(b"$2b$04$")

    args = ("--config-dir", str(config), "--stdin", "--cost", "4")
    code, out = run("passwd", "carol", *args, stdin="new-pw\n")
    assert code == 0
    assert "ends carol's refresh tokens" in out
    changed = load_policy(config).policy.users["carol"]
    assert bcrypt.checkpw(b"new-pw", changed.pass_hash)
    assert not bcrypt.checkpw(b"carol-pw", changed.pass_hash)
    assert (changed.repositories, changed.groups) == (carol.repositories, carol.groups)

    assert run("list", "--config-dir", str(config)) == (
        0,
        "ann    1 rule     groups: none\ncarol  2 rules    groups: devs, ops\n",
    )
    code, out = run("remove", "carol", "--config-dir", str(config))
    assert code == 0
    assert "removed carol and its group memberships" in out
    assert list(load_policy(config).policy.users) == ["ann"]


def test_what_the_tool_does_not_touch_is_kept(config: Path) -> None:
    """Key order, keys it does not know about, the indentation, the mode and the owner."""
    path = config / "users.json"
    path.chmod(0o640)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        owner = (4321, 8765)  # an account tokend runs as, say
        os.chown(path, *owner)
    before = users_json(config)["ann"]
    inode = path.stat().st_ino
    assert run("add", "bob", "--config-dir", str(config), "--stdin", "--cost", "4",
               "--pull", "*", stdin="pw\n")[0] == 0  # fmt: skip
    assert path.stat().st_ino != inode  # replaced by rename (then the old inode is free again)
    assert run("passwd", "ann", "--config-dir", str(config), "--stdin", "--cost", "4",
               stdin="pw2\n")[0] == 0  # fmt: skip
    after = users_json(config)
    assert list(after) == ["ann", "bob"]
    assert list(after["ann"]) == list(before)  # pass_hash replaced where it stood
    assert {k: v for k, v in after["ann"].items() if k != "pass_hash"} == {
        k: v for k, v in before.items() if k != "pass_hash"
    }
    assert after["bob"] == {"pass_hash": after["bob"]["pass_hash"], "repositories": {"*": ["pull"]}}
    text = path.read_text()
    assert text.startswith('{\n    "ann": {\n        "catalog": false,\n')
    assert '"ann/**": ["*"]' in text
    status = path.stat()
    assert stat.S_IMODE(status.st_mode) == 0o640
    assert (status.st_uid, status.st_gid) == owner
    assert sorted(p.name for p in config.iterdir()) == [
        "groups.json", "repositories.json", "users.json"
    ]  # fmt: skip


def test_an_edit_made_meanwhile_is_never_overwritten(config: Path) -> None:
    snapshot = read_users(config)
    theirs = json.dumps({**users_json(config), "dan": {"pass_hash": hash_password("d")}})
    (config / "users.json").write_text(theirs)
    mine = with_user(snapshot.document, "eve", {"pass_hash": hash_password("e")})
    with pytest.raises(ConcurrentEdit) as refused:
        write_users(snapshot, mine)
    assert str(refused.value) == "users.json changed while editing; run the command again"
    assert (config / "users.json").read_text() == theirs
    assert sorted(p.name for p in config.iterdir()) == [
        "groups.json", "repositories.json", "users.json"
    ]  # fmt: skip


def test_an_edit_made_during_the_prompt_is_kept(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is read again after the password is typed."""
    answers = iter(["pw", "pw"])

    def getpass(prompt: str) -> str:
        document = {**users_json(config), "dan": {"pass_hash": hash_password("d")}}
        (config / "users.json").write_text(json.dumps(document))
        return next(answers)

    monkeypatch.setattr("getpass.getpass", getpass)
    out = io.StringIO()
    argv = ["user", "add", "eve", "--config-dir", str(config), "--cost", "4"]
    assert main(argv, stdin=Terminal(), stdout=out) == 0
    assert list(users_json(config)) == ["ann", "dan", "eve"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("add", "ann"),
         "user 'ann' already exists; `tokend user passwd ann` changes its password"),
        (("add", "eve", "--group", "dev"),
         "no group 'dev' in groups.json; known groups: devs, ops"),
        (("add", "e:ve"), "{users}: [\"e:ve\"]: user names must be 1-255 printable characters, no "
         "':'; nothing was written"),
        (("add", "eve", "--push", "a/*", "--push", "a/**"), "{users}: eve.repositories[\"a/**\"]: "
         "'a/*' and 'a/**' both match 'a/a' with the same literal prefix: make one of them more "
         "specific; nothing was written"),
        (("passwd", "ghost"), "no user 'ghost' in users.json; `tokend user list` shows them"),
        (("remove", "ghost"), "no user 'ghost' in users.json; `tokend user list` shows them"),
    ],
)  # fmt: skip
def test_a_change_the_daemon_would_refuse_is_refused_before_the_prompt(
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    message: str,
) -> None:
    def getpass(prompt: str) -> str:
        raise AssertionError("prompted for a change that cannot be made")

    monkeypatch.setattr("getpass.getpass", getpass)
    before = (config / "users.json").read_bytes()
    out = io.StringIO()
    code = main(["user", *argv, "--config-dir", str(config)], stdin=Terminal(), stdout=out)
    assert (code, out.getvalue()) == (1, "")
    users = config / "users.json"
    assert capsys.readouterr().err == f"tokend user: {message.format(users=users)}\n"
    assert users.read_bytes() == before


def test_a_linked_users_json_is_refused_and_the_link_kept(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Kubernetes ConfigMap: rewriting it here would break the link (and the next update)."""
    real = tmp_path / "elsewhere.json"
    (config / "users.json").rename(real)
    (config / "users.json").symlink_to(real)
    before = real.read_bytes()
    assert run("remove", "ann", "--config-dir", str(config)) == (1, "")
    assert capsys.readouterr().err == (
        f"tokend user: {config / 'users.json'} is a symbolic link (a Kubernetes ConfigMap, or a "
        "file kept elsewhere): edit it where it comes from; rewriting it here would replace the "
        "link\n"
    )
    assert (config / "users.json").is_symlink()
    assert real.read_bytes() == before


def test_a_key_written_twice_is_refused_and_the_file_kept(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loader refuses it; an edit that kept only one of them would hide the mistake."""
    users = config / "users.json"
    users.write_text('{"ann": {"pass_hash": null}, "ann": {"pass_hash": null}}')
    before = users.read_bytes()
    assert run("remove", "ann", "--config-dir", str(config)) == (1, "")
    assert capsys.readouterr().err == (f'tokend user: {users}: duplicate key "ann"; fix it first\n')
    assert users.read_bytes() == before


def test_a_running_daemon_takes_up_tokend_user_add(tmp_path: Path, config: Path) -> None:
    """The real tool and the real twistd: the new user gets a token through the live reload,
    and ``tokend token`` reads the realm's answer back."""
    key_path, cert_path = write_key_pair(tmp_path)
    sock = tmp_path / "tokend.sock"
    log = tmp_path / "tokend.log"
    process = start_twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
        "--cert", str(cert_path), "--service", "svc", log=log,
    )  # fmt: skip
    try:
        wait_for("the socket", lambda: accepts(sock), process=process, log=log)
        assert token_answer(sock, "carol", "pw")[0] == 401

        tool = [sys.executable, "-m", "tokend"]
        added = subprocess.run(
            [*tool, "user", "add", "carol", "--config-dir", str(config), "--stdin", "--cost",
             "4", "--push", "carol/**"],
            input=b"pw\n", capture_output=True, cwd=REPO, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr

        # Wait for the reload itself: asking for carol's token until it works would count
        # each refusal as a failed login, and a slow reload would end in 429 instead.
        deadline = time.monotonic() + 30
        while "policy reloaded" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no reload after 30 s"
            time.sleep(0.05)
        answer = token_answer(sock, "carol", "pw")
        assert answer[0] == 200, answer
        _, claims = verify_jwt(answer[1]["token"], load_certificate(cert_path))
        assert claims["sub"] == "carol"
        assert claims["access"] == [
            {"type": "repository", "name": "carol/app", "actions": ["pull", "push"]}
        ]
        read = subprocess.run(
            [*tool, "token", "--cert", str(cert_path), "--service", "svc"],
            input=json.dumps(answer[1]).encode(), capture_output=True, cwd=REPO, check=False,
        )  # fmt: skip
        assert read.returncode == 0, read.stderr
        assert "  may pull and push repository carol/app" in read.stdout.decode().splitlines()
    finally:
        stop_process(process)


def token_answer(sock: Path, user: str, password: str) -> tuple[int, dict[str, Any]]:
    connection = UnixHTTPConnection(sock)
    try:
        auth = b64encode(f"{user}:{password}".encode()).decode()
        connection.request(
            "GET",
            "/v2/token?service=svc&scope=repository:carol/app:pull,push",
            headers={"Authorization": f"Basic {auth}"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()
