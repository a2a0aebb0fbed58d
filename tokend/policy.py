"""The authorization policy: an immutable value built from users.json and repositories.json.

Building validates everything; evaluation is a pure function of the policy, the account and one
requested resource scope, so it can be tested without files, a reactor or the web.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tokend.scope import ResourceScope, is_valid_name

ACTIONS = ("pull", "push")
"""Repository actions a user may hold, in the order tokens list them."""

ANY_REPOSITORY = "*"
CATALOG = ("registry", "catalog")
DEFAULT_BCRYPT_COST = 12

_BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
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


def json_path(*keys: str | int) -> str:
    """Render a path inside a JSON document the way error messages show it."""
    rendered = ""
    for key in keys:
        if isinstance(key, int):
            rendered += f"[{key}]"
        elif _PLAIN_KEY.fullmatch(key):
            rendered += f".{key}" if rendered else key
        else:
            rendered += f"[{json.dumps(key)}]"
    return rendered


@dataclass(frozen=True, slots=True)
class UserPolicy:
    """One account: its password hash and the actions it holds per repository."""

    pass_hash: bytes
    repositories: Mapping[str, frozenset[str]]

    def allowed(self, name: str) -> frozenset[str]:
        """An exact name wins over ``*``; a name listed with no actions denies it."""
        exact = self.repositories.get(name)
        if exact is not None:
            return exact
        return self.repositories.get(ANY_REPOSITORY, frozenset())


@dataclass(frozen=True, slots=True)
class AnonymousPolicy:
    """What clients without credentials may pull."""

    blacklist: bool = False
    repositories: frozenset[str] = frozenset()
    catalog: bool = False

    def may_pull(self, name: str) -> bool:
        return (name in self.repositories) != self.blacklist


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the service needs to decide what a token may hold."""

    users: Mapping[str, UserPolicy] = field(default_factory=lambda: MappingProxyType({}))
    anonymous: AnonymousPolicy = AnonymousPolicy()

    def allowed(self, account: str | None, resource_type: str, name: str) -> frozenset[str]:
        """The actions ``account`` (``None``: anonymous) holds on one resource."""
        if (resource_type, name) == CATALOG:
            if account is not None or self.anonymous.catalog:
                return frozenset("*")
            return frozenset()
        if resource_type != "repository":
            return frozenset()
        if account is None:
            return frozenset({"pull"}) if self.anonymous.may_pull(name) else frozenset()
        user = self.users.get(account)
        return user.allowed(name) if user is not None else frozenset()

    def grant(self, account: str | None, scope: ResourceScope) -> tuple[str, ...]:
        """Requested ∩ allowed, in the request's order; ``*`` asks for everything allowed."""
        allowed = self.allowed(account, scope.type, scope.name)
        if "*" in scope.actions and "*" not in allowed:
            return tuple(a for a in ACTIONS if a in allowed)
        return tuple(a for a in scope.actions if a in allowed)

    def bcrypt_cost(self) -> int:
        """The commonest cost among the stored hashes: what an unknown user's check costs."""
        costs = Counter(int(u.pass_hash[4:6]) for u in self.users.values())
        return costs.most_common(1)[0][0] if costs else DEFAULT_BCRYPT_COST


def users_from_document(document: object, file: str) -> Mapping[str, UserPolicy]:
    """Validate a parsed users.json; unknown keys are errors so a typo cannot change policy."""
    if not isinstance(document, dict):
        raise PolicyError(file, "", "expected an object mapping user names to entries")
    users: dict[str, UserPolicy] = {}
    for user, entry in document.items():
        if not user or ":" in user or not user.isprintable() or len(user) > 255:
            raise PolicyError(
                file, json_path(user), "user names must be 1-255 printable characters, no ':'"
            )
        users[user] = _user_from_entry(entry, file, user)
    return MappingProxyType(users)


def _user_from_entry(entry: object, file: str, user: str) -> UserPolicy:
    if not isinstance(entry, dict):
        raise PolicyError(file, json_path(user), "expected an object")
    for key in entry:
        if key not in ("pass_hash", "repositories"):
            raise PolicyError(file, json_path(user, key), "unknown key")
    pass_hash = entry.get("pass_hash")
    if not isinstance(pass_hash, str) or _BCRYPT_HASH.fullmatch(pass_hash) is None:
        raise PolicyError(
            file,
            json_path(user, "pass_hash"),
            "expected a bcrypt hash ($2a$, $2b$ or $2y$); make one with `tokend hash-password`",
        )
    cost = int(pass_hash[4:6])
    if not 4 <= cost <= 31:
        raise PolicyError(file, json_path(user, "pass_hash"), f"bcrypt cost {cost} out of range")
    rules = entry.get("repositories", {})
    if not isinstance(rules, dict):
        raise PolicyError(file, json_path(user, "repositories"), "expected an object")
    repositories: dict[str, frozenset[str]] = {}
    for name, actions in rules.items():
        where = json_path(user, "repositories", name)
        if name != ANY_REPOSITORY and not is_valid_name(name):
            raise PolicyError(file, where, "not a repository name or *")
        repositories[name] = _actions(actions, file, where)
    return UserPolicy(pass_hash.encode("ascii"), MappingProxyType(repositories))


def _actions(actions: object, file: str, where: str) -> frozenset[str]:
    if not isinstance(actions, list):
        raise PolicyError(file, where, 'expected a list of actions, e.g. ["pull", "push"]')
    for action in actions:
        if action not in ACTIONS:
            raise PolicyError(
                file, where, f"unknown action {json.dumps(action)} (known: pull, push)"
            )
    if "push" in actions and "pull" not in actions:
        raise PolicyError(file, where, "push requires pull")
    return frozenset(actions)


def anonymous_from_document(document: object, file: str) -> tuple[AnonymousPolicy, list[str]]:
    """Validate a parsed repositories.json; returns the policy and deprecation warnings."""
    if not isinstance(document, dict):
        raise PolicyError(file, "", "expected an object")
    warnings: list[str] = []
    for key in document:
        if key not in ("blacklist", "backlist", "repositories", "catalog"):
            raise PolicyError(file, json_path(key), "unknown key")
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
        if not isinstance(name, str) or not is_valid_name(name):
            raise PolicyError(file, json_path("repositories", index), "not a repository name")
    return AnonymousPolicy(blacklist, frozenset(names), catalog), warnings


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """What a reload changed, for the log line that confirms it."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    anonymous_changed: bool

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.anonymous_changed)


def policy_change(old: Policy, new: Policy) -> PolicyChange:
    """Users added, removed or altered (hash or rights), and whether anonymous rules moved."""
    return PolicyChange(
        added=tuple(sorted(new.users.keys() - old.users.keys())),
        removed=tuple(sorted(old.users.keys() - new.users.keys())),
        changed=tuple(
            sorted(
                name
                for name in old.users.keys() & new.users.keys()
                if old.users[name] != new.users[name]
            )
        ),
        anonymous_changed=old.anonymous != new.anonymous,
    )
