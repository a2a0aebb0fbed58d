"""What every command of the ``tokend`` tool shares: its two kinds of error and the password
prompt."""

from __future__ import annotations

import getpass
from typing import TextIO


class CommandError(Exception):
    """A finding to report on stderr with exit status 1."""


class UsageError(Exception):
    """Options that do not go together: reported on stderr with exit status 2."""


def read_password(from_stdin: bool, stdin: TextIO) -> str:
    if from_stdin:
        line = stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not stdin.isatty():
        # Nobody can answer the prompt through a pipe; scripts get one documented way: --stdin.
        raise CommandError(
            "standard input is not a terminal; "
            "pass --stdin to read the password from its first line"
        )
    try:
        first = getpass.getpass("Password: ")
        repeated = getpass.getpass("Repeat password: ")
    except EOFError:
        raise CommandError("no password given (end of input)") from None
    if first != repeated:
        raise CommandError("the passwords do not match")
    return first
