"""The daemon's ``--ldap-*`` options as the tool takes them (the daemon's declarations and
``TOKEND_LDAP_*`` variables, checked by the daemon's function), and one question asked of the
directory with them (``check-config`` and ``explain``)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from tokend.cli.common import CommandError, UsageError
from tokend.cli.daemon_options import add_option
from tokend.dn import DNError, normalise_dn
from tokend.login.ldap.options import DIRECTORY_OPTIONS, ignored
from tokend.option_table import OptionError, UnreadableSecret

if TYPE_CHECKING:
    # Imported when a command needs the directory: ldaptor loads and installs the global
    # reactor, which hash-password, kid and a directory-less check-config do without.
    from tokend.login.ldap.client import Directory
    from tokend.login.ldap.config import DirectoryConfig

T = TypeVar("T")


def directory_config(args: argparse.Namespace, stdout: TextIO) -> DirectoryConfig | None:
    """The directory the daemon would ask, from the daemon's own --ldap-* options and
    variables; None without --ldap-url, when the others are ignored with the daemon's
    warning."""
    options = args.daemon
    if not options["ldap-url"]:
        warning = ignored(options)
        if warning is not None:
            stdout.write(f"warning: {warning}\n")
        return None
    from tokend.login.ldap.config import directory_config as checked

    try:
        return checked(options, allow_loose=bool(args.allow_loose_key_permissions))
    except UnreadableSecret as e:
        raise CommandError(str(e)) from None
    except OptionError as e:
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


def normalised_dn(value: str) -> str:
    try:
        return normalise_dn(value)
    except DNError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a DN: {e}") from None


def add_directory_options(parser: argparse.ArgumentParser) -> None:
    """The daemon's --ldap-* options: its names, help, defaults and variables."""
    group = parser.add_argument_group(
        "directory",
        "the daemon's --ldap-* options and TOKEND_LDAP_* variables (defaults: the daemon's); "
        "see docs/directory.md",
    )
    for option in DIRECTORY_OPTIONS:
        add_option(group, option)
