"""``tokend check-config``: the config directory validated the way the daemon would, rules that
never apply or overlap reported, and (with the daemon's ``--ldap-*`` options) the directory
checked."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tokend.cli.common import CommandError
from tokend.cli.directory_options import add_directory_options, ask_directory, directory_config
from tokend.cli.keys import EXPIRY_WARNING_DAYS, key_summary
from tokend.policy.files import load_policy
from tokend.policy.model import EVERY_DIRECTORY_ACCOUNT, PolicyError
from tokend.policy.report import overlap_notes

if TYPE_CHECKING:
    from tokend.login.directory import Directory, DirectoryReport


def check_config(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    config_dir = Path(args.config_dir)
    directory = directory_config(args)
    try:
        loaded = load_policy(config_dir)
    except PolicyError as e:
        raise CommandError(str(e)) from None
    for warning in loaded.warnings:
        stdout.write(f"warning: {warning}\n")
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
    key_lines = key_summary(
        Path(args.key) if args.key else None,
        Path(args.cert) if args.cert else None,
        args.allow_loose_key_permissions,
        time.time(),
    )
    stdout.writelines(line + "\n" for line in key_lines)
    if directory is not None:
        taken = policy.directory_groups
        named = sorted({dn for dns in taken.values() for dn in dns} - {EVERY_DIRECTORY_ACCOUNT})

        async def check_and_find(d: Directory) -> tuple[DirectoryReport, list[str]]:
            return await d.check(), await d.missing(named)

        report, missing = ask_directory(directory, check_and_find)
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


def register(commands: Any) -> None:
    checking = commands.add_parser(
        "check-config", help="validate the policy files; report unused and overlapping rules"
    )
    checking.add_argument("--config-dir", default="config", help="default %(default)s")
    checking.add_argument(
        "--key", help="also check this signing key (and --cert); print its type and key ids"
    )
    checking.add_argument(
        "--cert",
        help="certificate chain to check (against --key when given); print each certificate's "
        f"subject, issuer and expiry, warn {EXPIRY_WARNING_DAYS} days before it",
    )
    checking.add_argument(
        "--allow-loose-key-permissions",
        action="store_true",
        help="accept a group/other readable --key (or --ldap-bind-password-file), as the "
        "daemon's flag of that name does",
    )
    add_directory_options(checking)
    checking.set_defaults(run=check_config)
