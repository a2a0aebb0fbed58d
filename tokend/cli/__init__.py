"""The tokend tool: what an operator needs around the daemon.

hash-password makes a users.json hash, check-config validates a config directory the way the
daemon would and reports rules that never apply or overlap (and, with the daemon's --ldap-*
options, checks the directory), explain shows which rule decides a request (for a directory
account too), kid prints the key ids a registry configuration needs, dev-cert writes a
development key pair, keys rotates the signing key in a keys directory (new, activate, retire)
and prints what the registry needs to trust it (bundle, jwks), doctor checks a registry's
config.yml against tokend (would it accept the tokens issued now, under the distribution 2.x
and 3.x rules), token reads a token back in plain words and verifies it against the
certificate (token create, list, show and revoke manage access tokens), user adds, changes,
removes and lists users.json accounts in place, unlock ends a login lockout in the running
daemon, db shows and upgrades the access tokens' database.
Exit status 0 on success, 1 on a finding, 2 on a usage error, 130 when interrupted (Ctrl-C).

Plain text, no markup: the first line is what tokend --help shows.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from tokend.cli import (
    checking,
    database,
    doctor,
    explaining,
    key_rotation,
    keys,
    passwords,
    tokens,
    unlock,
    users,
)
from tokend.cli.access_tokens import access_token_parser, asks_for_access_tokens
from tokend.cli.common import CommandError, UsageError
from tokend.cli.daemon_options import settle

COMMAND_FAMILIES = (
    passwords,
    checking,
    explaining,
    keys,
    key_rotation,
    doctor,
    tokens,
    users,
    unlock,
    database,
)
"""Each module registers its commands; a new family is one module and one entry here."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokend", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in COMMAND_FAMILIES:
        family.register(commands)
    return parser


def main(
    argv: Sequence[str] | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # tokend token TOKEN reads a token back; tokend token create|list|show|revoke are the
    # access tokens' actions, parsed apart so TOKEN stays a plain positional.
    parser = access_token_parser() if asks_for_access_tokens(argv) else build_parser()
    args = parser.parse_args(argv)
    try:
        settle(args, os.environ)
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
