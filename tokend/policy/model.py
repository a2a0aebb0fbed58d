"""The authorization policy: an immutable value built from users.json and repositories.json.

Building validates everything; evaluation is a pure function of the policy, the account and one
requested resource scope, so it can be tested without files, a reactor or the web.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Protocol

from tokend.dn import DNError, normalise_dn
from tokend.policy.rules import (
    ACCOUNT,
    EMPTY_RULES,
    AmbiguousRules,
    Bound,
    PatternError,
    Rule,
    RuleSet,
    bind,
    bind_account,
    build_rule_set,
    compile_pattern,
)
from tokend.scope import ResourceScope

ACTIONS = ("pull", "push", "delete")
"""Repository actions a user may hold, in the order tokens list them; ``*`` in a rule means all."""

ALL_ACTIONS = "*"
CATALOG = ("registry", "catalog")
USER_KEYS = ("pass_hash", "repositories", "groups", "catalog", "tokens_valid_after")
GROUP_KEYS = ("repositories", "catalog", "ldap_groups")
REPOSITORIES_KEYS = ("blacklist", "repositories", "catalog")
"""repositories.json's keys; its old misspelling "backlist" is read too, never suggested."""
EVERY_DIRECTORY_ACCOUNT = "*"
"""``"ldap_groups": ["*"]``: the group holds every account the directory vouches for."""
DEFAULT_BCRYPT_COST = 12

MIN_BCRYPT_COST = 4
MAX_BCRYPT_COST = 31

_BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$([./A-Za-z0-9]{22})[./A-Za-z0-9]{31}")
_SALT_ENDS = ".Oeu"
"""The 22-character salt encodes 16 bytes, so its last character carries 2 bits and the 4 low
bits must be zero: bcrypt refuses any other last character ("Invalid salt"). The 31-character
hash part needs no such check: bcrypt compares it, so a stray last character only never
matches."""
_DUMMY_KEY_LABEL = b"tokend dummy bcrypt cost\0"
_POINTS = 1 << 64
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


class PolicyError(Exception):
    """A policy file that cannot be used, located by file, position and path inside it."""

    def __init__(
        self,
        file: str,
        path: str,
        reason: str,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.file = file
        self.path = path
        self.reason = reason
        self.line = line
        self.column = column
        where = [file]
        if line is not None:
            where.append(f"line {line} column {column}")
        if path:
            where.append(path)
        super().__init__(": ".join([*where, reason]))


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


@dataclass(frozen=True, slots=True)
class Source:
    """One rule set a user's rights come from, with its ``${account}`` rules bound."""

    name: str
    rules: RuleSet
    bound: tuple[Bound, ...] = ()

    def label(self, account: str) -> str:
        return f"user {account}" if self.name == OWN_RULES else self.name


OWN_RULES = "own rules"


@dataclass(frozen=True, slots=True)
class UserPolicy:
    """One account as written (hash, own rules, groups, catalog), and its compiled sources.

    Equality compares what was written, so a reload can tell which accounts changed.
    """

    pass_hash: bytes
    repositories: Mapping[str, frozenset[str]]
    groups: tuple[str, ...] = ()
    catalog: bool | None = None
    sources: tuple[Source, ...] = field(default=(), compare=False, repr=False)
    may_list_catalog: bool = field(default=True, compare=False, repr=False)
    tokens_valid_after: float | None = None
    """POSIX time before which this user's refresh tokens were issued in vain (revoked)."""


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """Rules shared by every member; ``${account}`` means the member asking."""

    repositories: Mapping[str, frozenset[str]]
    catalog: bool | None = None
    source: Source = field(default=Source("group", EMPTY_RULES), compare=False, repr=False)
    """The compiled rules, labelled for explain; shared by every member without ``${account}``
    rules to bind."""
    ldap_groups: frozenset[str] = frozenset()
    """Normalised DNs of the directory groups whose members hold this group's rules, or
    ``{"*"}`` for every directory account."""

    def holds(self, directory_groups: frozenset[str]) -> bool:
        """Whether a directory account in ``directory_groups`` (normalised DNs) is a member."""
        if not self.ldap_groups:
            return False
        return EVERY_DIRECTORY_ACCOUNT in self.ldap_groups or not self.ldap_groups.isdisjoint(
            directory_groups
        )

    @property
    def rules(self) -> RuleSet:
        return self.source.rules


@dataclass(frozen=True, slots=True)
class AnonymousPolicy:
    """What clients without credentials may pull: names and patterns, listed or excluded."""

    blacklist: bool = False
    repositories: frozenset[str] = frozenset()
    catalog: bool = False
    rules: RuleSet = field(init=False, default=EMPTY_RULES, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Compile the names once; they were validated by :func:`anonymous_from_document`."""
        if self.repositories:
            rules = (Rule(compile_pattern(name), PULL) for name in self.repositories)
            object.__setattr__(self, "rules", build_rule_set(rules, ambiguity_is_error=False))

    def listed(self, name: str) -> Rule | None:
        return self.rules.match(name)

    def may_pull(self, name: str) -> bool:
        return (self.rules.match(name) is not None) != self.blacklist


PULL = frozenset({"pull"})


@dataclass(frozen=True, slots=True)
class Match:
    """What one source says about one name, for ``tokend explain``."""

    source: str
    rule: Rule | None


@dataclass(frozen=True, slots=True)
class Decision:
    """The actions an account holds on one resource, and the rules that decided it."""

    actions: frozenset[str]
    matches: tuple[Match, ...]
    note: str


OWN_ENTRY = "users.json"
"""An identity whose rights are its own entry in users.json, found by its name."""
DIRECTORY_GROUPS = "groups.json"
"""An identity whose rights are those of the groups.json groups its directory groups hold."""


class Principal(Protocol):
    """What the policy reads of an identity (:class:`tokend.login.identity.Identity`)."""

    @property
    def account(self) -> str: ...
    @property
    def rights_from(self) -> str: ...
    @property
    def directory_groups(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the service needs to decide what a token may hold."""

    users: Mapping[str, UserPolicy] = field(default_factory=lambda: MappingProxyType({}))
    anonymous: AnonymousPolicy = AnonymousPolicy()
    groups: Mapping[str, GroupPolicy] = field(default_factory=lambda: MappingProxyType({}))
    folded_users: frozenset[str] = field(init=False, default=frozenset(), compare=False)
    """users.json names, casefolded: a directory login spelled in another case of one of them
    is not the directory's to answer."""
    hash_costs: tuple[tuple[int, int], ...] = field(init=False, default=(), compare=False)
    """(bcrypt cost, users with it), commonest first; counted once when the policy is built."""
    _dummy_key: bytes = field(init=False, default=b"", compare=False, repr=False)
    _directory_members: dict[tuple[str, frozenset[str]], UserPolicy] = field(
        init=False, default_factory=dict, compare=False, repr=False
    )
    _dummy_bounds: tuple[tuple[int, int], ...] = field(
        init=False, default=((_POINTS, DEFAULT_BCRYPT_COST),), compare=False, repr=False
    )

    def __post_init__(self) -> None:
        """Everything policy-wide a login needs is computed here, off the reactor (policies are
        built in the reload thread), so a login costs the same with 10 users or 100,000."""
        object.__setattr__(self, "folded_users", frozenset(n.casefold() for n in self.users))
        written = Counter(user.pass_hash[4:6] for user in self.users.values())
        counts = Counter({int(cost): n for cost, n in written.items()})
        ordered = tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
        object.__setattr__(self, "hash_costs", ordered)
        if not counts:
            return
        total, seen, bounds = sum(counts.values()), 0, []
        for cost, n in sorted(counts.items()):
            seen += n
            bounds.append((seen * _POINTS // total, cost))
        object.__setattr__(self, "_dummy_bounds", tuple(bounds))
        if len(bounds) > 1:
            hashes = sorted(user.pass_hash for user in self.users.values())
            key = hashlib.sha256(_DUMMY_KEY_LABEL + b"".join(hashes)).digest()
            object.__setattr__(self, "_dummy_key", key)

    def _rights(self, account: str, member: UserPolicy | None) -> UserPolicy | None:
        """``member`` when given (a directory account's), else the account's users.json entry."""
        return member if member is not None else self.users.get(account)

    def allowed(
        self,
        account: str | None,
        resource_type: str,
        name: str,
        member: UserPolicy | None = None,
    ) -> frozenset[str]:
        """The actions ``account`` (``None``: anonymous) holds on one resource; ``member``
        gives its rights when they come from elsewhere than users.json (a directory)."""
        if resource_type == "repository":
            if account is None:
                return PULL if self.anonymous.may_pull(name) else NOTHING
            user = self._rights(account, member)
            if user is None:
                return NOTHING
            allowed = NOTHING
            for source in user.sources:
                rule = source.rules.match(name, source.bound)
                if rule is not None and rule.actions:
                    allowed = allowed | rule.actions if allowed else rule.actions
            return allowed
        return self.decide(account, resource_type, name, member).actions

    def decide(
        self,
        account: str | None,
        resource_type: str,
        name: str,
        member: UserPolicy | None = None,
    ) -> Decision:
        """:meth:`allowed` with its reasons: which rule of which source matched."""
        if (resource_type, name) == CATALOG:
            if account is None:
                allowed = self.anonymous.catalog
                note = f"anonymous catalog is {'on' if allowed else 'off'} in repositories.json"
            else:
                user = self._rights(account, member)
                allowed = user is not None and user.may_list_catalog
                note = f"catalog {'allowed' if allowed else 'denied'} for {account!r}"
            return Decision(frozenset(ALL_ACTIONS) if allowed else NOTHING, (), note)
        if resource_type != "repository":
            return Decision(NOTHING, (), f"nothing is granted on {resource_type!r} resources")
        if account is None:
            rule = self.anonymous.listed(name)
            kind = "blacklist" if self.anonymous.blacklist else "whitelist"
            actions = PULL if (rule is not None) != self.anonymous.blacklist else NOTHING
            note = f"anonymous {kind}; anonymous clients only ever pull"
            return Decision(actions, (Match(f"repositories.json {kind}", rule),), note)
        user = self._rights(account, member)
        if user is None:
            return Decision(NOTHING, (), f"no user {account!r}")
        matches = tuple(
            Match(source.label(account), source.rules.match(name, source.bound))
            for source in user.sources
        )
        actions = frozenset().union(*(m.rule.actions for m in matches if m.rule is not None))
        return Decision(actions, matches, "the union of every source's most specific rule")

    def grant(
        self, account: str | None, scope: ResourceScope, member: UserPolicy | None = None
    ) -> tuple[str, ...]:
        """Requested ∩ allowed, in the request's order; ``*`` asks for everything allowed."""
        allowed = self.allowed(account, scope.type, scope.name, member)
        if ALL_ACTIONS in scope.actions and ALL_ACTIONS not in allowed:
            return tuple(a for a in ACTIONS if a in allowed)
        return tuple(a for a in scope.actions if a in allowed)

    def rights(self, who: Principal) -> UserPolicy | None:
        """What an identity may do here, read from where its kind of rights are written (None:
        nothing, as for a name users.json does not hold). Which backend vouched for it does
        not matter."""
        if who.rights_from == DIRECTORY_GROUPS:
            return self.directory_member(who.account, who.directory_groups)
        return self.users.get(who.account)

    def directory_member(self, account: str, directory_groups: frozenset[str]) -> UserPolicy:
        """The rights of a directory account: the rules of every group whose ``ldap_groups``
        holds one of its directory groups (normalised DNs), ``${account}`` bound to its name,
        as for a users.json member. No group: it authenticates and holds nothing.

        Remembered per (account, groups) for this policy's lifetime (a reload builds a new
        policy), so a busy client's cached logins do not bind the rules again each time.
        """
        key = (account, directory_groups)
        known = self._directory_members.get(key)
        if known is not None:
            return known
        sources: list[Source] = []
        names: list[str] = []
        for group_name, group in self.groups.items():
            if not group.holds(directory_groups):
                continue
            try:
                bound = bind(group.rules, account)
            except AmbiguousRules:
                continue  # this name makes two of the group's rules tie: the group grants nothing
            names.append(group_name)
            sources.append(Source(group.source.name, group.rules, bound) if bound else group.source)
        catalogs = [self.groups[name].catalog for name in names]
        member = UserPolicy(
            b"",
            MappingProxyType({}),
            tuple(names),
            None,
            tuple(sources),
            bool(names) and _may_list_catalog(None, catalogs),
        )
        if len(self._directory_members) >= _DIRECTORY_MEMBERS_REMEMBERED:
            self._directory_members.clear()
        self._directory_members[key] = member
        return member

    @property
    def directory_groups(self) -> Mapping[str, frozenset[str]]:
        """Groups that take directory accounts, with the directory groups they take."""
        return {name: g.ldap_groups for name, g in self.groups.items() if g.ldap_groups}

    def dummy_cost(self, account: str) -> int:
        """The bcrypt cost at which an unknown ``account`` is checked, so that it costs what a
        known name would.

        Drawn from the policy's own mix of costs, weighted by how many users have each, by a
        keyed hash of the name: the same name always gets the same cost, and the key (a digest
        of the stored hashes, secret to anyone who cannot read users.json) keeps the choice
        unpredictable from outside. With one cost in use that cost is the answer. O(1) in the
        number of users: at most one bound per distinct cost (4..31) is looked at.
        """
        bounds = self._dummy_bounds
        if len(bounds) == 1:
            return bounds[0][1]
        name = account.encode("utf-8", "surrogatepass")
        digest = hmac.digest(self._dummy_key, name, "sha256")
        point = int.from_bytes(digest[:8], "big")
        for bound, cost in bounds:
            if point < bound:
                return cost
        return bounds[-1][1]


NOTHING: frozenset[str] = frozenset()
_DIRECTORY_MEMBERS_REMEMBERED = 4096


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


def _written_rules(rules: object, file: str, where: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Validate a rule map: every key compiles, every action list is known."""
    if not isinstance(rules, dict):
        raise PolicyError(file, json_path(*where), "expected an object")
    written: dict[str, frozenset[str]] = {}
    for key, actions in rules.items():
        try:
            compile_pattern(key)
        except PatternError as e:
            raise PolicyError(file, json_path(*where, key), str(e)) from None
        written[key] = _actions(actions, file, where, key)
    return written


def _compiled(written: Mapping[str, frozenset[str]]) -> list[Rule]:
    return [Rule(compile_pattern(key), actions) for key, actions in written.items()]


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
        groups[name] = GroupPolicy(
            MappingProxyType(written), catalog, Source(f"group {name}", rules), ldap_groups
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
    pass_hash = _checked_hash(entry.get("pass_hash"), file, user)
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
        _may_list_catalog(catalog, [groups[g].catalog for g in member_of]),
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


SharedRules = dict[
    tuple[tuple[str, frozenset[str]], ...], tuple[Mapping[str, frozenset[str]], Source]
]


def _own_rules(
    rules: object, file: str, user: str, shared: SharedRules
) -> tuple[Mapping[str, frozenset[str]], Source]:
    """A user's own rules; ``${account}`` is their own name. Identical rule maps share one
    compiled set, so 100,000 users with the same rights cost one set, not 100,000."""
    where = (user, "repositories")
    written = _written_rules(rules, file, where)
    if any(ACCOUNT in key for key in written):
        compiled: list[Rule] = []
        for key, actions in written.items():
            if ACCOUNT in key:
                pattern = bind_account(key, user)
                if pattern is None:
                    continue  # the user name is no path component: the rule never matches
                compiled.append(Rule(pattern, actions))
            else:
                compiled.append(Rule(compile_pattern(key), actions))
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


def _may_list_catalog(own: bool | None, from_groups: list[bool | None]) -> bool:
    """The user's own setting; else any group's grant; else any group's denial; else allowed
    (authenticated users have always been able to list the catalog)."""
    if own is not None:
        return own
    if True in from_groups:
        return True
    return False not in from_groups


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


def _actions(actions: object, file: str, where: tuple[str, ...], key: str) -> frozenset[str]:
    """A rule's action list; common lists are interned, so equal rules share one set."""
    if isinstance(actions, list) and all(isinstance(a, str) for a in actions):
        known = _KNOWN_ACTION_LISTS.get(tuple(actions))
        if known is not None:
            return known
    path = json_path(*where, key)
    if not isinstance(actions, list):
        raise PolicyError(file, path, 'expected a list of actions, e.g. ["pull", "push"]')
    for action in actions:
        if action not in ACTIONS and action != ALL_ACTIONS:
            raise PolicyError(
                file, path, f"unknown action {shown(action)} (known: pull, push, delete, *)"
            )
    if ALL_ACTIONS in actions:
        return frozenset(ACTIONS)
    if "push" in actions and "pull" not in actions:
        raise PolicyError(file, path, "push requires pull")
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


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """What a reload changed, for the log line that confirms it."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    """Users whose rights changed: their entry in users.json, or the rules of a group of theirs."""
    anonymous_changed: bool
    edited: tuple[str, ...] = ()
    """Users whose entry in users.json changed."""
    groups_added: tuple[str, ...] = ()
    groups_removed: tuple[str, ...] = ()
    groups_changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.added
            or self.removed
            or self.changed
            or self.anonymous_changed
            or self.groups_added
            or self.groups_removed
            or self.groups_changed
        )


def _differences(
    old: Mapping[str, object], new: Mapping[str, object]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Names added, removed, and kept with another value."""
    kept = old.keys() & new.keys()
    return (
        tuple(sorted(new.keys() - old.keys())),
        tuple(sorted(old.keys() - new.keys())),
        tuple(sorted(name for name in kept if old[name] != new[name])),
    )


def policy_change(old: Policy, new: Policy) -> PolicyChange:
    """Users added, removed or altered (hash, rights or a group's rules), groups added, removed
    or altered, and whether anonymous rules moved."""
    added, removed, edited = _differences(old.users, new.users)
    groups_added, groups_removed, groups_changed = _differences(old.groups, new.groups)
    return PolicyChange(
        added=added,
        removed=removed,
        changed=tuple(
            sorted(
                name
                for name in old.users.keys() & new.users.keys()
                if old.users[name] != new.users[name]
                or any(
                    old.groups.get(group) != new.groups.get(group)
                    for group in new.users[name].groups
                )
            )
        ),
        anonymous_changed=old.anonymous != new.anonymous,
        edited=edited,
        groups_added=groups_added,
        groups_removed=groups_removed,
        groups_changed=groups_changed,
    )
