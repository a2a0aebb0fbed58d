"""What an operator should know about a valid policy: rules that never apply, and overlaps.

Ambiguous rules (a tie between two patterns) never get this far: loading refuses them. What is
left is worth a look but legal: a group no one belongs to, ``${account}`` rules for a user whose
name cannot be a path component, a more specific rule taking precedence over a broader one, and
a deny in a user's own rules that one of the user's groups grants anyway. A rule that holds only
from some client networks (``from``) counts wherever it holds: the report asks which rule decides
from anywhere (:data:`tokend.policy.networks.ANYWHERE`), and says where.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

from tokend.policy.model import Policy, Source, UserPolicy
from tokend.policy.networks import ANYWHERE, networks_text
from tokend.policy.rules import (
    ACCOUNT,
    Pattern,
    Rule,
    RuleSet,
    _closure,
    _step,
    _tokens,
    common_match,
    is_valid_component,
)
from tokend.policy.trusts import trusts_of
from tokend.scope import is_valid_name

MAX_OVERLAP_NOTES = 200
MAX_OVERRIDE_WARNINGS = 50
"""They are logged at every reload: a users.json that repeats one mistake for thousands of
users says so in a bounded number of lines."""
MAX_SEARCH_STATES = 20_000
"""Bounds the search for one example name; beyond it the pair is not reported."""


def unused_rule_warnings(policy: Policy) -> tuple[str, ...]:
    """Rules that can never match anything: logged at start-up and on every reload."""
    warnings: list[str] = []
    members = {group for user in policy.users.values() for group in user.groups}
    for name, group in policy.groups.items():
        taken = group.ldap_groups or group.program_labels
        if name not in members and len(group.rules) and not taken:
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


def trust_summaries(policy: Policy) -> list[str]:
    """One line per trust of issuers.json for the start-up log: what it takes, from where its
    keys come, and what it gives."""
    lines = []
    for name, trust in trusts_of(policy).items():
        keys = (
            f"keys from {trust.jwks_file}"
            if trust.jwks_file is not None
            else f"keys from {trust.jwks_uri or trust.discovery_url}"
        )
        gives = ", ".join(
            [*(f"group {group}" for group in trust.groups), f"{len(trust.rules)} rules of its own"]
        )
        lines.append(
            f"trust {name}: iss {trust.issuer}, aud {trust.audience}, {keys}; "
            f"{len(trust.conditions)} conditions; account {trust.account.text}; {gives}"
        )
    return lines


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
            only = (
                " (from its networks only; elsewhere the broader rule decides)"
                if specific.networks
                else ""
            )
            notes.append(
                f"{where}: {specific.key!r} {_actions(specific)} takes precedence over "
                f"{broad.key!r} {_actions(broad)} for names like {example!r}{only}"
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
    """What a rule does, and from where when it holds only from some networks."""
    where = " from " + networks_text(rule.networks) if rule.networks else ""
    if not rule.actions:
        return f"(denies{where})"
    return "[" + ", ".join(sorted(rule.actions)) + "]" + where


def group_override_warnings(policy: Policy) -> tuple[str, ...]:
    """Denies in a user's own rules that one of the user's groups grants anyway: a user holds
    the union of every source's most specific rule, so a deny in users.json only overrides the
    user's own broader rules and never takes away what a group grants."""
    warnings: list[str] = []
    denies_of: dict[int, list[Rule]] = {}
    grants_of: dict[int, list[tuple[Pattern, Rule]]] = {}
    found_for: dict[tuple[int, int], list[tuple[Rule, Rule, str]]] = {}
    for account, user in policy.users.items():
        if not user.groups or not user.sources:
            continue
        own = user.sources[0].rules
        denies = denies_of.get(id(own))
        if denies is None:
            denies = denies_of[id(own)] = [rule for rule in own.rules() if not rule.actions]
        if not denies:
            continue
        for group_name, group in zip(user.groups, user.sources[1:], strict=True):
            grants = grants_of.get(id(group.rules))
            if grants is None:
                grants = grants_of[id(group.rules)] = [
                    (rule.pattern, rule)
                    for rule in group.rules.rules()
                    if rule.actions and not rule.pattern.uses_account
                ]
            key = (id(own), id(group.rules))
            found = None if group.bound else found_for.get(key)
            if found is None:
                bound = [(b.pattern, b.rule) for b in group.bound if b.rule.actions]
                found = list(_overrides(own, denies, group, grants + bound))
                if not group.bound:
                    found_for[key] = found
            for deny, grant, example in found:
                if len(warnings) >= MAX_OVERRIDE_WARNINGS:
                    warnings.append(
                        f"… more group grants over users' denies not shown "
                        f"(limit {MAX_OVERRIDE_WARNINGS})"
                    )
                    return tuple(warnings)
                warnings.append(
                    f"users.json {account}: own rule {deny.key!r} {_actions(deny)} does not "
                    f"take away group {group_name}'s {grant.key!r} {_actions(grant)} for names "
                    f"like {example!r}: a user holds the union of the user's own rules and every "
                    "group's, so a deny in users.json only overrides the user's own broader "
                    f"rules; deny it in group {group_name} (for every member), or take {account} "
                    f"out of {group_name} and copy to {account} the rules of {group_name} that "
                    f"{account} should keep"
                )
    return tuple(warnings)


def _overrides(
    own: RuleSet, denies: list[Rule], group: Source, grants: list[tuple[Pattern, Rule]]
) -> Iterator[tuple[Rule, Rule, str]]:
    """(own deny, group rule, example) for each deny one of ``grants`` (the group's rules that
    allow something) overrides: the example is a name the deny decides among the user's rules
    and the grant among the group's, checked with the lookup a token request makes."""
    for deny in denies:
        for pattern, grant in grants:
            if not _prefixes_meet(deny.pattern, pattern):
                continue  # the common case, and cheap: the search below is not
            own_patterns = [rule.pattern for rule in own.rules()]
            group_patterns = [
                rule.pattern for rule in group.rules.rules() if not rule.pattern.uses_account
            ] + [bound.pattern for bound in group.bound]
            example = _example(
                (deny.pattern, pattern),
                _more_specific(own_patterns, deny.pattern, pattern)
                + _more_specific(group_patterns, pattern, deny.pattern),
            )
            if (
                example is not None
                and own.match(example, (), ANYWHERE) is deny
                and group.rules.match(example, group.bound, ANYWHERE) is grant
            ):
                yield deny, grant, example
                break


def _prefixes_meet(first: Pattern, second: Pattern) -> bool:
    """Whether two patterns could match one name, as far as their literal prefixes tell."""
    return first.prefix.startswith(second.prefix) or second.prefix.startswith(first.prefix)


def _more_specific(patterns: list[Pattern], rule: Pattern, other: Pattern) -> list[Pattern]:
    """The patterns of ``rule``'s set that would decide instead of it for some name that both
    ``rule`` and ``other`` match: an exact name, or a pattern with a longer literal prefix."""
    if rule.exact:
        return []
    found: list[Pattern] = []
    for pattern in patterns:
        if pattern.exact:
            if rule.matches(pattern.key) and other.matches(pattern.key):
                found.append(pattern)
        elif (
            len(pattern.prefix) > len(rule.prefix)
            and pattern.prefix.startswith(rule.prefix)
            and _prefixes_meet(pattern, other)
        ):
            found.append(pattern)
    return found


def _example(matching: Sequence[Pattern], avoiding: Sequence[Pattern]) -> str | None:
    """A shortest repository name every pattern of ``matching`` matches and none of
    ``avoiding`` does, or None.

    The search of :func:`tokend.policy.rules.common_match` over more automata: its state sets
    are deterministic, so "matches none of" is a plain test on the final states. Letters and
    digits come first in the alphabet, so wildcards take them rather than a separator.
    """
    automata = [_tokens(pattern) for pattern in (*matching, *avoiding)]
    wanted = len(matching)
    literals = {token for tokens in automata for token in tokens if isinstance(token, str)}
    other = next((c for c in "abcdefghijklmnopqrstuvwxyz0123456789" if c not in literals), None)
    characters = literals - {"/"} | ({other} if other else set())
    alphabet = [*sorted(characters, key=lambda c: (not c.isalnum(), c)), "/"]
    start = tuple(_closure(tokens, [0]) for tokens in automata)
    seen = {(start, True)}
    queue: deque[tuple[tuple[frozenset[int], ...], bool, str]] = deque([(start, True, "")])
    while queue:
        states, at_boundary, text = queue.popleft()
        if (
            not at_boundary
            and all(len(automata[i]) in states[i] for i in range(wanted))
            and not any(len(automata[i]) in states[i] for i in range(wanted, len(automata)))
            and is_valid_name(text)
        ):
            return text
        for char in alphabet:
            if char == "/" and at_boundary:
                continue
            following = tuple(
                _step(tokens, state, char) for tokens, state in zip(automata, states, strict=True)
            )
            key = (following, char == "/")
            if all(following[:wanted]) and key not in seen:
                if len(seen) >= MAX_SEARCH_STATES:
                    return None
                seen.add(key)
                queue.append((*key, text + char))
    return None
