"""``tokend db``: the access tokens' database, the one the daemon uses (``--database``,
``TOKEND_DATABASE``). ``version`` shows its schema version and the newest this tokend knows;
``upgrade`` applies the versions it lacks (the daemon does it at start-up too)."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from tokend.cli.common import CommandError, UsageError
from tokend.cli.daemon_options import add_option
from tokend.settings.options import DATABASE


def _location(args: argparse.Namespace) -> Any:
    from tokend.store.database import DatabaseError, locate

    try:
        return locate(args.database)
    except DatabaseError as e:
        raise UsageError(str(e)) from None


def _shown(version: str | None) -> str:
    return version or "none (empty)"


def show_version(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    from tokend.store.database import DatabaseError, DatabaseUnavailable
    from tokend.store.migrating import UnknownVersion, version

    location = _location(args)
    try:
        found = version(location)
    except (DatabaseUnavailable, DatabaseError, UnknownVersion) as e:
        raise CommandError(str(e)) from None
    if args.json:
        answer = {"database": location.shown, "current": found.current, "head": found.head}
        stdout.write(json.dumps(answer) + "\n")
        return
    state = "up to date" if found.up_to_date else "tokend db upgrade applies the rest"
    stdout.write(
        f"database: {location.shown}\nschema version: {_shown(found.current)}\n"
        f"newest: {found.head} ({state})\n"
    )


def upgrade(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    from tokend.store.database import DatabaseError, DatabaseUnavailable
    from tokend.store.migrating import UnknownVersion
    from tokend.store.migrating import upgrade as apply

    location = _location(args)
    try:
        before, after = apply(location)
    except (DatabaseUnavailable, DatabaseError, UnknownVersion) as e:
        raise CommandError(str(e)) from None
    if before.current == after.current:
        stdout.write(f"{location.shown}: already at schema version {after.current}\n")
    else:
        stdout.write(
            f"{location.shown}: schema version {_shown(before.current)} -> {after.current}\n"
        )


def register(commands: Any) -> None:
    db = commands.add_parser(
        "db", help="the access tokens' database: show or upgrade its schema version"
    )
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    showing = actions.add_parser("version", help="its schema version and the newest one")
    showing.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    showing.set_defaults(run=show_version)
    upgrading = actions.add_parser("upgrade", help="apply the schema versions it lacks")
    upgrading.set_defaults(run=upgrade)
    option = DATABASE[0]
    for parser in (showing, upgrading):
        add_option(parser, option, f"{option.help}; default {option.default}")
