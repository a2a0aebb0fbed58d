"""``tokend explain`` and ``tokend check-config`` for directory accounts, against the real slapd
(tests/ldap_server.py). Commands that ask the directory run as ``python3 -m tokend`` (the reactor
runs once per process); the others in-process.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ldap_server import GROUPS, SUFFIX, Slapd, dn, group_dn
from support import REPO, free_port, run_tool, with_default_sigint, write_policy

# ldaptor's filter parser calls pyparsing by its pre-3.0 names (tokend silences that warning at
# import, but pytest resets the warning filters around each test).
pytestmark = pytest.mark.filterwarnings("ignore:'parseString' deprecated")

COMPOSERS, SALZBURG = group_dn("composers"), group_dn("salzburg")
SCOPES = ("repository:mozart/requiem:pull,push", "repository:lobby/news:pull,push")


def tool(*argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``python3 -m tokend argv``, as an operator runs it: a
    command that asks the directory runs the global reactor, once per process."""
    result = subprocess.run(
        [sys.executable, "-m", "tokend", *argv],
        capture_output=True,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """bach in users.json; groups.json takes composers (DN spelled otherwise), salzburg and
    every directory account."""
    write_policy(tmp_path, {"bach": ("pw", {"bach/*": ["pull"]})})
    groups = {
        "composers": {
            "ldap_groups": [COMPOSERS.upper().replace(",", ", ")],
            "repositories": {"${account}/*": ["pull", "push"]},
        },
        "salzburgers": {
            "ldap_groups": [SALZBURG],
            "repositories": {"lobby/*": ["pull", "push"]},
        },
        "everyone": {"ldap_groups": ["*"], "repositories": {"lobby/*": ["pull"]}},
    }
    (tmp_path / "groups.json").write_text(json.dumps(groups))
    return tmp_path


def ldap_options(
    slapd: Slapd, url: str | None = None, password_file: Path | None = None
) -> list[str]:
    return [
        "--ldap-url", url or slapd.url,
        "--ldap-base", slapd.base,
        "--ldap-bind-dn", slapd.bind_dn,
        "--ldap-bind-password-file", str(password_file or slapd.bind_password_file),
        "--ldap-timeout", "2",
    ]  # fmt: skip


@pytest.fixture
def stopped_slapd(slapd: Slapd) -> Iterator[Slapd]:
    """The session's slapd, stopped for the test and started again after it."""
    slapd.stop()
    try:
        yield slapd
    finally:
        slapd.start()


def test_explain_looks_a_directory_account_up(slapd: Slapd, config_dir: Path) -> None:
    code, out, err = tool(
        "explain", "--config-dir", str(config_dir), *ldap_options(slapd), "mozart", *SCOPES
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"directory: 'mozart' is {dn('mozart')}",
        f"directory groups: {COMPOSERS}, {SALZBURG}",
        f"groups.json: group composers takes it (ldap_groups: {COMPOSERS})",
        f"groups.json: group salzburgers takes it (ldap_groups: {SALZBURG})",
        "groups.json: group everyone takes it (ldap_groups: every directory account)",
        "repository:mozart/requiem:pull,push  ->  'mozart' gets pull,push (holds pull,push)",
        "    group composers: '${account}/*' allows pull,push",
        "    group salzburgers: no rule matches",
        "    group everyone: no rule matches",
        "    the union of every source's most specific rule",
        "repository:lobby/news:pull,push  ->  'mozart' gets pull,push (holds pull,push)",
        "    group composers: no rule matches",
        "    group salzburgers: 'lobby/*' allows pull,push",
        "    group everyone: 'lobby/*' allows pull",
        "    the union of every source's most specific rule",
        "identity tokens: a refresh token of 'mozart' (docker login keeps one) is bound to its "
        "entry (DN, entryUUID or objectGUID, password-changed time); every refresh looks the "
        "account up again (remembered for --credential-cache-ttl) and gets the rights its "
        "groups give then; it is refused once the account is gone from the search base, has "
        "another DN, is locked or disabled, or its entry or password changed",
    ]


def test_explain_with_groups_given_asks_no_directory(config_dir: Path) -> None:
    """No --ldap-url: nothing to connect to; the groups given decide (spelling normalised)."""
    code, out, err = run_tool(
        "explain", "--config-dir", str(config_dir),
        "--ldap-group", f"CN=Composers, OU=Groups, {SUFFIX}", "salieri", *SCOPES,
    )  # fmt: skip
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:4] == [
        f"directory groups: {COMPOSERS}",
        f"groups.json: group composers takes it (ldap_groups: {COMPOSERS})",
        "groups.json: group everyone takes it (ldap_groups: every directory account)",
        "repository:mozart/requiem:pull,push  ->  'salieri' gets nothing (holds nothing)",
    ]
    assert "repository:lobby/news:pull,push  ->  'salieri' gets pull (holds pull)" in lines
    assert not any(line.startswith("directory: ") for line in lines)


def test_explain_a_directory_account_no_group_takes(tmp_path: Path) -> None:
    write_policy(tmp_path, {"bach": ("pw", {})})
    code, out, _ = run_tool(
        "explain", "--config-dir", str(tmp_path), "--ldap-group", COMPOSERS, "mozart", SCOPES[0]
    )
    assert code == 0
    assert out.splitlines()[1:3] == [
        "groups.json: no group takes these directory groups: a login gets an empty access",
        "repository:mozart/requiem:pull,push  ->  'mozart' gets nothing (holds nothing)",
    ]


def test_explain_spells_a_directory_name_as_the_daemon_does(config_dir: Path) -> None:
    code, out, _ = run_tool(
        "explain", "--config-dir", str(config_dir), "--ldap-group", COMPOSERS, "Mozart",
        "repository:mozart/requiem:push",
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        "directory: 'Mozart' logs in as 'mozart' (names are matched without regard to case)"
    )
    assert "repository:mozart/requiem:push  ->  'mozart' gets push (holds pull,push)" in lines


@pytest.mark.parametrize("name", ["\uff4dozart", "\U0001d426ozart", "\u24dcozart", "mo\u00adzart"])
def test_explain_refuses_a_look_alike_spelling_as_the_daemon_does(
    config_dir: Path, name: str
) -> None:
    """A fullwidth, mathematical or circled m (or a soft hyphen): slapd would find mozart."""
    code, out, err = run_tool(
        "explain", "--config-dir", str(config_dir), "--ldap-group", COMPOSERS, name, SCOPES[0]
    )
    assert (code, out) == (1, "")
    assert f"{name!r} is a name " in err
    assert "a login as it is refused before the directory is asked" in err


def test_explain_refuses_a_users_json_name_in_another_case(config_dir: Path) -> None:
    code, out, err = run_tool(
        "explain", "--config-dir", str(config_dir), "--ldap-group", COMPOSERS, "BACH", SCOPES[0]
    )
    assert code == 1 and out == ""
    assert "users.json decides for it" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--ldap-group", "musicians"), "argument --ldap-group: 'musicians' is not a DN"),
        (("--ldap-group", COMPOSERS, "--ldap-url", "ldap://127.0.0.1:1"), "give one of them"),
        (("--ldap-url", "ldap://127.0.0.1:1"), "--ldap-url needs --ldap-base (a DN)"),
        (("--ldap-url", "http://x", "--ldap-base", SUFFIX), "must be ldap://host[:port]"),
        (("--ldap-url", "ldap://x", "--ldap-base", SUFFIX, "--ldap-timeout", "0"), "between 0"),
        (
            ("--ldap-url", "ldap://x", "--ldap-base", SUFFIX, "--ldap-active-filter", "(x"),
            "the directory active filter '(x' is not an LDAP filter",
        ),
    ],
)
def test_explain_refuses_options_that_do_not_go_together(
    config_dir: Path, argv: tuple[str, ...], message: str
) -> None:
    code, out, err = run_tool(
        "explain", "--config-dir", str(config_dir), *argv, "mozart", SCOPES[0]
    )
    assert (code, out) == (2, "")
    assert message in err


def test_explain_an_account_the_directory_does_not_find(slapd: Slapd, config_dir: Path) -> None:
    """kant is in the directory, outside the search base."""
    code, out, err = tool(
        "explain", "--config-dir", str(config_dir), *ldap_options(slapd), "kant", SCOPES[0]
    )
    assert (code, out) == (1, "")
    assert err == (
        "tokend explain: no user 'kant' in users.json, and the directory has no single entry "
        f"for it under {slapd.base} (filter (&(objectClass=person)(uid={{account}})))\n"
    )


def test_explain_without_a_directory_says_how_to_ask_one(config_dir: Path) -> None:
    code, out, err = run_tool("explain", "--config-dir", str(config_dir), "mozart", SCOPES[0])
    assert (code, out) == (1, "")
    assert "no user 'mozart' in users.json; give the daemon's --ldap-url" in err
    assert "or --ldap-group DN" in err


def test_explain_a_users_json_name_never_asks_the_directory(config_dir: Path) -> None:
    """bach is in the directory too, but users.json decides: the unreachable directory given
    is never contacted (otherwise this would fail as unavailable)."""
    dead = f"ldap://127.0.0.1:{free_port()}"
    code, out, err = run_tool(
        "explain", "--config-dir", str(config_dir), "--ldap-url", dead, "--ldap-base", SUFFIX,
        "bach", "repository:bach/fugue:pull,push",
    )  # fmt: skip
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:3] == [
        "'bach' is in users.json: its hash and rules decide, and the directory is never asked "
        "for it",
        "repository:bach/fugue:pull,push  ->  'bach' gets pull (holds pull)",
        "    user bach: 'bach/*' allows pull",
    ]
    assert "changing bach's pass_hash" in lines[-1]


def test_explain_when_the_directory_is_unavailable(stopped_slapd: Slapd, config_dir: Path) -> None:
    code, out, err = tool(
        "explain", "--config-dir", str(config_dir), *ldap_options(stopped_slapd), "mozart",
        SCOPES[0],
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert err == (
        f"tokend explain: directory unavailable: {stopped_slapd.url}: connection refused\n"
    )


def test_check_config_checks_the_directory(slapd: Slapd, config_dir: Path) -> None:
    code, out, err = tool("check-config", "--config-dir", str(config_dir), *ldap_options(slapd))
    assert (code, err) == (0, "")
    assert out.splitlines()[-6:] == [
        f"{config_dir}: policy is valid: 1 users, 3 groups, anonymous whitelist of 0 names and "
        "patterns, anonymous catalog off",
        f"directory: {slapd.url} answered, bound as {slapd.bind_dn}",
        f"directory: search base {slapd.base} exists; the filter finds 4 accounts",
        f"directory: group composers takes members of {COMPOSERS}",
        "directory: group everyone takes every directory account",
        f"directory: group salzburgers takes members of {SALZBURG}",
    ]


def test_check_config_says_when_no_group_takes_directory_accounts(
    slapd: Slapd, tmp_path: Path
) -> None:
    write_policy(tmp_path, {"bach": ("pw", {})})
    code, out, _ = tool("check-config", "--config-dir", str(tmp_path), *ldap_options(slapd))
    assert code == 0
    assert out.splitlines()[-1] == (
        "directory: no group of groups.json names ldap_groups; directory accounts log in and "
        "get an empty access"
    )


def test_check_config_with_a_wrong_bind_password(
    slapd: Slapd, config_dir: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password-4711\n")
    wrong.chmod(0o600)
    code, out, err = tool(
        "check-config", "--config-dir", str(config_dir),
        *ldap_options(slapd, password_file=wrong),
    )  # fmt: skip
    assert code == 1
    assert "directory:" not in out
    assert err.startswith(
        f"tokend check-config: directory unavailable: {slapd.url} refused the service account "
        f"{slapd.bind_dn}: "
    )
    assert err.count("\n") == 1
    assert "4711" not in out + err
    assert slapd.bind_password.decode() not in out + err


def test_check_config_refuses_a_loose_bind_password_file(
    slapd: Slapd, config_dir: Path, tmp_path: Path
) -> None:
    loose = tmp_path / "loose-password"
    loose.write_bytes(slapd.bind_password + b"\n")
    loose.chmod(0o644)
    options = ldap_options(slapd, password_file=loose)
    code, out, err = run_tool("check-config", "--config-dir", str(config_dir), *options)
    assert (code, out) == (1, "")
    assert "pass --allow-loose-key-permissions" in err
    assert slapd.bind_password.decode() not in err
    code, out, _ = tool(
        "check-config", "--config-dir", str(config_dir), *options, "--allow-loose-key-permissions"
    )
    assert code == 0
    assert f"directory: {slapd.url} answered, bound as {slapd.bind_dn}" in out


def test_check_config_with_a_search_base_that_does_not_exist(
    slapd: Slapd, config_dir: Path
) -> None:
    missing = f"ou=painters,{SUFFIX}"
    options = [*ldap_options(slapd)]
    options[options.index(slapd.base)] = missing
    code, _, err = tool("check-config", "--config-dir", str(config_dir), *options)
    assert code == 1
    assert err == (
        f"tokend check-config: directory unavailable: {slapd.url}: {missing} does not exist\n"
    )


def test_check_config_when_the_directory_is_unreachable(config_dir: Path, slapd: Slapd) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"
    code, out, err = tool(
        "check-config", "--config-dir", str(config_dir), *ldap_options(slapd, url=dead)
    )
    assert code == 1
    assert "policy is valid" in out
    assert err == f"tokend check-config: directory unavailable: {dead}: connection refused\n"


def test_explain_a_group_whose_rules_tie_for_the_name(tmp_path: Path) -> None:
    """For mozart, '${account}/*' and 'mozart/*' are the same pattern: the daemon's group grants
    nothing then, and explain says why."""
    write_policy(tmp_path, {"bach": ("pw", {})})
    groups = {
        "composers": {
            "ldap_groups": [COMPOSERS],
            "repositories": {"${account}/*": ["pull", "push"], "mozart/*": ["pull"]},
        }
    }
    (tmp_path / "groups.json").write_text(json.dumps(groups))
    code, out, _ = run_tool(
        "explain", "--config-dir", str(tmp_path), "--ldap-group", COMPOSERS, "mozart", SCOPES[0]
    )
    assert code == 0
    assert out.splitlines()[1:4] == [
        f"groups.json: group composers takes it (ldap_groups: {COMPOSERS}), but two of its "
        "rules tie for this name: it grants nothing",
        "groups.json: no group takes these directory groups: a login gets an empty access",
        "repository:mozart/requiem:pull,push  ->  'mozart' gets nothing (holds nothing)",
    ]


def test_explain_a_users_json_name_with_groups_given(config_dir: Path) -> None:
    code, out, _ = run_tool(
        "explain", "--config-dir", str(config_dir), "--ldap-group", COMPOSERS, "bach",
        "repository:bach/fugue:push",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines()[:2] == [
        "'bach' is in users.json: its hash and rules decide, and the directory is never asked "
        "for it",
        "repository:bach/fugue:push  ->  'bach' gets nothing (holds pull)",
    ]


def test_explain_with_groups_found_by_search(slapd: Slapd, config_dir: Path) -> None:
    """--ldap-group-base: groups found by a search under it instead of memberOf."""
    code, out, err = tool(
        "explain", "--config-dir", str(config_dir), *ldap_options(slapd),
        "--ldap-group-base", GROUPS, "mozart", SCOPES[0],
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert f"directory groups: {COMPOSERS}, {SALZBURG}" in out.splitlines()


def test_check_config_over_ldaps_with_the_test_ca(slapd: Slapd, config_dir: Path) -> None:
    options = [*ldap_options(slapd, url=slapd.ldaps_url), "--ldap-group-base", GROUPS]
    code, out, err = tool(
        "check-config", "--config-dir", str(config_dir), *options,
        "--ldap-ca-cert", str(slapd.ca_cert_path),
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert f"directory: {slapd.ldaps_url} answered, bound as {slapd.bind_dn}" in out
    assert f"directory: group base {GROUPS} exists; 3 groups under it" in out
    code, out, err = tool(
        "check-config", "--config-dir", str(config_dir), *options,
        "--ldap-ca-cert", str(slapd.wrong_ca_cert_path),
    )  # fmt: skip
    assert code == 1
    assert err == (
        f"tokend check-config: directory unavailable: {slapd.ldaps_url}: bind: TLS failed: "
        "certificate verify failed\n"
    )


def test_ctrl_c_while_the_directory_keeps_silent(config_dir: Path) -> None:
    """A directory that accepts the connection and never answers: Ctrl-C (SIGINT) ends the
    wait with one sentence and status 130, not a traceback."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        silent.settimeout(30)
        command = [
            sys.executable, "-m", "tokend", "check-config", "--config-dir", str(config_dir),
            "--ldap-url", f"ldap://127.0.0.1:{silent.getsockname()[1]}", "--ldap-base", SUFFIX,
            "--ldap-timeout", "60",
        ]  # fmt: skip
        process = subprocess.Popen(
            with_default_sigint(command), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            connection, _ = silent.accept()  # the reactor is running: the bind is on its way
            with connection:
                process.send_signal(signal.SIGINT)
                out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130
    assert err.decode() == "tokend check-config: interrupted\n"
    assert "policy is valid" in out.decode()


def test_check_config_warns_about_ldap_groups_the_directory_lacks(
    slapd: Slapd, config_dir: Path
) -> None:
    groups = json.loads((config_dir / "groups.json").read_text())
    typo = group_dn("composer")  # composers exists, composer does not
    groups["composers"]["ldap_groups"].append(typo)
    (config_dir / "groups.json").write_text(json.dumps(groups))
    code, out, err = tool("check-config", "--config-dir", str(config_dir), *ldap_options(slapd))
    assert (code, err) == (0, "")
    warnings = [line for line in out.splitlines() if line.startswith("warning: directory")]
    assert warnings == [
        f"warning: directory: ldap_groups {typo} (group composers) is no entry the service "
        "account can read: no account will match it"
    ]


def test_directory_options_without_a_url_are_ignored_with_the_daemons_warning(
    config_dir: Path,
) -> None:
    """The daemon's rule (test_directory_options.py): accepted, ignored, said once."""
    warning = "warning: --ldap-base is ignored: no --ldap-url names a directory to ask\n"
    code, out, err = run_tool(
        "check-config", "--config-dir", str(config_dir), "--ldap-base", SUFFIX
    )
    assert (code, err) == (0, ""), err
    assert out.startswith(warning) and "policy is valid" in out
    code, out, err = run_tool(
        "explain", "--config-dir", str(config_dir), "--ldap-base", SUFFIX, "bach", SCOPES[0]
    )
    assert (code, err) == (0, ""), err
    assert out.startswith(warning) and "bach" in out


def test_a_ca_cert_that_is_not_pem_is_one_sentence(config_dir: Path, tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    code, out, err = run_tool(
        "check-config", "--config-dir", str(config_dir), "--ldap-url", "ldaps://127.0.0.1:1",
        "--ldap-base", SUFFIX, "--ldap-ca-cert", str(not_pem),
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == (
        f"tokend check-config: --ldap-ca-cert: directory CA certificate {not_pem} is not a PEM "
        "certificate\n"
    )
