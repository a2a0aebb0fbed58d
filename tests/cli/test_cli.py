"""The ``tokend`` tool, called as operators call it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from cryptography.hazmat.primitives import serialization
from support import (
    REPO,
    load_certificate,
    new_private_key,
    self_signed,
    write_key_pair,
    write_policy,
    write_private_key,
)

from tokend.cli import main
from tokend.signing.keys import key_ids, load_signing_key
from tokend.signing.tokens import rfc3339


def run(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def test_hash_password_from_stdin_verifies_with_bcrypt() -> None:
    code, out = run("hash-password", "--stdin", "--cost", "5", stdin="s3cret pass\n")
    assert code == 0
    hashed = out.strip().encode()
    assert hashed.startswith(b"$2b$05$")
    assert bcrypt.checkpw(b"s3cret pass", hashed)
    assert not bcrypt.checkpw(b"s3cret pass\n", hashed)


@pytest.mark.parametrize(("password", "message"), [("", "empty"), ("x" * 73, "at most 72 bytes")])
def test_hash_password_refuses_what_cannot_log_in(
    password: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run("hash-password", "--stdin", "--cost", "4", stdin=password + "\n")
    assert (code, out) == (1, "")
    assert message in capsys.readouterr().err


def test_hash_password_rejects_a_cost_bcrypt_does_not_take() -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("hash-password", "--stdin", "--cost", "3", stdin="pw\n")
    assert exit_info.value.code == 2


def test_check_config_accepts_the_shipped_examples() -> None:
    code, out = run("check-config", "--config-dir", str(REPO / "config"))
    assert code == 0
    assert "2 users" in out


def test_check_config_reports_the_file_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path, {"a": ("pw", {"*": ["pull"]})})
    users = json.loads((tmp_path / "users.json").read_text())
    users["a"]["repositories"]["x"] = ["push"]
    (tmp_path / "users.json").write_text(json.dumps(users))
    code, _ = run("check-config", "--config-dir", str(tmp_path))
    assert code == 1
    err = capsys.readouterr().err
    assert "users.json" in err
    assert "pull" in err


def test_check_config_refuses_program_labels_that_are_not_lists_and_takes_good_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path, {"a": ("pw", {"*": ["pull"]})})
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"ci": {"program_labels": {"group": "ci"}}}))
    assert run("check-config", "--config-dir", str(tmp_path))[0] == 1
    assert "groups.json: ci.program_labels.group: expected a list of label values" in (
        capsys.readouterr().err
    )
    rules = {"program_labels": {"group": ["ci"]}, "repositories": {"builds/*": ["pull", "push"]}}
    groups.write_text(json.dumps({"ci": rules}))
    code, out = run("check-config", "--config-dir", str(tmp_path))
    assert code == 0 and "warning" not in out, "a group for program labels is used"


def test_check_config_checks_the_key_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path, {"a": ("pw", {"*": ["pull"]})})
    key_path, _ = write_key_pair(tmp_path)
    assert run("check-config", "--config-dir", str(tmp_path), "--key", str(key_path))[0] == 0
    key_path.chmod(0o644)
    code, _ = run("check-config", "--config-dir", str(tmp_path), "--key", str(key_path))
    assert code == 1
    assert "chmod 600" in capsys.readouterr().err


def test_kid_prints_both_forms(tmp_path: Path) -> None:
    _, cert_path = write_key_pair(tmp_path)
    code, out = run("kid", "--json", str(cert_path))
    assert code == 0
    assert json.loads(out) == key_ids(cert_path)
    code, out = run("kid", str(cert_path))
    assert key_ids(cert_path)["libtrust"] in out
    assert key_ids(cert_path)["thumbprint"] in out


def test_dev_cert_writes_a_usable_pair_and_keeps_existing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_path, cert_path = tmp_path / "k.key", tmp_path / "c.crt"
    args = ("dev-cert", "--key", str(key_path), "--cert", str(cert_path), "--cn", "ci")
    assert run(*args)[0] == 0
    signing_key = load_signing_key(key_path, cert_path, allow_loose_permissions=False)
    assert load_certificate(cert_path).subject.rfc4514_string() == "CN=ci"
    assert run(*args)[0] == 1
    assert "--force" in capsys.readouterr().err
    assert load_signing_key(key_path, cert_path).kid == signing_key.kid
    assert run(*args, "--force")[0] == 0
    assert load_signing_key(key_path, cert_path).kid != signing_key.kid


def test_python_dash_m_runs_the_tool(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokend", "hash-password", "--stdin", "--cost", "4"],
        input=b"pw\n",
        capture_output=True,
        cwd=REPO,
        check=True,
    )
    assert bcrypt.checkpw(b"pw", result.stdout.strip())


def write_team_policy(directory: Path) -> None:
    write_policy(
        directory,
        {"alice": ("pw", {"tools/**": ["pull", "push"]}), "robot": ("pw", {})},
        {"repositories": ["public/**"]},
    )
    users = json.loads((directory / "users.json").read_text())
    users["alice"]["groups"] = ["staff"]
    (directory / "users.json").write_text(json.dumps(users))
    groups = {
        "staff": {"repositories": {"${account}/**": ["*"], "*": ["pull"], "secret/**": []}},
        "idle": {"repositories": {"x": ["pull"]}},
    }
    (directory / "groups.json").write_text(json.dumps(groups))


def test_explain_names_the_rule_of_every_source(tmp_path: Path) -> None:
    write_team_policy(tmp_path)
    code, out = run(
        "explain", "--config-dir", str(tmp_path), "alice",
        "repository:alice/app:pull,push,delete", "repository:secret/x:pull",
        "repository:tools/cli:push",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines() == [
        "repository:alice/app:pull,push,delete  ->  'alice' gets pull,push,delete "
        "(holds pull,push,delete)",
        "    user alice: no rule matches",
        "    group staff: '${account}/**' allows pull,push,delete",
        "    the union of every source's most specific rule",
        "repository:secret/x:pull  ->  'alice' gets nothing (holds nothing)",
        "    user alice: no rule matches",
        "    group staff: 'secret/**' denies (no actions)",
        "    the union of every source's most specific rule",
        "repository:tools/cli:push  ->  'alice' gets push (holds pull,push)",
        "    user alice: 'tools/**' allows pull,push",
        "    group staff: '*' allows pull",
        "    the union of every source's most specific rule",
        "identity tokens: a refresh token of 'alice' (docker login keeps one) gets exactly these "
        "rights; it lasts --refresh-token-ttl (0: none issued), and changing alice's pass_hash "
        "or setting tokens_valid_after revokes it; none is revoked by tokens_valid_after",
    ]


def test_explain_for_anonymous_clients_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_team_policy(tmp_path)
    code, out = run(
        "explain", "--config-dir", str(tmp_path), "--anonymous",
        "repository:public/a/b:pull,push", "repository:private:pull",
    )  # fmt: skip
    assert code == 0
    assert "repository:public/a/b:pull,push  ->  anonymous gets pull (holds pull)" in out
    assert "repositories.json whitelist: 'public/**' allows pull" in out
    assert "repository:private:pull  ->  anonymous gets nothing" in out
    assert run("explain", "--config-dir", str(tmp_path), "ghost", "repository:a:pull")[0] == 1
    assert "no user 'ghost'" in capsys.readouterr().err
    assert run("explain", "--config-dir", str(tmp_path), "alice", "repository:A:pull")[0] == 1
    assert "invalid scope" in capsys.readouterr().err


def test_check_config_reports_unused_and_overriding_rules(tmp_path: Path) -> None:
    write_team_policy(tmp_path)
    code, out = run("check-config", "--config-dir", str(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert (
        "warning: groups.json: idle: no user is a member and it names no ldap_groups, "
        "its rules never apply"
    ) in lines
    assert (
        "overlap: groups.json staff: 'secret/**' (denies) takes precedence over '*' [pull] "
        "for names like 'secret/a'"
    ) in lines
    assert lines[-1].endswith("policy is valid: 2 users, 2 groups, anonymous whitelist of 1 "
                              "names and patterns, anonymous catalog off")  # fmt: skip


def test_check_config_refuses_ambiguous_rules_with_an_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path, {"a": ("pw", {"team/*": ["pull"], "team/**": []})})
    assert run("check-config", "--config-dir", str(tmp_path))[0] == 1
    assert (
        f"{tmp_path / 'users.json'}: a.repositories[\"team/**\"]: 'team/*' and 'team/**' both "
        "match 'team/a' with the same literal prefix"
    ) in capsys.readouterr().err


class Terminal(io.StringIO):
    """A stdin that says it is a terminal, as an operator's shell is."""

    def isatty(self) -> bool:
        return True


def test_hash_password_refuses_piped_input_without_stdin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("hash-password", "--cost", "4", stdin="pw\n") == (1, "")
    assert capsys.readouterr().err == (
        "tokend hash-password: standard input is not a terminal; "
        "pass --stdin to read the password from its first line\n"
    )


def test_hash_password_piped_into_the_real_command_is_one_sentence() -> None:
    """A new session has no controlling terminal, as in a pipeline run by a script."""
    result = subprocess.run(
        [sys.executable, "-m", "tokend", "hash-password", "--cost", "4"],
        input=b"pw\npw\n",
        capture_output=True,
        cwd=REPO,
        start_new_session=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        "tokend hash-password: standard input is not a terminal; "
        "pass --stdin to read the password from its first line"
    ]


@pytest.mark.parametrize(
    ("interruption", "code", "message"),
    [
        (EOFError, 1, "tokend hash-password: no password given (end of input)\n"),
        (KeyboardInterrupt, 130, "tokend hash-password: interrupted\n"),
    ],
)
def test_hash_password_ctrl_d_and_ctrl_c_at_the_prompt_are_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    interruption: type[BaseException],
    code: int,
    message: str,
) -> None:
    def getpass(prompt: str) -> str:
        raise interruption()

    monkeypatch.setattr("getpass.getpass", getpass)
    out = io.StringIO()
    assert main(["hash-password"], stdin=Terminal(), stdout=out) == code
    assert out.getvalue() == ""
    assert capsys.readouterr().err == message


def test_hash_password_prompts_twice_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["s3cret", "s3cret"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    out = io.StringIO()
    assert main(["hash-password", "--cost", "4"], stdin=Terminal(), stdout=out) == 0
    assert bcrypt.checkpw(b"s3cret", out.getvalue().strip().encode())


def test_check_config_accepts_the_flag_its_loose_key_message_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path, {"a": ("pw", {"*": ["pull"]})})
    key_path, _ = write_key_pair(tmp_path)
    key_path.chmod(0o640)
    args = ("check-config", "--config-dir", str(tmp_path), "--key", str(key_path))
    assert run(*args)[0] == 1
    assert "pass --allow-loose-key-permissions" in capsys.readouterr().err
    code, out = run(*args, "--allow-loose-key-permissions")
    assert code == 0
    assert "policy is valid" in out


def test_dev_cert_refuses_to_write_through_a_dangling_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --force (which replaces the link itself: tests/signing/test_devcert.py)."""
    target = tmp_path / "elsewhere.key"
    link = tmp_path / "k.key"
    link.symlink_to(target)
    code, out = run("dev-cert", "--key", str(link), "--cert", str(tmp_path / "c.crt"))
    assert (code, out) == (1, "")
    assert capsys.readouterr().err == (
        f"tokend dev-cert: {link} is a symbolic link to {target}, which does not exist; "
        "refusing to create a file through it\n"
    )
    assert not target.exists()
    assert not (tmp_path / "c.crt").exists()


def write_pair(directory: Path, kind: str, days: int) -> tuple[Path, Path]:
    """A key and a certificate valid from yesterday until ``days`` from now."""
    key = new_private_key(kind)
    key_path, cert_path = directory / f"{kind}.key", directory / f"{kind}.crt"
    write_private_key(key_path, key)
    cert_path.write_bytes(self_signed(key, days=days).public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.mark.parametrize(
    ("kind", "described"), [("p256", "P-256 (ES256)"), ("rsa", "RSA 2048 bits (RS256)")]
)
def test_check_config_summarises_the_key_and_certificate(
    tmp_path: Path, kind: str, described: str
) -> None:
    write_policy(tmp_path, {"a": ("pw", {"*": ["pull"]})})
    key_path, cert_path = write_pair(tmp_path, kind, days=100)
    code, out = run(
        "check-config",
        "--config-dir",
        str(tmp_path),
        "--key",
        str(key_path),
        "--cert",
        str(cert_path),
    )
    assert code == 0
    ids = key_ids(key_path)
    not_after = rfc3339(load_certificate(cert_path).not_valid_after_utc.timestamp())
    assert out.splitlines()[-3:] == [
        f"key {key_path}: {described}",
        f"key {key_path}: kid libtrust {ids['libtrust']} (--kid libtrust, distribution 2.x), "
        f"thumbprint {ids['thumbprint']} (--kid thumbprint, 3.x)",
        f"certificate {cert_path}: subject CN=tokend test, self-signed, not after {not_after} "
        "(in 99 days)",
    ]
    assert "warning" not in out


def test_check_config_warns_within_30_days_of_the_certificates_expiry(tmp_path: Path) -> None:
    write_policy(tmp_path, {"a": ("pw", {"*": ["pull"]})})
    key_path, cert_path = write_pair(tmp_path, "p256", days=10)
    for args in (("--key", str(key_path), "--cert", str(cert_path)), ("--cert", str(cert_path))):
        code, out = run("check-config", "--config-dir", str(tmp_path), *args)
        assert code == 0
        not_after = rfc3339(load_certificate(cert_path).not_valid_after_utc.timestamp())
        assert out.splitlines()[-1] == (
            f"warning: certificate {cert_path}: CN=tokend test expires in 9 days ({not_after}): "
            "renew it before then; the daemon refuses to start with an expired certificate, and "
            "registries refuse tokens it signed"
        )


def test_check_config_fails_on_an_expired_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(tmp_path, {"a": ("pw", {"*": ["pull"]})})
    key = new_private_key("p256")
    key_path, cert_path = tmp_path / "k.key", tmp_path / "c.crt"
    write_private_key(key_path, key)
    expired = self_signed(key, days=-2, start_days_ago=30)
    cert_path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    args = ("check-config", "--config-dir", str(tmp_path), "--cert", str(cert_path))
    assert run(*args, "--key", str(key_path))[0] == 1
    assert capsys.readouterr().err.startswith(
        f"tokend check-config: certificate {cert_path} expired"
    )
    assert run(*args)[0] == 1
    assert capsys.readouterr().err == (
        f"tokend check-config: certificate {cert_path} expired 2 days ago, on "
        f"{rfc3339(expired.not_valid_after_utc.timestamp())}; the daemon refuses it\n"
    )
