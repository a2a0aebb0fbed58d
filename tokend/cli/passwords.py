"""``tokend hash-password``: a bcrypt hash for users.json."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

import bcrypt

from tokend.cli.common import CommandError, read_password
from tokend.login.passwords import MAX_PASSWORD_BYTES
from tokend.policy.model import DEFAULT_BCRYPT_COST, MAX_BCRYPT_COST, MIN_BCRYPT_COST


def new_hash(from_stdin: bool, stdin: TextIO, cost: int) -> str:
    """A bcrypt hash of a password prompted for twice (or read from stdin's first line),
    refusing one that could never log in."""
    password = read_password(from_stdin, stdin).encode("utf-8")
    if not password:
        raise CommandError("refusing an empty password")
    if len(password) > MAX_PASSWORD_BYTES:
        raise CommandError(f"bcrypt checks at most {MAX_PASSWORD_BYTES} bytes; use a shorter one")
    return bcrypt.hashpw(password, bcrypt.gensalt(cost)).decode("ascii")


def hash_password(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    stdout.write(new_hash(args.stdin, stdin, args.cost) + "\n")


def _cost(value: str) -> int:
    cost = int(value)
    if not MIN_BCRYPT_COST <= cost <= MAX_BCRYPT_COST:
        raise argparse.ArgumentTypeError(
            f"cost must be between {MIN_BCRYPT_COST} and {MAX_BCRYPT_COST}"
        )
    return cost


def add_password_options(parser: argparse.ArgumentParser) -> None:
    """--cost and --stdin, for every command that asks for a password."""
    parser.add_argument(
        "--cost", type=_cost, default=DEFAULT_BCRYPT_COST, help="bcrypt cost (default %(default)s)"
    )
    parser.add_argument(
        "--stdin", action="store_true", help="read the password from the first line of stdin"
    )


def register(commands: Any) -> None:
    hashing = commands.add_parser("hash-password", help="print a bcrypt hash for users.json")
    add_password_options(hashing)
    hashing.set_defaults(run=hash_password)
