"""``tokend db``: the access tokens' database, the one the daemon uses (``--database``,
``TOKEND_DATABASE``). ``version`` shows its schema version and the newest this tokend knows;
``upgrade`` applies the versions it lacks (the daemon does it at start-up too)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from tokend.cli.common import CommandError, UsageError
from tokend.cli.daemon_options import add_config_dir, add_option
from tokend.settings.options import DATABASE


def location(args: argparse.Namespace) -> Any:
    """The daemon's database: --database or TOKEND_DATABASE, else the default beside
    --config-dir, as the daemon finds it."""
    from tokend.store.database import DatabaseError, locate

    try:
        return locate(args.database, Path(args.config_dir))
    except DatabaseError as e:
        raise UsageError(str(e).replace("--database", args.daemon.source("database"), 1)) from None


def add_database(parser: argparse.ArgumentParser) -> None:
    """--database and --config-dir (the default database is beside it), as the daemon's."""
    add_option(parser, DATABASE[0])
    add_config_dir(parser)


def _shown(version: str | None) -> str:
    return version or "none (empty)"


def show_version(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    from tokend.store.database import DatabaseError, DatabaseUnavailable
    from tokend.store.migrating import UnknownVersion, version

    where = location(args)
    try:
        found = version(where)
    except (DatabaseUnavailable, DatabaseError, UnknownVersion) as e:
        raise CommandError(str(e)) from None
    if args.json:
        answer = {"database": where.shown, "current": found.current, "head": found.head}
        stdout.write(json.dumps(answer) + "\n")
        return
    state = "up to date" if found.up_to_date else "tokend db upgrade applies the rest"
    stdout.write(
        f"database: {where.shown}\nschema version: {_shown(found.current)}\n"
        f"newest: {found.head} ({state})\n"
    )


def upgrade(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    from tokend.store.database import DatabaseError, DatabaseUnavailable
    from tokend.store.migrating import UnknownVersion
    from tokend.store.migrating import upgrade as apply

    where = location(args)
    try:
        before, after = apply(where)
    except (DatabaseUnavailable, DatabaseError, UnknownVersion) as e:
        raise CommandError(str(e)) from None
    if before.current == after.current:
        stdout.write(f"{where.shown}: already at schema version {after.current}\n")
    else:
        stdout.write(f"{where.shown}: schema version {_shown(before.current)} -> {after.current}\n")


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
    for parser in (showing, upgrading):
        add_database(parser)
