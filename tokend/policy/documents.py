"""The policy files' JSON documents parsed into policy values, validated whole.

users.json, groups.json and repositories.json each become values of tokend.policy.model; any
error is a PolicyError naming the file and the path inside it, with the bad value cut short.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

from tokend.dn import DNError, normalise_dn
from tokend.policy.model import (
    ACTIONS,
    ALL_ACTIONS,
    EVERY_DIRECTORY_ACCOUNT,
    MAX_BCRYPT_COST,
    MIN_BCRYPT_COST,
    OWN_RULES,
    AnonymousPolicy,
    GroupPolicy,
    PolicyError,
    Source,
    UserPolicy,
    may_list_catalog,
)
from tokend.policy.networks import RULE_KEYS, FromNetworks, NetworkError, WrittenRule, parse_from
from tokend.policy.rules import (
    ACCOUNT,
    AmbiguousRules,
    Pattern,
    PatternError,
    Rule,
    RuleSet,
    bind,
    bind_account,
    build_rule_set,
    compile_pattern,
)

USER_KEYS = ("pass_hash", "repositories", "groups", "catalog", "tokens_valid_after")
GROUP_KEYS = ("repositories", "catalog", "ldap_groups", "program_labels", "admin")
REPOSITORIES_KEYS = ("blacklist", "repositories", "catalog")
"""repositories.json's keys; its old misspelling "backlist" is read too, never suggested."""

_BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$([./A-Za-z0-9]{22})[./A-Za-z0-9]{31}")
_SALT_ENDS = ".Oeu"
"""The 22-character salt encodes 16 bytes, so its last character carries 2 bits and the 4 low
bits must be zero: bcrypt refuses any other last character ("Invalid salt"). The 31-character
hash part needs no such check: bcrypt compares it, so a stray last character only never
matches."""
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


MAX_SHOWN_CHARS = 60


def shown(value: object) -> str:
    """A bad value as JSON for an error message, cut short: it ends up in the log and /healthz."""
    try:
        text = json.dumps(value)
    except (RecursionError, TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


def json_path(*keys: str | int) -> str:
    """Render a path inside a JSON document the way error messages show it."""
    rendered = ""
    for key in keys:
        if isinstance(key, int):
            rendered += f"[{key}]"
        elif _PLAIN_KEY.fullmatch(key):
            rendered += f".{key}" if rendered else key
        else:
            rendered += f"[{shown(key)}]"
    return rendered


def unknown_key(key: str, known: tuple[str, ...]) -> str:
    """Why a key is refused, with the known key it most looks like (a typo is the usual cause),
    or every known key when none is close."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key {shown(key)} (did you mean {shown(close[0])}?)"
    return f"unknown key {shown(key)} (known keys: {', '.join(map(shown, known))})"


def _check_name(name: str, file: str, what: str) -> None:
    if not name or len(name) > 255 or ":" in name or not name.isprintable():
        raise PolicyError(
            file, json_path(name), f"{what} names must be 1-255 printable characters, no ':'"
        )


def _written_rules(rules: object, file: str, where: tuple[str, ...]) -> dict[str, WrittenRule]:
    """Validate a rule map: every key compiles, every action list is known, every network
    parses."""
    if not isinstance(rules, dict):
        raise PolicyError(file, json_path(*where), "expected an object")
    written: dict[str, WrittenRule] = {}
    for key, value in rules.items():
        try:
            compile_pattern(key)
        except PatternError as e:
            raise PolicyError(file, json_path(*where, key), str(e)) from None
        if isinstance(value, dict):
            written[key] = _from_networks(value, file, (*where, key))
        else:
            written[key] = _actions(value, file, where, key)
    return written


def _from_networks(value: dict[str, object], file: str, where: tuple[str, ...]) -> FromNetworks:
    """``{"actions": [...], "from": [networks]}``: both keys are required; a rule that holds
    everywhere is written as its list of actions (tokend.policy.networks reads the list)."""
    for key in value:
        if key not in RULE_KEYS:
            raise PolicyError(file, json_path(*where, key), unknown_key(key, RULE_KEYS))
    if "actions" not in value:
        raise PolicyError(
            file,
            json_path(*where),
            'a rule written as an object needs "actions" (e.g. ["pull", "push"])',
        )
    if "from" not in value:
        raise PolicyError(
            file,
            json_path(*where),
            'a rule written as an object needs "from" (client networks, e.g. ["10.0.0.0/8"]); '
            "a rule that holds from everywhere is written as its list of actions",
        )
    actions = _actions(value["actions"], file, where, "actions")
    try:
        networks = parse_from(value["from"])
    except NetworkError as e:
        place: tuple[str | int, ...] = (*where, "from")
        if e.index is not None:
            place += (e.index,)
        raise PolicyError(file, json_path(*place), str(e)) from None
    return FromNetworks(actions, networks)


def _rule(pattern: Pattern, value: WrittenRule) -> Rule:
    if isinstance(value, FromNetworks):
        return Rule(pattern, value.actions, value.networks)
    return Rule(pattern, value)


def _compiled(written: Mapping[str, WrittenRule]) -> list[Rule]:
    return [_rule(compile_pattern(key), value) for key, value in written.items()]


def _rule_set(compiled: list[Rule], file: str, where: tuple[str, ...]) -> RuleSet:
    try:
        return build_rule_set(compiled)
    except AmbiguousRules as e:
        raise PolicyError(file, json_path(*where, e.second), str(e)) from None


def groups_from_document(document: object, file: str) -> Mapping[str, GroupPolicy]:
    """Validate a parsed groups.json: group name -> repository rules (and catalog)."""
    if not isinstance(document, dict):
        raise PolicyError(file, "", "expected an object mapping group names to entries")
    groups: dict[str, GroupPolicy] = {}
    for name, entry in document.items():
        _check_name(name, file, "group")
        if not isinstance(entry, dict):
            raise PolicyError(file, json_path(name), "expected an object")
        for key in entry:
            if key not in GROUP_KEYS:
                raise PolicyError(file, json_path(name, key), unknown_key(key, GROUP_KEYS))
        written = _written_rules(entry.get("repositories", {}), file, (name, "repositories"))
        catalog = _optional_bool(entry, "catalog", file, (name,))
        rules = _rule_set(_compiled(written), file, (name, "repositories"))
        ldap_groups = _ldap_groups(entry.get("ldap_groups", []), file, name)
        labels = _program_labels(entry.get("program_labels", {}), file, name)
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):  # null too: who may manage every token is no default
            raise PolicyError(file, json_path(name, "admin"), "expected true or false")
        groups[name] = GroupPolicy(
            MappingProxyType(written),
            catalog,
            Source(f"group {name}", rules),
            ldap_groups,
            labels,
            admin=admin,
        )
    return MappingProxyType(groups)


def _ldap_groups(value: object, file: str, group: str) -> frozenset[str]:
    """Directory group DNs, normalised so that any spelling the directory answers with
    matches; ``["*"]`` alone stands for every directory account."""
    if not isinstance(value, list):
        raise PolicyError(file, json_path(group, "ldap_groups"), "expected a list of group DNs")
    dns: set[str] = set()
    for index, dn in enumerate(value):
        where = json_path(group, "ldap_groups", index)
        if not isinstance(dn, str):
            raise PolicyError(file, where, f"expected a DN string, not {shown(dn)}")
        if dn == EVERY_DIRECTORY_ACCOUNT:
            if len(value) > 1:
                raise PolicyError(file, where, '"*" (every directory account) stands alone')
            return frozenset({EVERY_DIRECTORY_ACCOUNT})
        try:
            dns.add(normalise_dn(dn))
        except DNError as e:
            raise PolicyError(file, where, f"not a DN: {e}") from None
    return frozenset(dns)


def _program_labels(value: object, file: str, group: str) -> Mapping[str, frozenset[str]]:
    """Label -> the values that make an account the program answered for a member."""
    if not isinstance(value, dict):
        raise PolicyError(
            file,
            json_path(group, "program_labels"),
            "expected an object mapping label names to lists of values",
        )
    labels: dict[str, frozenset[str]] = {}
    for label, values in value.items():
        where = (group, "program_labels", label)
        if not label:
            raise PolicyError(file, json_path(*where), "a label name must not be empty")
        if not isinstance(values, list):
            raise PolicyError(file, json_path(*where), "expected a list of label values")
        for index, item in enumerate(values):
            if not isinstance(item, str) or not item:
                raise PolicyError(
                    file,
                    json_path(*where, index),
                    f"expected a non-empty string, not {shown(item)}",
                )
        labels[label] = frozenset(values)
    return MappingProxyType(labels)


def users_from_document(
    document: object, file: str, groups: Mapping[str, GroupPolicy] | None = None
) -> Mapping[str, UserPolicy]:
    """Validate a parsed users.json; unknown keys are errors so a typo cannot change policy."""
    if not isinstance(document, dict):
        raise PolicyError(file, "", "expected an object mapping user names to entries")
    users: dict[str, UserPolicy] = {}
    shared: SharedRules = {}
    for user, entry in document.items():
        _check_name(user, file, "user")
        users[user] = _user_from_entry(entry, file, user, groups or {}, shared)
    return MappingProxyType(users)


def _user_from_entry(
    entry: object,
    file: str,
    user: str,
    groups: Mapping[str, GroupPolicy],
    shared: SharedRules,
) -> UserPolicy:
    if not isinstance(entry, dict):
        raise PolicyError(file, json_path(user), "expected an object")
    for key in entry:
        if key not in USER_KEYS:
            raise PolicyError(file, json_path(user, key), unknown_key(key, USER_KEYS))
    written_hash = entry.get("pass_hash")
    pass_hash = "" if written_hash is None else _checked_hash(written_hash, file, user)
    written, own = _own_rules(entry.get("repositories", {}), file, user, shared)
    sources = [own]
    member_of = _group_list(entry.get("groups", []), file, user, groups)
    for index, group_name in enumerate(member_of):
        group = groups[group_name]
        try:
            bound = bind(group.rules, user)
        except AmbiguousRules as e:
            raise PolicyError(
                file, json_path(user, "groups", index), f"in group {group_name!r} for {user!r}: {e}"
            ) from None
        sources.append(Source(group.source.name, group.rules, bound) if bound else group.source)
    catalog = _optional_bool(entry, "catalog", file, (user,))
    return UserPolicy(
        pass_hash.encode("ascii"),
        written,
        tuple(member_of),
        catalog,
        tuple(sources),
        may_list_catalog(catalog, [groups[g].catalog for g in member_of]),
        tokens_valid_after=_optional_time(entry, "tokens_valid_after", file, (user,)),
    )


def _checked_hash(pass_hash: object, file: str, user: str) -> str:
    """A hash bcrypt accepts, checked by its form alone: no bcrypt call per user at load, and
    no hash that loads only to make bcrypt raise at login."""
    match = _BCRYPT_HASH.fullmatch(pass_hash) if isinstance(pass_hash, str) else None
    if match is None:
        raise PolicyError(
            file,
            json_path(user, "pass_hash"),
            "expected a bcrypt hash ($2a$, $2b$ or $2y$); make one with `tokend hash-password`",
        )
    cost = int(match.group(1))
    if not MIN_BCRYPT_COST <= cost <= MAX_BCRYPT_COST:
        raise PolicyError(
            file,
            json_path(user, "pass_hash"),
            f"bcrypt cost {cost} out of range ({MIN_BCRYPT_COST}-{MAX_BCRYPT_COST})",
        )
    if match.group(2)[-1] not in _SALT_ENDS:
        raise PolicyError(
            file,
            json_path(user, "pass_hash"),
            f"not a valid bcrypt salt: its 22nd character must be one of {' '.join(_SALT_ENDS)}"
            " (bcrypt refuses any other); make a new hash with `tokend hash-password`",
        )
    return match.group(0)


SharedRules = dict[tuple[tuple[str, WrittenRule], ...], tuple[Mapping[str, WrittenRule], Source]]


def _own_rules(
    rules: object, file: str, user: str, shared: SharedRules
) -> tuple[Mapping[str, WrittenRule], Source]:
    """A user's own rules; ``${account}`` is their own name. Identical rule maps share one
    compiled set, so 100,000 users with the same rights cost one set, not 100,000."""
    where = (user, "repositories")
    written = _written_rules(rules, file, where)
    if any(ACCOUNT in key for key in written):
        compiled: list[Rule] = []
        for key, value in written.items():
            if ACCOUNT in key:
                pattern = bind_account(key, user)
                if pattern is None:
                    continue  # the user name is no path component: the rule never matches
                compiled.append(_rule(pattern, value))
            else:
                compiled.append(_rule(compile_pattern(key), value))
        return MappingProxyType(written), Source(OWN_RULES, _rule_set(compiled, file, where))
    signature = tuple(written.items())
    cached = shared.get(signature)
    if cached is None:
        rule_set = _rule_set(_compiled(written), file, where)
        cached = shared[signature] = (MappingProxyType(written), Source(OWN_RULES, rule_set))
    return cached


def _group_list(
    value: object, file: str, user: str, groups: Mapping[str, GroupPolicy]
) -> list[str]:
    if not isinstance(value, list):
        raise PolicyError(file, json_path(user, "groups"), "expected a list of group names")
    names: list[str] = []
    for index, name in enumerate(value):
        if not isinstance(name, str) or name not in groups:
            raise PolicyError(
                file,
                json_path(user, "groups", index),
                f"no group {shown(name)} in groups.json",
            )
        if name not in names:
            names.append(name)
    return names


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)")


def _optional_time(
    entry: dict[str, object], key: str, file: str, where: tuple[str, ...]
) -> float | None:
    """An RFC 3339 date-time as a POSIX time; the offset (``Z`` or ``±hh:mm``) is required, so
    the moment never depends on the server's time zone."""
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        try:
            return datetime.fromisoformat(value.upper()).timestamp()
        except ValueError:
            pass
    raise PolicyError(
        file,
        json_path(*where, key),
        f'expected an RFC 3339 time such as "2025-06-30T12:00:00Z", not {shown(value)}',
    )


def _optional_bool(
    entry: dict[str, object], key: str, file: str, where: tuple[str, ...]
) -> bool | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, bool):
        raise PolicyError(file, json_path(*where, key), "expected true or false")
    return value


class ActionsError(ValueError):
    """A rule's action list that cannot be used; the message says why."""


def _actions(actions: object, file: str, where: tuple[str, ...], key: str) -> frozenset[str]:
    try:
        return parse_actions(actions)
    except ActionsError as e:
        raise PolicyError(file, json_path(*where, key), str(e)) from None


def parse_actions(actions: object) -> frozenset[str]:
    """A rule's action list (users.json's, a token's cap); common lists are interned, so equal
    rules share one set."""
    if isinstance(actions, list) and all(isinstance(a, str) for a in actions):
        known = _KNOWN_ACTION_LISTS.get(tuple(actions))
        if known is not None:
            return known
    if not isinstance(actions, list):
        raise ActionsError('expected a list of actions, e.g. ["pull", "push"]')
    for action in actions:
        if action not in ACTIONS and action != ALL_ACTIONS:
            raise ActionsError(f"unknown action {shown(action)} (known: pull, push, delete, *)")
    if ALL_ACTIONS in actions:
        return frozenset(ACTIONS)
    if "push" in actions and "pull" not in actions:
        raise ActionsError("push requires pull")
    return frozenset(actions)


_KNOWN_ACTION_LISTS: dict[tuple[str, ...], frozenset[str]] = {
    (): frozenset(),
    ("pull",): frozenset({"pull"}),
    ("pull", "push"): frozenset({"pull", "push"}),
    ("push", "pull"): frozenset({"pull", "push"}),
    ("pull", "push", "delete"): frozenset(ACTIONS),
    ("*",): frozenset(ACTIONS),
}


def anonymous_from_document(document: object, file: str) -> tuple[AnonymousPolicy, list[str]]:
    """Validate a parsed repositories.json; returns the policy and deprecation warnings."""
    if not isinstance(document, dict):
        raise PolicyError(file, "", "expected an object")
    warnings: list[str] = []
    for key in document:
        if key not in REPOSITORIES_KEYS and key != "backlist":
            raise PolicyError(file, json_path(key), unknown_key(key, REPOSITORIES_KEYS))
    if "blacklist" in document and "backlist" in document:
        raise PolicyError(file, "backlist", 'both "blacklist" and its old spelling "backlist"')
    key = "blacklist"
    if "backlist" in document:
        key = "backlist"
        warnings.append(f'{file}: backlist: deprecated spelling, rename it to "blacklist"')
    blacklist = document.get(key, False)
    if not isinstance(blacklist, bool):
        raise PolicyError(file, key, "expected true or false")
    catalog = document.get("catalog", False)
    if not isinstance(catalog, bool):
        raise PolicyError(file, "catalog", "expected true or false")
    names = document.get("repositories", [])
    if not isinstance(names, list):
        raise PolicyError(file, "repositories", "expected a list of repository names")
    for index, name in enumerate(names):
        where = json_path("repositories", index)
        if not isinstance(name, str):
            raise PolicyError(file, where, "not a repository name")
        try:
            pattern = compile_pattern(name)
        except PatternError as e:
            raise PolicyError(file, where, f"not a repository name or pattern: {e}") from None
        if pattern.uses_account:
            raise PolicyError(file, where, "${account} has no meaning for anonymous clients")
    return AnonymousPolicy(blacklist, frozenset(names), catalog), warnings
