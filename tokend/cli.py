"""The ``tokend`` tool: what an operator needs around the daemon.

``hash-password`` makes a users.json hash, ``check-config`` validates a config directory the way
the daemon would and reports rules that never apply or overlap (and, with the daemon's
``--ldap-*`` options, checks the directory), ``explain`` shows which rule decides a request (for
a directory account too), ``kid`` prints the key ids a registry configuration needs,
``dev-cert`` writes a development key pair. Exit status 0 on success, 1 on a finding, 2 on a
usage error, 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import bcrypt

from tokend.dn import DNError, normalise_dn
from tokend.login.identity import directory_spelling
from tokend.login.passwords import MAX_PASSWORD_BYTES
from tokend.policy.files import load_policy
from tokend.policy.model import (
    ACTIONS,
    DEFAULT_BCRYPT_COST,
    EVERY_DIRECTORY_ACCOUNT,
    Decision,
    Policy,
    PolicyError,
    UserPolicy,
)
from tokend.policy.report import overlap_notes
from tokend.scope import ScopeError, parse_scopes
from tokend.signing.devcert import DEFAULT_CN, DEFAULT_DAYS, DanglingLinkError, write_dev_cert
from tokend.signing.keys import KeyConfigError, key_ids, load_signing_key
from tokend.signing.tokens import rfc3339

if TYPE_CHECKING:
    # Imported when a command needs the directory: ldaptor loads and installs the global
    # reactor, which hash-password, kid and a directory-less check-config do without.
    from tokend.login.directory import Directory, DirectoryConfig, DirectoryReport

MIN_COST, MAX_COST = 4, 31
MAX_LDAP_TIMEOUT = 300.0
"""The daemon's bound on --ldap-timeout."""

T = TypeVar("T")


class CommandError(Exception):
    """A finding to report on stderr with exit status 1."""


class UsageError(Exception):
    """Options that do not go together: reported on stderr with exit status 2."""


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
    directory = _directory_config(args)
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
    if directory is not None:
        taken = policy.directory_groups
        named = sorted({dn for dns in taken.values() for dn in dns} - {EVERY_DIRECTORY_ACCOUNT})

        async def check_and_find(d: Directory) -> tuple[DirectoryReport, list[str]]:
            return await d.check(), await d.missing(named)

        report, missing = _ask_directory(directory, check_and_find)
        for line in report.lines():
            stdout.write(line + "\n")
        stdout.write(_directory_groups_taken(taken))
        for dn in missing:
            users = ", ".join(sorted(name for name, dns in taken.items() if dn in dns))
            stdout.write(
                f"warning: directory: ldap_groups {dn} (group {users}) is no entry the service "
                "account can read: no account will match it\n"
            )


def _directory_groups_taken(taken: Mapping[str, frozenset[str]]) -> str:
    """Which groups of groups.json directory accounts can be in, and through which DNs."""
    if not taken:
        return (
            "directory: no group of groups.json names ldap_groups; directory accounts log in "
            "and get an empty access\n"
        )
    return "".join(
        f"directory: group {name} takes {_directory_dns(dns)}\n"
        for name, dns in sorted(taken.items())
    )


def _directory_dns(dns: frozenset[str]) -> str:
    if EVERY_DIRECTORY_ACCOUNT in dns:
        return "every directory account"
    return "members of " + ", ".join(sorted(dns))


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
    if args.anonymous and (args.ldap_group or args.ldap_url):
        raise UsageError(
            "--anonymous explains clients without credentials; drop the --ldap-* options"
        )
    if args.ldap_group and args.ldap_url:
        raise UsageError(
            "--ldap-group explains without asking the directory, --ldap-url asks it: "
            "give one of them"
        )
    directory = _directory_config(args)
    try:
        scopes = parse_scopes(texts)
    except ScopeError as e:
        raise CommandError(str(e)) from None
    member: UserPolicy | None = None
    if account is not None and account in policy.users:
        if args.ldap_group or directory is not None:
            stdout.write(
                f"{account!r} is in users.json: its hash and rules decide, and the directory "
                "is never asked for it\n"
            )
    elif account is not None:
        spelled = directory_spelling(account, policy)
        if spelled is None:
            raise CommandError(
                f"{account!r} is not in users.json, which holds the name in another case: "
                "users.json decides for it (a login as this spelling is refused) and the "
                "directory is never asked"
            )
        if spelled != account:
            stdout.write(
                f"directory: {account!r} logs in as {spelled!r} (names are matched "
                "without regard to case)\n"
            )
            account = spelled
        groups = _directory_groups(args, directory, account, stdout)
        member = policy.directory_member(account, groups)
        for line in _membership(policy, groups, member):
            stdout.write(line + "\n")
    who = "anonymous" if account is None else repr(account)
    for scope in scopes:
        granted = policy.grant(account, scope, member)
        decision = policy.decide(account, scope.type, scope.name, member)
        stdout.write(
            f"{scope}  ->  {who} gets {','.join(granted) or 'nothing'} (holds {_held(decision)})\n"
        )
        for line in _reasons(policy, decision):
            stdout.write(f"    {line}\n")
    if account is None:
        return
    if member is None:
        stdout.write(_identity_tokens(account, policy.users[account].tokens_valid_after))
    else:
        stdout.write(_directory_identity_tokens(account))


def _directory_groups(
    args: argparse.Namespace, directory: DirectoryConfig | None, account: str, stdout: TextIO
) -> frozenset[str]:
    """The directory groups ``account`` (not in users.json) holds: as given with --ldap-group,
    or as the directory answers; the DN found is printed on the way."""
    if args.ldap_group:
        return frozenset(args.ldap_group)
    if directory is None:
        raise CommandError(
            f"no user {account!r} in users.json; give the daemon's --ldap-url and --ldap-base "
            "to look it up in the directory, or --ldap-group DN to explain it as a directory "
            "account in that group"
        )
    found = _ask_directory(directory, lambda d: d.lookup(account))
    if found is None:
        raise CommandError(
            f"no user {account!r} in users.json, and the directory has no single entry for it "
            f"under {directory.base} (filter {directory.filter})"
        )
    stdout.write(f"directory: {account!r} is {found.dn}\n")
    return found.groups


def _membership(policy: Policy, groups: frozenset[str], member: UserPolicy) -> list[str]:
    """Which groups of groups.json a directory account with ``groups`` is in, and why."""
    lines = [f"directory groups: {', '.join(sorted(groups)) or 'none'}"]
    for name, group in policy.groups.items():
        if not group.holds(groups):
            continue
        taken = group.ldap_groups & groups
        why = "every directory account" if not taken else ", ".join(sorted(taken))
        if name in member.groups:
            lines.append(f"groups.json: group {name} takes it (ldap_groups: {why})")
        else:
            lines.append(
                f"groups.json: group {name} takes it (ldap_groups: {why}), but two of its rules "
                "tie for this name: it grants nothing"
            )
    if not member.groups:
        lines.append(
            "groups.json: no group takes these directory groups: a login gets an empty access"
        )
    return lines


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


def _directory_identity_tokens(account: str) -> str:
    """How refresh tokens of a directory account follow the directory."""
    return (
        f"identity tokens: a refresh token of {account!r} (docker login keeps one) is bound to "
        "its DN; every refresh looks the account up again (remembered for "
        "--credential-cache-ttl) and gets the rights its groups give then; it is refused once "
        "the account is gone from the search base or has another DN\n"
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


_DIRECTORY_SETTINGS = (
    "ldap_starttls",
    "ldap_ca_cert",
    "ldap_bind_dn",
    "ldap_bind_password_file",
    "ldap_base",
    "ldap_filter",
    "ldap_group_attribute",
    "ldap_group_base",
    "ldap_group_filter",
    "ldap_timeout",
)
"""Options that only mean something with --ldap-url (their defaults are None or False)."""


def _directory_config(args: argparse.Namespace) -> DirectoryConfig | None:
    """The directory the daemon would ask, from the daemon's own --ldap-* options (the same
    names, defaults and checks as ``tap.Options``); None without --ldap-url."""
    if not args.ldap_url:
        stray = [name for name in _DIRECTORY_SETTINGS if getattr(args, name) not in (None, False)]
        if stray:
            option = "--" + stray[0].replace("_", "-")
            raise UsageError(f"{option} needs --ldap-url (the directory to ask)")
        return None
    from tokend.login.directory import (
        DEFAULT_FILTER,
        DEFAULT_GROUP_ATTRIBUTE,
        DEFAULT_GROUP_FILTER,
        DEFAULT_TIMEOUT,
        DirectoryConfig,
        read_bind_password,
    )

    if not args.ldap_base:
        raise UsageError("--ldap-url needs --ldap-base (a DN)")
    if bool(args.ldap_bind_dn) != bool(args.ldap_bind_password_file):
        raise UsageError(
            "--ldap-bind-dn and --ldap-bind-password-file go together (without both, "
            "searches are anonymous)"
        )
    password = None
    if args.ldap_bind_password_file:
        try:
            password = read_bind_password(
                args.ldap_bind_password_file, allow_loose=args.allow_loose_key_permissions
            )
        except ValueError as e:
            raise CommandError(str(e)) from None

    def given(value: T | None, default: T) -> T:
        return default if value is None else value

    try:
        return DirectoryConfig(
            urls=tuple(args.ldap_url),
            base=args.ldap_base,
            starttls=args.ldap_starttls,
            ca_cert=args.ldap_ca_cert,
            bind_dn=args.ldap_bind_dn,
            bind_password=password,
            filter=given(args.ldap_filter, DEFAULT_FILTER),
            group_attribute=given(args.ldap_group_attribute, DEFAULT_GROUP_ATTRIBUTE),
            group_base=args.ldap_group_base,
            group_filter=given(args.ldap_group_filter, DEFAULT_GROUP_FILTER),
            timeout=given(args.ldap_timeout, DEFAULT_TIMEOUT),
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _ask_directory(config: DirectoryConfig, question: Callable[[Directory], Awaitable[T]]) -> T:
    """The answer to one directory question: the reactor runs until it comes.

    The global reactor, since Twisted's TLS (LDAPS, StartTLS) schedules its writes on it; it
    runs once per process, which is what a command needs (tests run such commands as
    processes). Every directory operation is bounded by --ldap-timeout, so this ends; Ctrl-C
    stops the reactor and is reported as an interruption.
    """
    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from tokend.login.directory import Directory, DirectoryUnavailable

    reactor: Any = global_reactor
    try:
        directory = Directory(config, reactor)
    except ValueError as e:
        raise CommandError(str(e)) from None
    outcome: list[Any] = []
    interrupted: list[bool] = []

    async def ask() -> T:
        try:
            return await question(directory)
        finally:
            directory.close()

    def finish(result: object) -> None:
        outcome.append(result)
        if not interrupted:
            reactor.callLater(0, reactor.stop)  # one more turn, so the unbind goes out

    def stopping() -> None:
        # Before the connections are dropped: a stop not caused by the answer is a signal.
        interrupted.append(not outcome)

    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(ask()).addBoth(finish))
    reactor.run()
    if not outcome or interrupted[0]:
        raise KeyboardInterrupt  # SIGINT or SIGTERM stopped the reactor before the answer
    result = outcome[0]
    if isinstance(result, Failure):
        if result.check(DirectoryUnavailable):
            raise CommandError(f"directory unavailable: {result.value}")
        result.raiseException()
    answer: T = result
    return answer


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


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not 0 < seconds <= MAX_LDAP_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_LDAP_TIMEOUT:g} s")
    return seconds


def _dn(value: str) -> str:
    """A DN option, checked and passed on as written (as the daemon passes it)."""
    _normalised_dn(value)
    return value


def _normalised_dn(value: str) -> str:
    try:
        return normalise_dn(value)
    except DNError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a DN: {e}") from None


def _add_directory_options(parser: argparse.ArgumentParser) -> None:
    """The daemon's --ldap-* options, with its names and defaults."""
    group = parser.add_argument_group(
        "directory", "the daemon's --ldap-* options (defaults: the daemon's); see the README"
    )
    group.add_argument(
        "--ldap-url",
        action="append",
        default=[],
        metavar="URL",
        help="ldap://host:port or ldaps://host:port; repeat for fail-over",
    )
    group.add_argument("--ldap-starttls", action="store_true", help="StartTLS on ldap:// URLs")
    group.add_argument("--ldap-ca-cert", metavar="FILE", help="PEM CA certificates for TLS")
    group.add_argument("--ldap-bind-dn", type=_dn, metavar="DN", help="the service account")
    group.add_argument(
        "--ldap-bind-password-file", metavar="FILE", help="the service account's password"
    )
    group.add_argument("--ldap-base", type=_dn, metavar="DN", help="where accounts are searched")
    group.add_argument("--ldap-filter", metavar="FILTER", help="{account} is the name")
    group.add_argument("--ldap-group-attribute", metavar="NAME", help="default memberOf")
    group.add_argument("--ldap-group-base", type=_dn, metavar="DN", help="search groups here")
    group.add_argument("--ldap-group-filter", metavar="FILTER", help="{dn} is the account's DN")
    group.add_argument("--ldap-timeout", type=_timeout, metavar="SECONDS", help="default 5")


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
        help="accept a group/other readable --key (or --ldap-bind-password-file), as the "
        "daemon's flag of that name does",
    )
    _add_directory_options(checking)
    checking.set_defaults(run=check_config)

    explaining = commands.add_parser(
        "explain", help="show what a user would be granted for each scope, and which rule decides"
    )
    explaining.add_argument(
        "user", nargs="?", metavar="USER", help="a user in users.json, or a directory account"
    )
    explaining.add_argument("scopes", nargs="+", metavar="SCOPE", help="e.g. repository:a/b:pull")
    explaining.add_argument(
        "--anonymous", action="store_true", help="explain for clients without credentials"
    )
    explaining.add_argument("--config-dir", default="config", help="default %(default)s")
    explaining.add_argument(
        "--ldap-group",
        action="append",
        default=[],
        type=_normalised_dn,
        metavar="DN",
        help="explain USER (not in users.json) as a directory account in this group, without "
        "asking the directory; repeatable",
    )
    explaining.add_argument(
        "--allow-loose-key-permissions",
        action="store_true",
        help="accept a group/other readable --ldap-bind-password-file, as the daemon does",
    )
    _add_directory_options(explaining)
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
    except UsageError as e:
        sys.stderr.write(f"tokend {args.command}: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"tokend {args.command}: interrupted\n")
        return 130
    return 0
