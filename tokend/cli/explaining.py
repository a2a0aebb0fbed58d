"""``tokend explain``: what a token would hold for each scope, and the rule that decides it (for
a directory account too, a platform's token under a trust with ``--trust``, and for a client at
one address with ``--from``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tokend.cli.common import CommandError, UsageError
from tokend.cli.daemon_options import add_config_dir, add_option
from tokend.cli.directory_options import (
    add_directory_options,
    ask_directory,
    directory_config,
    normalised_dn,
)
from tokend.cli.trust_explaining import identity_tokens, trust_identity
from tokend.client_address import IPAddress, client_ip
from tokend.login.identity import UnfitName, directory_spelling
from tokend.policy.files import load_policy
from tokend.policy.model import ACTIONS, Decision, Policy, PolicyError, UserPolicy
from tokend.policy.networks import networks_text
from tokend.policy.rules import Rule
from tokend.policy.trusts import trusts_of
from tokend.scope import ScopeError, parse_scopes
from tokend.settings.options import DAEMON
from tokend.signing.tokens import rfc3339

if TYPE_CHECKING:
    from tokend.login.ldap.config import DirectoryConfig


def explain(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    """For each scope: what a token would hold, and the rule of each source that decided it."""
    try:
        policy = load_policy(Path(args.config_dir)).policy
    except PolicyError as e:
        raise CommandError(str(e)) from None
    if args.trust is not None:
        _explain_trust(args, policy, stdout)
        return
    if args.claims is not None:
        raise UsageError("--claims FILE goes with --trust NAME")
    account: str | None = None if args.anonymous else args.user
    texts = args.scopes
    if args.anonymous and args.user is not None:
        texts = [args.user, *texts]  # with --anonymous every argument is a scope
    elif not args.anonymous and args.user is None:
        raise CommandError("name a USER, or pass --anonymous")
    url_given = args.daemon.source("ldap-url") == "--ldap-url" and bool(args.ldap_url)
    if args.anonymous and (args.ldap_group or url_given):
        raise UsageError(
            "--anonymous explains clients without credentials; drop the --ldap-* options"
        )
    if args.ldap_group and url_given:
        raise UsageError(
            "--ldap-group explains without asking the directory, --ldap-url asks it: "
            "give one of them"
        )
    # The daemon's TOKEND_LDAP_URL is not asked when the question needs no directory.
    unasked = bool(args.ldap_url) and not url_given and (args.anonymous or args.ldap_group)
    directory = None if unasked else directory_config(args, stdout)
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
        try:
            spelled = directory_spelling(account, policy)
        except UnfitName as e:
            raise CommandError(
                f"{account!r} is {e}: a directory would match it to another spelling, so a "
                "login as it is refused before the directory is asked"
            ) from None
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
    address: IPAddress | None = args.address
    if address is not None:
        anonymous = " (repositories.json rules hold from every address)" if account is None else ""
        stdout.write(f"client address: {address}{anonymous}\n")
    for scope in scopes:
        granted = policy.grant(account, scope, member, address)
        decision = policy.decide(account, scope.type, scope.name, member, address)
        stdout.write(
            f"{scope}  ->  {who} gets {','.join(granted) or 'nothing'} (holds {_held(decision)})\n"
        )
        for line in _reasons(decision, address):
            stdout.write(f"    {line}\n")
    if account is None:
        return
    if member is None and policy.users[account].robot:
        stdout.write(
            f"robot: {account!r} has no pass_hash and logs in only with its access tokens, "
            "which get these rights within each token's cap\n"
        )
    elif member is None:
        stdout.write(_identity_tokens(account, policy.users[account].tokens_valid_after))
    else:
        stdout.write(_directory_identity_tokens(account))


def _explain_trust(args: argparse.Namespace, policy: Policy, stdout: TextIO) -> None:
    """``--trust NAME --claims FILE``: every argument is a scope."""
    if args.claims is None:
        raise UsageError("--trust needs --claims FILE (a JSON object: a token's claims)")
    if args.anonymous or args.ldap_group:
        raise UsageError("--trust explains a platform's token; drop --anonymous and --ldap-group")
    try:
        scopes = parse_scopes([*([args.user] if args.user is not None else []), *args.scopes])
    except ScopeError as e:
        raise CommandError(str(e)) from None
    who, member = trust_identity(policy, args.trust, args.claims, stdout)
    address: IPAddress | None = args.address
    if address is not None:
        stdout.write(f"client address: {address}\n")
    for scope in scopes:
        granted = policy.grant(who.account, scope, member, address)
        decision = policy.decide(who.account, scope.type, scope.name, member, address)
        stdout.write(
            f"{scope}  ->  {who.account!r} gets {','.join(granted) or 'nothing'} "
            f"(holds {_held(decision)})\n"
        )
        for line in _reasons(decision, address):
            stdout.write(f"    {line}\n")
    stdout.write(identity_tokens(trusts_of(policy)[args.trust]))


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
    found = ask_directory(directory, lambda d: d.lookup(account))
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
        "its entry (DN, entryUUID or objectGUID, password-changed time); every refresh looks "
        "the account up again (remembered for --credential-cache-ttl) and gets the rights its "
        "groups give then; it is refused once the account is gone from the search base, has "
        "another DN, is locked or disabled, or its entry or password changed\n"
    )


def _in_order(actions: frozenset[str]) -> str:
    """Actions in the order tokens list them (pull, push, delete)."""
    return ",".join(sorted(actions, key=lambda a: ACTIONS.index(a) if a in ACTIONS else -1))


def _held(decision: Decision) -> str:
    return _in_order(decision.actions) or "nothing"


def _reasons(decision: Decision, address: IPAddress | None) -> list[str]:
    """Per source: the rules passed over for the address (more specific first), then the one
    that decides."""
    lines = []
    for match in decision.matches:
        for rule in match.skipped:
            why = (
                "it needs a client address; give --from ADDRESS"
                if address is None
                else f"{address} is outside its networks"
            )
            lines.append(f"{match.source}: {rule.key!r} ({_what(rule)}) passed over: {why}")
        if match.rule is None:
            lines.append(f"{match.source}: no rule matches")
        else:
            lines.append(f"{match.source}: {match.rule.key!r} {_what(match.rule)}")
    lines.append(decision.note)
    return lines


def _what(rule: Rule) -> str:
    """What a rule does, and from where if not from everywhere."""
    does = f"allows {_in_order(rule.actions)}" if rule.actions else "denies (no actions)"
    if rule.networks:
        does += " from " + networks_text(rule.networks)
    return does


def client_address(text: str) -> IPAddress:
    """``--from``: one address, read as the daemon reads a client's (IPv4-mapped is IPv4)."""
    address = client_ip(text)
    if address is None or text.strip() != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address")
    return address


def register(commands: Any) -> None:
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
    add_config_dir(explaining)
    explaining.add_argument(
        "--from",
        dest="address",
        type=client_address,
        metavar="ADDRESS",
        help='explain for a client at this IP address (rules with "from" hold only from '
        "their networks); without it, no such rule applies",
    )
    explaining.add_argument(
        "--trust",
        metavar="NAME",
        help="explain a platform's token (CI job, pod) under this trust of issuers.json; every "
        "argument is then a scope",
    )
    explaining.add_argument(
        "--claims",
        metavar="FILE",
        help="with --trust: a JSON file holding the token's claims (its decoded payload)",
    )
    explaining.add_argument(
        "--ldap-group",
        action="append",
        default=[],
        type=normalised_dn,
        metavar="DN",
        help="explain USER (not in users.json) as a directory account in this group, without "
        "asking the directory; repeatable",
    )
    add_option(
        explaining,
        DAEMON["allow-loose-key-permissions"],
        "accept a group/other readable --ldap-bind-password-file, as the daemon does",
    )
    add_directory_options(explaining)
    explaining.set_defaults(run=explain)
