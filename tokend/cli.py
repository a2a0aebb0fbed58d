"""The ``tokend`` tool: what an operator needs around the daemon.

``hash-password`` makes a users.json hash, ``check-config`` validates a config directory the way
the daemon would and reports rules that never apply or overlap, ``explain`` shows which rule
decides a request, ``kid`` prints the key ids a registry configuration needs, ``dev-cert`` writes
a development key pair. Exit status 0 on success, 1 on a finding, 2 on a usage error, 130 when
interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import bcrypt

from tokend.login.passwords import MAX_PASSWORD_BYTES
from tokend.policy.files import load_policy
from tokend.policy.model import ACTIONS, DEFAULT_BCRYPT_COST, Decision, Policy, PolicyError
from tokend.policy.report import overlap_notes
from tokend.scope import ScopeError, parse_scopes
from tokend.signing.devcert import DEFAULT_CN, DEFAULT_DAYS, DanglingLinkError, write_dev_cert
from tokend.signing.keys import KeyConfigError, key_ids, load_signing_key
from tokend.signing.tokens import rfc3339

MIN_COST, MAX_COST = 4, 31


class CommandError(Exception):
    """A finding to report on stderr with exit status 1."""


def _read_password(from_stdin: bool, stdin: TextIO) -> str:
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


def hash_password(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    password = _read_password(args.stdin, stdin).encode("utf-8")
    if not password:
        raise CommandError("refusing an empty password")
    if len(password) > MAX_PASSWORD_BYTES:
        raise CommandError(f"bcrypt checks at most {MAX_PASSWORD_BYTES} bytes; use a shorter one")
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(args.cost)).decode("ascii")
    stdout.write(hashed + "\n")


def check_config(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    config_dir = Path(args.config_dir)
    try:
        loaded = load_policy(config_dir)
    except PolicyError as e:
        raise CommandError(str(e)) from None
    for warning in loaded.warnings:
        stdout.write(f"warning: {warning}\n")
    if args.key:
        try:
            load_signing_key(
                Path(args.key),
                Path(args.cert) if args.cert else None,
                allow_loose_permissions=args.allow_loose_key_permissions,
            )
        except KeyConfigError as e:
            raise CommandError(str(e)) from None
    policy = loaded.policy
    for note in overlap_notes(policy):
        stdout.write(f"overlap: {note}\n")
    anonymous = policy.anonymous
    stdout.write(
        f"{config_dir}: policy is valid: {len(policy.users)} users, {len(policy.groups)} groups, "
        f"anonymous {'blacklist' if anonymous.blacklist else 'whitelist'} of "
        f"{len(anonymous.repositories)} names and patterns, anonymous catalog "
        f"{'on' if anonymous.catalog else 'off'}\n"
    )


def explain(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    """For each scope: what a token would hold, and the rule of each source that decided it."""
    try:
        policy = load_policy(Path(args.config_dir)).policy
    except PolicyError as e:
        raise CommandError(str(e)) from None
    account: str | None = None if args.anonymous else args.user
    texts = args.scopes
    if args.anonymous and args.user is not None:
        texts = [args.user, *texts]  # with --anonymous every argument is a scope
    elif not args.anonymous and args.user is None:
        raise CommandError("name a USER, or pass --anonymous")
    if account is not None and account not in policy.users:
        raise CommandError(f"no user {account!r} in users.json")
    try:
        scopes = parse_scopes(texts)
    except ScopeError as e:
        raise CommandError(str(e)) from None
    who = "anonymous" if account is None else repr(account)
    for scope in scopes:
        granted = policy.grant(account, scope)
        decision = policy.decide(account, scope.type, scope.name)
        stdout.write(
            f"{scope}  ->  {who} gets {','.join(granted) or 'nothing'} (holds {_held(decision)})\n"
        )
        for line in _reasons(policy, decision):
            stdout.write(f"    {line}\n")
    if account is not None:
        stdout.write(_identity_tokens(account, policy.users[account].tokens_valid_after))


def _identity_tokens(account: str, valid_after: float | None) -> str:
    """How refresh tokens relate to what explain just showed: same rights, and how to end them."""
    revoked = (
        f"those issued before {rfc3339(valid_after)} are revoked (tokens_valid_after)"
        if valid_after is not None
        else "none is revoked by tokens_valid_after"
    )
    return (
        f"identity tokens: a refresh token of {account!r} (docker login keeps one) gets exactly "
        f"these rights; it lasts --refresh-token-ttl (0: none issued), and changing "
        f"{account}'s pass_hash or setting tokens_valid_after revokes it; {revoked}\n"
    )


def _in_order(actions: frozenset[str]) -> str:
    """Actions in the order tokens list them (pull, push, delete)."""
    return ",".join(sorted(actions, key=lambda a: ACTIONS.index(a) if a in ACTIONS else -1))


def _held(decision: Decision) -> str:
    return _in_order(decision.actions) or "nothing"


def _reasons(policy: Policy, decision: Decision) -> list[str]:
    lines = []
    for match in decision.matches:
        if match.rule is None:
            lines.append(f"{match.source}: no rule matches")
        elif match.rule.actions:
            actions = _in_order(match.rule.actions)
            lines.append(f"{match.source}: {match.rule.key!r} allows {actions}")
        else:
            lines.append(f"{match.source}: {match.rule.key!r} denies (no actions)")
    lines.append(decision.note)
    return lines


def kid(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    try:
        ids = key_ids(Path(args.path))
    except KeyConfigError as e:
        raise CommandError(str(e)) from None
    if args.json:
        stdout.write(json.dumps(ids) + "\n")
        return
    stdout.write(f"libtrust   {ids['libtrust']}   (distribution 2.x, --kid libtrust)\n")
    stdout.write(f"thumbprint {ids['thumbprint']}   (distribution 3.x, --kid thumbprint)\n")


def dev_cert(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    key_path, cert_path = Path(args.key), Path(args.cert)
    try:
        write_dev_cert(key_path, cert_path, cn=args.cn, days=args.days, overwrite=args.force)
    except FileExistsError as e:
        raise CommandError(f"{e}; pass --force to replace it") from None
    except DanglingLinkError as e:
        raise CommandError(str(e)) from None
    except OSError as e:
        raise CommandError(f"cannot write the key pair: {e}") from None
    stdout.write(
        f"wrote {key_path} (P-256, mode 0600) and {cert_path}; "
        f"give the registry {cert_path} as auth.token.rootcertbundle\n"
    )


def _cost(value: str) -> int:
    cost = int(value)
    if not MIN_COST <= cost <= MAX_COST:
        raise argparse.ArgumentTypeError(f"cost must be between {MIN_COST} and {MAX_COST}")
    return cost


def _days(value: str) -> int:
    days = int(value)
    if days < 1:
        raise argparse.ArgumentTypeError("days must be at least 1")
    return days


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokend", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hashing = commands.add_parser("hash-password", help="print a bcrypt hash for users.json")
    hashing.add_argument(
        "--cost", type=_cost, default=DEFAULT_BCRYPT_COST, help="bcrypt cost (default %(default)s)"
    )
    hashing.add_argument(
        "--stdin", action="store_true", help="read the password from the first line of stdin"
    )
    hashing.set_defaults(run=hash_password)

    checking = commands.add_parser(
        "check-config", help="validate the policy files; report unused and overlapping rules"
    )
    checking.add_argument("--config-dir", default="config", help="default %(default)s")
    checking.add_argument("--key", help="also check this signing key (and --cert)")
    checking.add_argument("--cert", help="certificate chain to check against --key")
    checking.add_argument(
        "--allow-loose-key-permissions",
        action="store_true",
        help="accept a group/other readable --key, as the daemon's flag of that name does",
    )
    checking.set_defaults(run=check_config)

    explaining = commands.add_parser(
        "explain", help="show what a user would be granted for each scope, and which rule decides"
    )
    explaining.add_argument("user", nargs="?", metavar="USER", help="a user in users.json")
    explaining.add_argument("scopes", nargs="+", metavar="SCOPE", help="e.g. repository:a/b:pull")
    explaining.add_argument(
        "--anonymous", action="store_true", help="explain for clients without credentials"
    )
    explaining.add_argument("--config-dir", default="config", help="default %(default)s")
    explaining.set_defaults(run=explain)

    key_id = commands.add_parser("kid", help="print both key ids of a key or certificate")
    key_id.add_argument("path", help="PEM certificate, public key or private key")
    key_id.add_argument("--json", action="store_true", help="print a JSON object")
    key_id.set_defaults(run=kid)

    dev = commands.add_parser("dev-cert", help="write a development key and certificate")
    dev.add_argument("--key", default="certs/RootCA.key", help="default %(default)s")
    dev.add_argument("--cert", default="certs/RootCA.crt", help="default %(default)s")
    dev.add_argument("--cn", default=DEFAULT_CN, help="certificate common name")
    dev.add_argument("--days", type=_days, default=DEFAULT_DAYS, help="default %(default)s")
    dev.add_argument("--force", action="store_true", help="replace existing files")
    dev.set_defaults(run=dev_cert)
    return parser


def main(
    argv: Sequence[str] | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args, stdin, stdout)
    except CommandError as e:
        sys.stderr.write(f"tokend {args.command}: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"tokend {args.command}: interrupted\n")
        return 130
    return 0
