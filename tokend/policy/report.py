"""What an operator should know about a valid policy: rules that never apply, and overlaps.

Ambiguous rules (a tie between two patterns) never get this far: loading refuses them. What is
left is worth a look but legal: a group no one belongs to, ``${account}`` rules for a user whose
name cannot be a path component, and a more specific rule taking precedence over a broader one.
"""

from __future__ import annotations

from collections.abc import Iterator

from tokend.policy.model import Policy, UserPolicy
from tokend.policy.rules import ACCOUNT, Rule, RuleSet, common_match, is_valid_component

MAX_OVERLAP_NOTES = 200


def unused_rule_warnings(policy: Policy) -> tuple[str, ...]:
    """Rules that can never match anything: logged at start-up and on every reload."""
    warnings: list[str] = []
    members = {group for user in policy.users.values() for group in user.groups}
    for name, group in policy.groups.items():
        if name not in members and len(group.rules) and not group.ldap_groups:
            warnings.append(
                f"groups.json: {name}: no user is a member and it names no ldap_groups, "
                "its rules never apply"
            )
    for account, user in policy.users.items():
        if is_valid_component(account):
            continue
        culprits = [f"users.json {account}"] if _own_uses_account(user) else []
        culprits += [
            f"group {group}" for group in user.groups if policy.groups[group].rules.templates
        ]
        if culprits:
            warnings.append(
                f"{ACCOUNT} rules of {', '.join(culprits)} never match for {account!r}: "
                "the name is not a repository path component"
            )
    return tuple(warnings)


def hash_cost_warnings(policy: Policy, file: str = "users.json") -> tuple[str, ...]:
    """Mixed bcrypt costs: the dummy check of an unknown name follows the mix, but the mix
    itself can be read from response times, and cheaper hashes are cheaper to crack."""
    if len(policy.hash_costs) < 2:
        return ()
    counts = ", ".join(
        f"{cost}: {users} user{'' if users == 1 else 's'}" for cost, users in policy.hash_costs
    )
    return (
        f"{file}: bcrypt costs are mixed ({counts}): unknown names are checked at a cost drawn "
        "from this mix, but re-hashing every password at one cost (`tokend hash-password "
        "--cost N`) makes all logins take the same time",
    )


def _own_uses_account(user: UserPolicy) -> bool:
    return any(ACCOUNT in key for key in user.repositories)


def overlap_notes(policy: Policy) -> list[str]:
    """Pairs of rules in one set where the more specific one decides some names."""
    notes: list[str] = []
    seen: set[int] = set()
    for where, rule_set in _rule_sets(policy):
        if id(rule_set) in seen:
            continue
        seen.add(id(rule_set))
        for specific, broad, example in _shadowing(rule_set):
            notes.append(
                f"{where}: {specific.key!r} {_actions(specific)} takes precedence over "
                f"{broad.key!r} {_actions(broad)} for names like {example!r}"
            )
            if len(notes) >= MAX_OVERLAP_NOTES:
                notes.append(f"… more overlaps not shown (limit {MAX_OVERLAP_NOTES})")
                return notes
    return notes


def _rule_sets(policy: Policy) -> Iterator[tuple[str, RuleSet]]:
    for name, group in policy.groups.items():
        yield f"groups.json {name}", group.rules
    for account, user in policy.users.items():
        if user.sources:
            yield f"users.json {account}", user.sources[0].rules


def _shadowing(rule_set: RuleSet) -> Iterator[tuple[Rule, Rule, str]]:
    """(more specific, broader, example name) for every overlapping pair with a longer prefix.

    Two rules can only share a name if one literal prefix starts with the other, which keeps
    this far from comparing every pair.
    """
    patterns = [rule for bucket in rule_set.by_prefix.values() for rule in bucket]
    patterns.sort(key=lambda rule: len(rule.pattern.prefix))
    for rule in rule_set.exact.values():
        for broad in patterns:
            if broad.pattern.matches(rule.key):
                yield rule, broad, rule.key
    for index, broad in enumerate(patterns):
        for specific in patterns[index + 1 :]:
            if len(specific.pattern.prefix) == len(broad.pattern.prefix):
                continue
            if not specific.pattern.prefix.startswith(broad.pattern.prefix):
                continue
            example = common_match(specific.pattern, broad.pattern)
            if example is not None:
                yield specific, broad, example


def _actions(rule: Rule) -> str:
    if not rule.actions:
        return "(denies)"
    return "[" + ", ".join(sorted(rule.actions)) + "]"
