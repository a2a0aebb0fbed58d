"""The authorization policy as values: users, groups and anonymous rules, and their evaluation.

Evaluation is a pure function of the policy, the account and one requested resource scope, so it
can be tested without files, a reactor or the web; tokend.policy.documents builds the values.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from tokend.policy.networks import Address, WrittenRule
from tokend.policy.rules import (
    EMPTY_RULES,
    AmbiguousRules,
    Bound,
    Rule,
    RuleSet,
    bind,
    build_rule_set,
    compile_pattern,
)
from tokend.scope import ResourceScope

ClaimValues = tuple[tuple[str, str], ...]
"""Each claim path a trust's templates reference, with its value in one token."""
ACTIONS = ("pull", "push", "delete")
"""Repository actions a user may hold, in the order tokens list them; ``*`` in a rule means all."""

ALL_ACTIONS = "*"
CATALOG = ("registry", "catalog")
EVERY_DIRECTORY_ACCOUNT = "*"
"""``"ldap_groups": ["*"]``: the group holds every account the directory vouches for."""
DEFAULT_BCRYPT_COST = 12

MIN_BCRYPT_COST = 4
MAX_BCRYPT_COST = 31

_DUMMY_KEY_LABEL = b"tokend dummy bcrypt cost\0"
_POINTS = 1 << 64


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
    """Empty for a robot (``pass_hash`` absent or null): it logs in only with its access
    tokens."""
    repositories: Mapping[str, WrittenRule]
    groups: tuple[str, ...] = ()
    catalog: bool | None = None
    sources: tuple[Source, ...] = field(default=(), compare=False, repr=False)
    may_list_catalog: bool = field(default=True, compare=False, repr=False)
    tokens_valid_after: float | None = None
    """POSIX time before which this user's refresh tokens were issued in vain (revoked)."""

    @property
    def robot(self) -> bool:
        """No password: a password login is refused (after a dummy bcrypt)."""
        return not self.pass_hash


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """Rules shared by every member; ``${account}`` means the member asking."""

    repositories: Mapping[str, WrittenRule]
    catalog: bool | None = None
    source: Source = field(default=Source("group", EMPTY_RULES), compare=False, repr=False)
    """The compiled rules, labelled for explain; shared by every member without ``${account}``
    rules to bind."""
    ldap_groups: frozenset[str] = frozenset()
    """Normalised DNs of the directory groups whose members hold this group's rules, or
    ``{"*"}`` for every directory account."""
    program_labels: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Label -> values: an account the authentication program answered with any of these
    values of that label is a member."""
    admin: bool = False
    """``"admin": true``: its members manage every owner's access tokens, not only their own."""

    def holds(self, directory_groups: frozenset[str]) -> bool:
        """Whether a directory account in ``directory_groups`` (normalised DNs) is a member."""
        if not self.ldap_groups:
            return False
        return EVERY_DIRECTORY_ACCOUNT in self.ldap_groups or not self.ldap_groups.isdisjoint(
            directory_groups
        )

    def holds_labels(self, labels: Labels) -> bool:
        """Whether an account the program gave ``labels`` is a member."""
        for label, values in labels:
            listed = self.program_labels.get(label)
            if listed is not None and not listed.isdisjoint(values):
                return True
        return False

    @property
    def rules(self) -> RuleSet:
        return self.source.rules


Labels = tuple[tuple[str, tuple[str, ...]], ...]
"""What an external authentication program said of an account (``{"labels": {"group":
["ci"]}}``), as a hashable value: label names in order, each with its values."""


def labels_from(written: Mapping[str, list[str] | tuple[str, ...]]) -> Labels:
    """Labels as a program writes them (a JSON object of lists of strings), as a value."""
    return tuple(sorted((label, tuple(values)) for label, values in written.items()))


@dataclass(frozen=True, slots=True)
class AnonymousPolicy:
    """What clients without credentials may pull: names and patterns, listed or excluded."""

    blacklist: bool = False
    repositories: frozenset[str] = frozenset()
    catalog: bool = False
    rules: RuleSet = field(init=False, default=EMPTY_RULES, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Compile the names once; they were validated by
        :func:`tokend.policy.documents.anonymous_from_document`."""
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
    """What one source says about one name, for ``tokend explain``: the rule that decides, and
    the more specific ones passed over because they do not apply from the client's address."""

    source: str
    rule: Rule | None
    skipped: tuple[Rule, ...] = ()


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
PROGRAM_LABELS = "program labels"
"""An identity whose rights are those of the groups.json groups its program labels name."""
FEDERATED = "issuers.json"
"""An identity a trust of issuers.json vouched for (a platform's JWT): its rights are the
trust's groups and rules, with the claim values it holds."""


class Principal(Protocol):
    """What the policy reads of an identity (:class:`tokend.login.identity.Identity`)."""

    @property
    def account(self) -> str: ...
    @property
    def rights_from(self) -> str: ...
    @property
    def directory_groups(self) -> frozenset[str]: ...
    @property
    def labels(self) -> Labels: ...
    @property
    def trust(self) -> str: ...
    @property
    def claim_values(self) -> ClaimValues: ...


class TrustRights(Protocol):
    """What the policy reads of an issuers.json trust (a :class:`tokend.policy.trusts.Trust`,
    whose module builds on this one, so this one names it only by what it reads)."""

    @property
    def name(self) -> str: ...
    @property
    def issuer(self) -> str: ...
    @property
    def audience(self) -> str: ...
    @property
    def groups(self) -> tuple[str, ...]: ...
    @property
    def token_ttl(self) -> int | None: ...
    def member(
        self, groups: Mapping[str, GroupPolicy], account: str, claim_values: ClaimValues
    ) -> UserPolicy: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the service needs to decide what a token may hold."""

    users: Mapping[str, UserPolicy] = field(default_factory=lambda: MappingProxyType({}))
    anonymous: AnonymousPolicy = AnonymousPolicy()
    groups: Mapping[str, GroupPolicy] = field(default_factory=lambda: MappingProxyType({}))
    trusts: Mapping[str, TrustRights] = field(default_factory=lambda: MappingProxyType({}))
    """issuers.json: the platforms whose tokens log in, by name."""
    folded_users: frozenset[str] = field(init=False, default=frozenset(), compare=False)
    """users.json names, casefolded: a directory login spelled in another case of one of them
    is not the directory's to answer."""
    hash_costs: tuple[tuple[int, int], ...] = field(init=False, default=(), compare=False)
    """(bcrypt cost, users with it), commonest first; counted once when the policy is built."""
    _by_issuer: dict[tuple[str, str], TrustRights] = field(
        init=False, default_factory=dict, compare=False, repr=False
    )
    _dummy_key: bytes = field(init=False, default=b"", compare=False, repr=False)
    _members: dict[tuple[str, str, object], UserPolicy] = field(
        init=False, default_factory=dict, compare=False, repr=False
    )
    _dummy_bounds: tuple[tuple[int, int], ...] = field(
        init=False, default=((_POINTS, DEFAULT_BCRYPT_COST),), compare=False, repr=False
    )

    def __post_init__(self) -> None:
        """Everything policy-wide a login needs is computed here, off the reactor (policies are
        built in the reload thread), so a login costs the same with 10 users or 100,000."""
        object.__setattr__(self, "folded_users", frozenset(n.casefold() for n in self.users))
        self._by_issuer.update(((t.issuer, t.audience), t) for t in self.trusts.values())
        hashed = [user.pass_hash for user in self.users.values() if not user.robot]
        written = Counter(pass_hash[4:6] for pass_hash in hashed)
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
            hashes = sorted(hashed)
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
        address: Address = None,
    ) -> frozenset[str]:
        """The actions ``account`` (``None``: anonymous) holds on one resource from the client
        ``address`` (None: none known, so no ``from`` rule applies); ``member`` gives its
        rights when they come from elsewhere than users.json (a directory)."""
        if resource_type == "repository":
            if account is None:
                return PULL if self.anonymous.may_pull(name) else NOTHING
            user = self._rights(account, member)
            if user is None:
                return NOTHING
            allowed = NOTHING
            for source in user.sources:
                rule = source.rules.match(name, source.bound, address)
                if rule is not None and rule.actions:
                    allowed = allowed | rule.actions if allowed else rule.actions
            return allowed
        return self.decide(account, resource_type, name, member, address).actions

    def decide(
        self,
        account: str | None,
        resource_type: str,
        name: str,
        member: UserPolicy | None = None,
        address: Address = None,
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
        matches = tuple(_match(source, account, name, address) for source in user.sources)
        actions = frozenset().union(*(m.rule.actions for m in matches if m.rule is not None))
        return Decision(actions, matches, "the union of every source's most specific rule")

    def grant(
        self,
        account: str | None,
        scope: ResourceScope,
        member: UserPolicy | None = None,
        address: Address = None,
    ) -> tuple[str, ...]:
        """Requested ∩ allowed (from ``address``), in the request's order; ``*`` asks for
        everything allowed."""
        allowed = self.allowed(account, scope.type, scope.name, member, address)
        if ALL_ACTIONS in scope.actions and ALL_ACTIONS not in allowed:
            return tuple(a for a in ACTIONS if a in allowed)
        return tuple(a for a in scope.actions if a in allowed)

    def rights(self, who: Principal) -> UserPolicy | None:
        """What an identity may do here, read from where its kind of rights are written (None:
        nothing, as for a name users.json does not hold). Which backend vouched for it does
        not matter."""
        if who.rights_from == DIRECTORY_GROUPS:
            return self.directory_member(who.account, who.directory_groups)
        if who.rights_from == PROGRAM_LABELS:
            return self.program_member(who.account, who.labels)
        if who.rights_from == FEDERATED:
            trust = self.trusts.get(who.trust)
            if trust is None:
                return None  # gone from issuers.json since the login
            key = (FEDERATED, who.account, (who.trust, who.claim_values))
            known = self._members.get(key)
            if known is None:
                known = trust.member(self.groups, who.account, who.claim_values)
            return self._remember(key, known)
        return self.users.get(who.account)

    def is_admin(self, who: Principal) -> bool:
        """Whether ``who`` is a member of a group with ``"admin": true``, by the groups its
        kind of rights are read from (users.json ``groups``, directory groups, program labels).
        Never an identity a platform's JWT vouched for: a CI job manages no one's tokens."""
        admins = [group for group in self.groups.values() if group.admin]
        if not admins or who.rights_from == FEDERATED:
            return False
        if who.rights_from == DIRECTORY_GROUPS:
            return any(group.holds(who.directory_groups) for group in admins)
        if who.rights_from == PROGRAM_LABELS:
            return any(group.holds_labels(who.labels) for group in admins)
        user = self.users.get(who.account)
        return user is not None and any(self.groups[name].admin for name in user.groups)

    def trust_for(self, iss: str, aud: str | Sequence[str]) -> TrustRights | None:
        """The trust for a token's ``iss`` and ``aud`` (a string or a list); None when none
        is, or when the audiences it lists lead to two trusts (which one it was meant for
        cannot be told)."""
        audiences = (aud,) if isinstance(aud, str) else aud
        found = {
            trust.name: trust
            for trust in (self._by_issuer.get((iss, a)) for a in audiences if isinstance(a, str))
            if trust is not None
        }
        return next(iter(found.values())) if len(found) == 1 else None

    def directory_member(self, account: str, directory_groups: frozenset[str]) -> UserPolicy:
        """The rights of a directory account: the rules of every group whose ``ldap_groups``
        holds one of its directory groups (normalised DNs)."""
        return self._member(
            (DIRECTORY_GROUPS, account, directory_groups),
            lambda group: group.holds(directory_groups),
        )

    def program_member(self, account: str, labels: Labels) -> UserPolicy:
        """The rights of an account the authentication program vouched for: the rules of
        every group whose ``program_labels`` names one of the values it answered with."""
        return self._member((PROGRAM_LABELS, account, labels), lambda g: g.holds_labels(labels))

    def _member(
        self, key: tuple[str, str, object], holds: Callable[[GroupPolicy], bool]
    ) -> UserPolicy:
        """The rules of every group that ``holds`` the account ``key[1]``, ``${account}``
        bound to its name, as for a users.json member. No group: it authenticates and holds
        nothing.

        Remembered per key for this policy's lifetime (a reload builds a new policy), so a
        busy client's cached logins do not bind the rules again each time.
        """
        account = key[1]
        known = self._members.get(key)
        if known is not None:
            return known
        sources: list[Source] = []
        names: list[str] = []
        for group_name, group in self.groups.items():
            if not holds(group):
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
            bool(names) and may_list_catalog(None, catalogs),
        )
        return self._remember(key, member)

    def _remember(self, key: tuple[str, str, object], member: UserPolicy) -> UserPolicy:
        if len(self._members) >= _MEMBERS_REMEMBERED:
            self._members.clear()
        self._members[key] = member
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
_MEMBERS_REMEMBERED = 4096


def _match(source: Source, account: str, name: str, address: Address) -> Match:
    skipped: list[Rule] = []
    rule = source.rules.match(name, source.bound, address, skipped)
    return Match(source.label(account), rule, tuple(skipped))


def may_list_catalog(own: bool | None, from_groups: list[bool | None]) -> bool:
    """The user's own setting; else any group's grant; else any group's denial; else allowed
    (authenticated users have always been able to list the catalog)."""
    if own is not None:
        return own
    if True in from_groups:
        return True
    return False not in from_groups
