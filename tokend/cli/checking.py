"""``tokend check-config``: the config directory validated the way the daemon would, rules that
never apply or overlap reported, each trust's issuer keys fetched and described, and (with the
daemon's ``--ldap-*`` options) the directory checked."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tokend.cli.common import CommandError, UsageError
from tokend.cli.daemon_options import add_config_dir, add_option
from tokend.cli.directory_options import add_directory_options, ask_directory, directory_config
from tokend.cli.keys import EXPIRY_WARNING_DAYS, key_summary, keys_dir_summary
from tokend.cli.trust_keys import on_reactor, trust_lines
from tokend.client_address import parse_networks
from tokend.policy.examples import example_accounts, example_accounts_error
from tokend.policy.files import load_policy
from tokend.policy.model import EVERY_DIRECTORY_ACCOUNT, Policy, PolicyError
from tokend.policy.report import overlap_notes
from tokend.proxy_exposure import proxy_exposure
from tokend.settings.options import DAEMON

if TYPE_CHECKING:
    from tokend.login.ldap.client import Directory
    from tokend.login.ldap.report import DirectoryReport


def check_config(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    config_dir = Path(args.config_dir)
    directory = directory_config(args, stdout)
    try:
        loaded = load_policy(config_dir)
    except PolicyError as e:
        raise CommandError(str(e)) from None
    for warning in loaded.warnings:
        stdout.write(f"warning: {warning}\n")
    examples = example_accounts(loaded.policy)
    if examples:
        stdout.write(f"warning: {example_accounts_error(config_dir, examples)}\n")
    exposure = _proxy_exposure(args)
    if exposure is not None:
        stdout.write(f"warning: {exposure}\n")
    policy = loaded.policy
    for note in overlap_notes(policy):
        stdout.write(f"overlap: {note}\n")
    anonymous = policy.anonymous
    robots = sum(1 for user in policy.users.values() if user.robot)
    robots_shown = f" ({robots} robot{'' if robots == 1 else 's'}: access tokens only)"
    stdout.write(
        f"{config_dir}: policy is valid: {len(policy.users)} users"
        f"{robots_shown if robots else ''}, {len(policy.groups)} groups, "
        f"anonymous {'blacklist' if anonymous.blacklist else 'whitelist'} of "
        f"{len(anonymous.repositories)} names and patterns, anonymous catalog "
        f"{'on' if anonymous.catalog else 'off'}\n"
    )
    if args.keys_dir:
        if args.key or args.cert:
            raise UsageError("--keys-dir replaces --key and --cert; give one or the other")
        key_lines = keys_dir_summary(
            Path(args.keys_dir), args.allow_loose_key_permissions, time.time()
        )
    else:
        key_lines = key_summary(
            Path(args.key) if args.key else None,
            Path(args.cert) if args.cert else None,
            args.allow_loose_key_permissions,
            time.time(),
        )
    stdout.writelines(line + "\n" for line in key_lines)
    trusts: list[str] = []
    if directory is not None:
        taken = policy.directory_groups
        named = sorted({dn for dns in taken.values() for dn in dns} - {EVERY_DIRECTORY_ACCOUNT})

        async def check_and_find(d: Directory) -> tuple[DirectoryReport, list[str], list[str]]:
            # One reactor run per process: the trusts' keys are fetched in the same one.
            report = await d.check()
            missing = await d.missing(named)
            return report, missing, await _trust_lines(policy)

        report, missing, trusts = ask_directory(directory, check_and_find)
        for line in report.lines(args.max_failures_per_account, args.failure_window):
            stdout.write(line + "\n")
        stdout.write(_directory_groups_taken(taken))
        for dn in missing:
            users = ", ".join(sorted(name for name, dns in taken.items() if dn in dns))
            stdout.write(
                f"warning: directory: ldap_groups {dn} (group {users}) is no entry the service "
                "account can read: no account will match it\n"
            )
    elif policy.trusts:
        trusts = on_reactor(lambda reactor: trust_lines(policy, reactor))
    stdout.writelines(line + "\n" for line in trusts)


async def _trust_lines(policy: Policy) -> list[str]:
    if not policy.trusts:
        return []
    from twisted.internet import reactor

    return await trust_lines(policy, reactor)


def _proxy_exposure(args: argparse.Namespace) -> str | None:
    """The daemon's start-up warning for --trusted-proxy ranges on a listener bound to every
    address, when both options are given as the daemon gets them."""
    source = args.daemon.source
    try:
        trusted = parse_networks(args.trusted_proxy)
    except ValueError as e:
        raise UsageError(f"{source('trusted-proxy')} {e}") from None
    if not args.listen:
        return None
    return proxy_exposure(args.listen, trusted, source("listen"), source("trusted-proxy"))


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
        "check-config",
        help="validate the policy files; report unused and overlapping rules; fetch each "
        "trust's issuer keys",
    )
    add_config_dir(checking)
    add_option(
        checking,
        DAEMON["key"],
        "also check this signing key (and --cert); print its type and key ids",
        default=None,
    )
    add_option(
        checking,
        DAEMON["cert"],
        "certificate chain to check (against --key when given); print each certificate's "
        f"subject, issuer and expiry, warn {EXPIRY_WARNING_DAYS} days before it",
        default=None,
    )
    add_option(
        checking,
        DAEMON["keys-dir"],
        "also check this keys directory as the daemon loads it (in place of --key and --cert); "
        "print each key's state, type, key ids and certificate expiry",
    )
    add_option(
        checking,
        DAEMON["allow-loose-key-permissions"],
        "accept a group/other readable --key (or --ldap-bind-password-file), as the "
        "daemon's flag of that name does",
    )
    add_option(
        checking,
        dataclasses.replace(DAEMON["listen"], default=None, metavar="ENDPOINT"),
        "the daemon's --listen, to check with --trusted-proxy",
    )
    add_option(
        checking, DAEMON["trusted-proxy"], "the daemon's --trusted-proxy; repeat for several"
    )
    add_directory_options(checking)
    limits = checking.add_argument_group(
        "login limits", "the daemon's, set against the directory's lockout policy"
    )
    for name in ("max-failures-per-account", "failure-window"):
        add_option(limits, DAEMON[name], f"default {DAEMON[name].default}")
    checking.set_defaults(run=check_config)
