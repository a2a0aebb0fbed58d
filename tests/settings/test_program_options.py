"""The external programs' options as parsed: paths checked and made absolute, arguments from
the command line or a comma-separated variable, timeouts within bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemons import parsed
from support import write_script
from twisted.python.usage import UsageError

from tokend.programs.runner import Program


def test_the_programs_are_read_with_their_arguments_and_timeouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = write_script(tmp_path, "auth.sh", "exit 1\n", "/bin/sh")
    authz = write_script(tmp_path, "authz.sh", "exit 0\n", "/bin/sh")
    monkeypatch.chdir(tmp_path)
    settings = parsed(
        tmp_path,
        "--auth-program", "auth.sh", "--auth-program-arg", "--realm=a,b",
        "--auth-program-arg", "two words", "--authz-program", authz,
        "--authz-program-timeout", "9", "--authz-program-decides", "--programs-at-once", "3",
    ).settings  # fmt: skip
    programs = settings.programs
    assert programs.authentication == Program(auth, ("--realm=a,b", "two words"), 5)
    assert programs.authorization == Program(authz, (), 9)
    assert (programs.authorization_decides, programs.at_once) == (True, 3)


def test_the_programs_come_from_the_environment(tmp_path: Path) -> None:
    auth = write_script(tmp_path, "auth.sh", "exit 1\n", "/bin/sh")
    environ = {
        "TOKEND_AUTH_PROGRAM": auth,
        "TOKEND_AUTH_PROGRAM_ARG": "--one,--two",
        "TOKEND_AUTH_PROGRAM_TIMEOUT": "2",
    }
    programs = parsed(tmp_path, environ=environ).settings.programs
    assert programs.authentication == Program(auth, ("--one", "--two"), 2)
    assert (programs.authorization, programs.authorization_decides, programs.at_once) == (
        None,
        False,
        8,
    )


@pytest.mark.parametrize(
    ("environ", "args", "message"),
    [
        ({}, ["--auth-program", "/nonexistent/auth"], "--auth-program /nonexistent/auth: not an"),
        ({"TOKEND_AUTHZ_PROGRAM": "/etc/passwd"}, [], "TOKEND_AUTHZ_PROGRAM /etc/passwd: not an"),
        ({}, ["--auth-program-arg", "x"], "--auth-program-arg needs --auth-program"),
        ({}, ["--authz-program-decides"], "--authz-program-decides needs --authz-program"),
        ({"TOKEND_AUTH_PROGRAM_TIMEOUT": "0"}, [], "TOKEND_AUTH_PROGRAM_TIMEOUT must be between"),
        ({}, ["--programs-at-once", "0"], "--programs-at-once must be between 1 and 256"),
    ],
)
def test_a_program_that_cannot_run_stops_start_up(
    tmp_path: Path, environ: dict[str, str], args: list[str], message: str
) -> None:
    with pytest.raises(UsageError) as error:
        parsed(tmp_path, *args, environ=environ)
    assert str(error.value).startswith(message)
