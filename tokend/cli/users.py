"""``tokend user add|passwd|remove|list``: users.json accounts edited in place, and listed.

Each edit goes through :mod:`tokend.policy.editing`: checked with the daemon's own loader
before anything is written, written atomically with the file's mode and owner, refused when
someone else changed the file meanwhile. The running daemon takes it up with its live reload.
A change is checked before the password prompt too, so a typo costs no typing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from tokend.cli.common import CommandError
from tokend.cli.daemon_options import add_config_dir
from tokend.cli.passwords import add_password_options, new_hash
from tokend.policy.editing import (
    EditError,
    check_loads,
    group_names,
    new_user,
    read_users,
    serialise,
    with_password,
    with_user,
    without_user,
    write_users,
)
from tokend.policy.files import GROUPS_FILE, load_policy
from tokend.policy.model import PolicyError

Change = Callable[[Mapping[str, Any]], dict[str, Any]]
PasswordChange = Callable[[Mapping[str, Any], str], dict[str, Any]]
"""A change to users.json that sets a password hash."""


def _placeholder(cost: int) -> str:
    """A well-formed hash of the chosen cost, for checking a change before the prompt."""
    return f"$2b${cost:02d}${'.' * 53}"


def _edit_with_password(
    config_dir: Path, change: PasswordChange, stdin: TextIO, args: argparse.Namespace
) -> None:
    """Check the change with a placeholder hash, prompt, then make it on a fresh read of the
    file: a typo costs no typing, and an edit someone made during the prompt is kept."""
    try:
        snapshot = read_users(config_dir)
        trial = change(snapshot.document, _placeholder(args.cost))
        check_loads(config_dir, serialise(trial, snapshot.raw))
    except EditError as e:
        raise CommandError(str(e)) from None
    pass_hash = new_hash(args.stdin, stdin, args.cost)
    _write(config_dir, lambda document: change(document, pass_hash))


def _write(config_dir: Path, change: Change) -> None:
    try:
        snapshot = read_users(config_dir)
        write_users(snapshot, change(snapshot.document))
    except EditError as e:
        raise CommandError(str(e)) from None


def _check_groups(config_dir: Path, wanted: list[str]) -> None:
    known = group_names(config_dir)
    for name in wanted:
        if name not in known:
            hint = (
                f"known groups: {', '.join(known)}"
                if known
                else f"{config_dir / GROUPS_FILE} defines none"
            )
            raise CommandError(f"no group {name!r} in {GROUPS_FILE}; {hint}")


def add(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    config_dir, name = Path(args.config_dir), args.name
    _check_groups(config_dir, args.group)

    def change(document: Mapping[str, Any], pass_hash: str) -> dict[str, Any]:
        return with_user(document, name, new_user(pass_hash, args.group, args.pull, args.push))

    _edit_with_password(config_dir, change, stdin, args)
    rules = len({*args.pull, *args.push})
    groups = ", ".join(dict.fromkeys(args.group)) or "none"
    stdout.write(
        f"added {name} to {config_dir / 'users.json'} ({_count(rules, 'rule')}, groups: "
        f"{groups}); the running daemon takes it up with its live reload\n"
    )
    if not rules and not args.group:
        stdout.write(
            f"note: {name} can log in but holds no repository: give --pull or --push patterns, "
            "or --group\n"
        )


def passwd(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    config_dir, name = Path(args.config_dir), args.name

    def change(document: Mapping[str, Any], pass_hash: str) -> dict[str, Any]:
        return with_password(document, name, pass_hash)

    _edit_with_password(config_dir, change, stdin, args)
    stdout.write(
        f"changed the password of {name} in {config_dir / 'users.json'}; the running daemon "
        f"takes it up with its live reload, which also ends {name}'s refresh tokens (docker "
        "logins must log in again)\n"
    )


def remove(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    config_dir, name = Path(args.config_dir), args.name
    _write(config_dir, lambda document: without_user(document, name))
    stdout.write(
        f"removed {name} and its group memberships from {config_dir / 'users.json'}; with the "
        f"live reload its logins and refresh tokens stop working (access tokens already issued "
        "last until they expire)\n"
    )


def list_users(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    """Users as the daemon would load them: groups and number of own rules; robots (no
    password: access tokens only) marked."""
    try:
        users = load_policy(Path(args.config_dir)).policy.users
    except PolicyError as e:
        raise CommandError(str(e)) from None
    width = max((len(name) for name in users), default=0)
    for name, user in users.items():
        groups = ", ".join(user.groups) or "none"
        rules = _count(len(user.repositories), "rule")
        robot = "  robot (access tokens only)" if user.robot else ""
        stdout.write(f"{name:<{width}}  {rules:<9}  groups: {groups}{robot}\n")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def register(commands: Any) -> None:
    user = commands.add_parser(
        "user", help="add, change or remove users.json accounts in place; list them"
    )
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")

    adding = actions.add_parser("add", help="add a user with a prompted password")
    adding.add_argument("name", metavar="NAME")
    adding.add_argument(
        "--group", action="append", default=[], metavar="G", help="a group of groups.json"
    )
    adding.add_argument(
        "--pull", action="append", default=[], metavar="PATTERN", help="a rule granting pull"
    )
    adding.add_argument(
        "--push",
        action="append",
        default=[],
        metavar="PATTERN",
        help="a rule granting pull and push (the registry needs both to upload)",
    )
    add_password_options(adding)
    adding.set_defaults(run=add)

    changing = actions.add_parser("passwd", help="replace a user's password")
    changing.add_argument("name", metavar="NAME")
    add_password_options(changing)
    changing.set_defaults(run=passwd)

    removing = actions.add_parser("remove", help="remove a user and its group memberships")
    removing.add_argument("name", metavar="NAME")
    removing.set_defaults(run=remove)

    listing = actions.add_parser("list", help="users with their groups and number of rules")
    listing.set_defaults(run=list_users)

    for parser in (adding, changing, removing, listing):
        add_config_dir(parser)
