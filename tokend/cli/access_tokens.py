"""``tokend token create|list|show|revoke``: access tokens in the daemon's database (#26), the
same ``--database`` (``TOKEND_DATABASE``, else beside ``--config-dir``) the daemon uses.

A new token's secret is printed once, at creation; only its hash is kept, so list and show never
have it. An owner is a users.json account of ``--config-dir`` (a robot without a password
too) or, with the daemon's ``--ldap-*`` options, a directory account. ``tokend token TOKEN``
(reading a signed token back, :mod:`tokend.cli.tokens`) keeps its place: these four words are
taken as actions only right after ``token``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from tokend.cli.common import CommandError, UsageError
from tokend.cli.daemon_options import add_option
from tokend.cli.database import add_database, location
from tokend.cli.directory_options import add_directory_options, ask_directory, directory_config
from tokend.cli.times import when
from tokend.settings.options import ACCESS_TOKEN_MAX_TTL, DAEMON

if TYPE_CHECKING:
    from tokend.access_tokens.new_token import NewToken
    from tokend.access_tokens.record import AccessToken
    from tokend.store.queries import AccessTokens

T = TypeVar("T")

ACTIONS = ("create", "list", "show", "revoke")
COLUMNS = ("ID", "NAME", "OWNER", "STATE", "EXPIRES", "LAST USED", "SCOPES")
MAX_USERS_BYTES = 16 * 1024 * 1024


def asks_for_access_tokens(argv: Sequence[str]) -> bool:
    """``tokend token create …`` and its siblings, rather than ``tokend token TOKEN``."""
    return len(argv) >= 2 and argv[0] == "token" and argv[1] in ACTIONS


def _with_tokens(args: argparse.Namespace, work: Callable[[AccessTokens], T], create: bool) -> T:
    """``work`` on the database's tokens: brought to the newest schema first when creating
    (a deployment's first token may come before its daemon's first start), else it must be
    there already."""
    from tokend.store.database import DatabaseError, DatabaseUnavailable, connect
    from tokend.store.migrating import UnknownVersion, upgrade, version
    from tokend.store.queries import AccessTokens

    where = location(args)
    try:
        if create:
            upgrade(where)
        elif not (found := version(where)).up_to_date:
            raise CommandError(
                f"{where.shown} is at schema version {found.current or 'none'}, not "
                f"{found.head}: tokend db upgrade (or the daemon's start) applies the rest"
            )
        engine = connect(where, create=False)
        try:
            return work(AccessTokens(engine, where))
        finally:
            engine.dispose()
    except (DatabaseUnavailable, DatabaseError, UnknownVersion) as e:
        raise CommandError(str(e)) from None


def _users_json_accounts(config_dir: Path) -> set[str] | None:
    """The account names of users.json (robots included), None when there is no users.json."""
    path = config_dir / "users.json"
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_USERS_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror}") from None
    try:
        document = json.loads(raw)
    except ValueError as e:
        raise CommandError(f"{path} is not valid JSON ({e})") from None
    if len(raw) > MAX_USERS_BYTES or not isinstance(document, dict):
        raise CommandError(f"{path}: expected an object mapping user names to entries")
    return set(document)


def _check_owner(args: argparse.Namespace, stdout: TextIO) -> None:
    """The owner exists: in users.json, else in the directory the daemon would ask."""
    config_dir = Path(args.config_dir)
    accounts = _users_json_accounts(config_dir)
    if accounts is not None and args.owner in accounts:
        return
    directory = directory_config(args, stdout)
    where = f"{config_dir / 'users.json'}"
    if directory is None:
        raise CommandError(
            f"no account {args.owner!r} in {where} (a directory account needs the daemon's "
            "--ldap-url and --ldap-base)"
        )
    if ask_directory(directory, lambda d: d.lookup(args.owner)) is None:
        raise CommandError(
            f"no account {args.owner!r} in {where}, and the directory has no single entry "
            f"for it under {directory.base}"
        )


def _checked(args: argparse.Namespace) -> NewToken:
    """The token asked for, each refusal naming its option (a usage error: exit 2)."""
    from tokend.access_tokens.cap import CapError, parse_cap
    from tokend.access_tokens.lifetimes import LifetimeError, parse_lifetime
    from tokend.access_tokens.new_token import NewTokenError, checked_name, from_command_line

    checks: list[tuple[str, Callable[[], object]]] = [
        ("--owner", lambda: checked_name(args.owner, "owner")),
        ("--name", lambda: checked_name(args.name)),
        ("--expires", lambda: parse_lifetime(args.expires, args.access_token_max_ttl)),
        ("--scope", lambda: parse_cap(args.scope)),
    ]
    for option, check in checks:
        try:
            check()
        except (NewTokenError, LifetimeError, CapError) as e:
            raise UsageError(f"{option}: {e}") from None
    return from_command_line(
        args.owner, args.name, args.expires, args.scope, args.access_token_max_ttl
    )


def create(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    asked = _checked(args)
    _check_owner(args, stdout)
    now = int(time.time())

    def insert(tokens: AccessTokens) -> AccessToken:
        return tokens.create(
            asked.owner, asked.name, asked.hashed, asked.stored_cap(), now, now + asked.lifetime
        )

    made = _with_tokens(args, insert, create=True)
    if args.json:
        stdout.write(json.dumps({**made.as_json(now), "secret": asked.secret}) + "\n")
        return
    stdout.write(
        f"created access token {made.id} {made.name!r} of {made.owner}, expires "
        f"{when(made.expires_at, now)}, scopes {' '.join(made.scopes())}\n"
        "its secret, shown once and never again (only its hash is kept): store it now\n"
        f"{asked.secret}\n"
    )


def list_tokens(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    found = _with_tokens(args, lambda tokens: tokens.list(args.owner), create=False)
    now = time.time()
    if args.json:
        stdout.write(json.dumps({"tokens": [t.as_json(now) for t in found]}) + "\n")
        return
    rows = [COLUMNS, *(_row(t, now) for t in found)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        stdout.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def _row(token: AccessToken, now: float) -> tuple[str, ...]:
    from tokend.access_tokens.record import rfc3339

    used = "never" if token.last_used_at is None else str(rfc3339(token.last_used_at))
    return (
        token.id,
        token.name,
        token.owner,
        token.state(now),
        str(rfc3339(token.expires_at)),
        used,
        " ".join(token.scopes()),
    )


def _one(args: argparse.Namespace, found: AccessToken | None) -> AccessToken:
    if found is None:
        raise CommandError(f"no access token {args.id}")
    return found


def show(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    found = _one(args, _with_tokens(args, lambda tokens: tokens.get(args.id), create=False))
    _describe(found, args.json, stdout)


def revoke(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    from tokend.access_tokens.record import rfc3339

    now = int(time.time())

    def revoking(tokens: AccessTokens) -> tuple[AccessToken | None, AccessToken | None]:
        return tokens.get(args.id), tokens.revoke(args.id, now)

    before, after = _with_tokens(args, revoking, create=False)
    found = _one(args, after)
    if args.json:
        _describe(found, True, stdout)
        return
    assert found.revoked_at is not None
    if before is not None and before.revoked_at is not None:
        stdout.write(
            f"access token {found.id} {found.name!r} of {found.owner} was already revoked "
            f"at {rfc3339(found.revoked_at)}\n"
        )
    else:
        stdout.write(f"revoked access token {found.id} {found.name!r} of {found.owner}\n")


def _describe(token: AccessToken, as_json: bool, stdout: TextIO) -> None:
    now = time.time()
    if as_json:
        stdout.write(json.dumps(token.as_json(now)) + "\n")
        return
    shown = token.as_json(now)
    used = "never"
    if token.last_used_at is not None:
        used = f"{when(token.last_used_at, now)} from {token.last_used_from or 'unknown'}"
    lines = [
        f"id: {token.id}",
        f"name: {token.name}",
        f"owner: {token.owner}",
        f"state: {shown['state']}",
        f"scopes: {' '.join(token.scopes())}",
        f"created: {when(token.created_at, now)}",
        f"expires: {when(token.expires_at, now)}",
        f"last used: {used}",
    ]
    if token.revoked_at is not None:
        lines.append(f"revoked: {when(token.revoked_at, now)}")
    stdout.write("".join(f"{line}\n" for line in lines))


def access_token_parser() -> argparse.ArgumentParser:
    """The parser of ``tokend token ACTION …``, its commands named as ``tokend`` names them."""
    parser = argparse.ArgumentParser(prog="tokend")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    family = commands.add_parser(
        "token", help="access tokens: create, list, show, revoke", description=__doc__
    )
    actions = family.add_subparsers(dest="action", required=True, metavar="ACTION")

    creating = actions.add_parser(
        "create", help="a new token; its secret is printed once, never again"
    )
    creating.add_argument("--owner", required=True, help="its account (users.json or directory)")
    creating.add_argument("--name", required=True, help="a label for people, e.g. ci-deploy")
    creating.add_argument(
        "--expires", metavar="LIFETIME", help="90d, 12h or 30m (default 90d, at most the maximum)"
    )
    creating.add_argument(
        "--scope",
        action="append",
        required=True,
        metavar="PATTERN:ACTIONS",
        help="repositories and actions it may have, e.g. 'team/*:pull,push'; repeat for several",
    )
    add_option(creating, ACCESS_TOKEN_MAX_TTL)
    add_option(creating, DAEMON["allow-loose-key-permissions"])
    add_directory_options(creating)
    creating.set_defaults(run=create)

    listing = actions.add_parser("list", help="every token (or one owner's), a row each")
    listing.add_argument("--owner", help="only this account's tokens")
    listing.set_defaults(run=list_tokens)

    showing = actions.add_parser("show", help="one token, without its secret")
    showing.add_argument("id", metavar="ID")
    showing.set_defaults(run=show)

    revoking = actions.add_parser("revoke", help="end a token now, everywhere within 2 s")
    revoking.add_argument("id", metavar="ID")
    revoking.set_defaults(run=revoke)

    for action in (creating, listing, showing, revoking):
        action.add_argument("--json", action="store_true", help="JSON, for scripts")
        add_database(action)
    return parser
