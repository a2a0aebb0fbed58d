"""The daemon's ``--ldap-*`` options as the tool takes them, and one question asked of the
directory with them (``check-config`` and ``explain``)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from tokend.cli.common import CommandError, UsageError
from tokend.dn import DNError, normalise_dn
from tokend.login.ldap.options import NEEDS_URL, ignored_without_url

if TYPE_CHECKING:
    # Imported when a command needs the directory: ldaptor loads and installs the global
    # reactor, which hash-password, kid and a directory-less check-config do without.
    from tokend.login.ldap.client import Directory
    from tokend.login.ldap.config import DirectoryConfig

MAX_LDAP_TIMEOUT = 300.0
"""The daemon's bound on --ldap-timeout."""

T = TypeVar("T")


def directory_config(args: argparse.Namespace, stdout: TextIO) -> DirectoryConfig | None:
    """The directory the daemon would ask, from the daemon's own --ldap-* options (the same
    names, defaults and checks as ``tap.Options``); None without --ldap-url, when the others
    are ignored with the daemon's warning."""
    if not args.ldap_url:
        named = [
            f"--{name}" for name in NEEDS_URL if getattr(args, name.replace("-", "_")) is not None
        ]
        ignored = ignored_without_url(named)
        if ignored is not None:
            stdout.write(f"warning: {ignored}\n")
        return None
    from tokend.login.ldap.config import (
        DEFAULT_FILTER,
        DEFAULT_GROUP_ATTRIBUTE,
        DEFAULT_GROUP_FILTER,
        DEFAULT_TIMEOUT,
        DirectoryConfig,
        read_bind_password,
        read_ca_certificates,
    )

    if not args.ldap_base:
        raise UsageError("--ldap-url needs --ldap-base (a DN)")
    if bool(args.ldap_bind_dn) != bool(args.ldap_bind_password_file):
        raise UsageError(
            "--ldap-bind-dn and --ldap-bind-password-file go together (without both, "
            "searches are anonymous)"
        )
    if args.ldap_ca_cert:
        try:
            read_ca_certificates(args.ldap_ca_cert)
        except ValueError as e:
            raise UsageError(f"--ldap-ca-cert: {e}") from None
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
            starttls=bool(args.ldap_starttls),
            ca_cert=args.ldap_ca_cert,
            bind_dn=args.ldap_bind_dn,
            bind_password=password,
            filter=given(args.ldap_filter, DEFAULT_FILTER),
            active_filter=args.ldap_active_filter or None,
            group_attribute=given(args.ldap_group_attribute, DEFAULT_GROUP_ATTRIBUTE),
            group_base=args.ldap_group_base,
            group_filter=given(args.ldap_group_filter, DEFAULT_GROUP_FILTER),
            timeout=given(args.ldap_timeout, DEFAULT_TIMEOUT),
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def ask_directory(config: DirectoryConfig, question: Callable[[Directory], Awaitable[T]]) -> T:
    """The answer to one directory question: the reactor runs until it comes.

    The global reactor, since Twisted's TLS (LDAPS, StartTLS) schedules its writes on it; it
    runs once per process, which is what a command needs (tests run such commands as
    processes). Every directory operation is bounded by --ldap-timeout, so this ends; Ctrl-C
    stops the reactor and is reported as an interruption.
    """
    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from tokend.login.ldap.client import Directory
    from tokend.login.ldap.connections import DirectoryUnavailable

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
    normalised_dn(value)
    return value


def normalised_dn(value: str) -> str:
    try:
        return normalise_dn(value)
    except DNError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a DN: {e}") from None


def add_directory_options(parser: argparse.ArgumentParser) -> None:
    """The daemon's --ldap-* options, with its names and defaults."""
    group = parser.add_argument_group(
        "directory", "the daemon's --ldap-* options (defaults: the daemon's); see docs/directory.md"
    )
    group.add_argument(
        "--ldap-url",
        action="append",
        default=[],
        metavar="URL",
        help="ldap://host:port or ldaps://host:port; repeat for fail-over",
    )
    group.add_argument(
        "--ldap-starttls", action="store_true", default=None, help="StartTLS on ldap:// URLs"
    )
    group.add_argument("--ldap-ca-cert", metavar="FILE", help="PEM CA certificates for TLS")
    group.add_argument("--ldap-bind-dn", type=_dn, metavar="DN", help="the service account")
    group.add_argument(
        "--ldap-bind-password-file", metavar="FILE", help="the service account's password"
    )
    group.add_argument("--ldap-base", type=_dn, metavar="DN", help="where accounts are searched")
    group.add_argument("--ldap-filter", metavar="FILTER", help="{account} is the name")
    group.add_argument(
        "--ldap-active-filter", metavar="FILTER", help="an account must also match it"
    )
    group.add_argument("--ldap-group-attribute", metavar="NAME", help="default memberOf")
    group.add_argument("--ldap-group-base", type=_dn, metavar="DN", help="search groups here")
    group.add_argument("--ldap-group-filter", metavar="FILTER", help="{dn} is the account's DN")
    group.add_argument("--ldap-timeout", type=_timeout, metavar="SECONDS", help="default 5")
