"""A token's cap: the repositories it may be used on and the actions there, written as a
users.json rule set (``{"team/*": ["pull", "push"]}``; ``team/*:pull,push`` on the tool's
command line) and compiled by the policy's own rules. A token gets its owner's rights *now* ∩
its cap ∩ what was asked, so it never holds more than its owner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from tokend.policy.documents import ActionsError, json_path, parse_actions, shown
from tokend.policy.model import ACTIONS
from tokend.policy.rules import (
    ACCOUNT,
    AmbiguousRules,
    PatternError,
    Rule,
    RuleSet,
    build_rule_set,
    compile_pattern,
)
from tokend.scope import MAX_SCOPE_LENGTH

MAX_CAP_RULES = 100
"""A cap lists a few patterns; hundreds are a mistake, and a cap is compiled whenever its
token is read from the database."""

EXAMPLE = "team/*:pull,push"
_EMPTY = (
    "a token's cap names at least one repository pattern, e.g. team/*:pull "
    "(*:* for all its owner's rights)"
)


class CapError(ValueError):
    """A cap that cannot be used, as one sentence naming the part at fault."""


@dataclass(frozen=True, slots=True)
class Cap:
    """Repository patterns and the actions a token may use there (none: it may not)."""

    written: Mapping[str, frozenset[str]]
    rules: RuleSet = field(compare=False, repr=False)

    def to_json(self) -> dict[str, list[str]]:
        """The stored form, a users.json rule map; actions in the order tokens list them."""
        return {key: [a for a in ACTIONS if a in actions] for key, actions in self.written.items()}

    def scopes(self) -> tuple[str, ...]:
        """The command line's form, one ``PATTERN:ACTIONS`` each, as the table shows them."""
        return tuple(f"{key}:{','.join(actions)}" for key, actions in self.to_json().items())


def parse_cap(scopes: Iterable[str]) -> Cap:
    """A cap from the tool's ``--scope PATTERN:ACTIONS`` values (``*`` for every action,
    nothing after the colon to deny a pattern the others would allow)."""
    written: dict[str, frozenset[str]] = {}
    given: dict[str, str] = {}
    for text in scopes:
        where = shown_scope(text)
        if len(text) > MAX_SCOPE_LENGTH:
            raise CapError(f"{where}: longer than {MAX_SCOPE_LENGTH} characters")
        key, colon, actions = text.rpartition(":")
        if not colon or not key:
            raise CapError(f"{where}: expected PATTERN:ACTIONS, e.g. {EXAMPLE}")
        if key in written:
            raise CapError(f"{where}: {key} is capped twice: give it once")
        listed = actions.split(",") if actions else []
        written[key] = _checked(key, listed, where)
        given[key] = where
    return _cap(written, given)


def cap_from_json(document: object, where: str = "cap") -> Cap:
    """A cap from its stored form (or the HTTP API's), ``where`` naming it in errors."""
    if not isinstance(document, dict):
        raise CapError(
            f"{where}: expected an object mapping repository patterns to lists of actions"
        )
    written: dict[str, frozenset[str]] = {}
    given: dict[str, str] = {}
    for key, actions in document.items():
        path = json_path(where, key)
        written[key] = _checked(key, actions, path)
        given[key] = path
    return _cap(written, given)


def capped(granted_actions: Sequence[str], cap: Cap, repository: str) -> tuple[str, ...]:
    """``granted_actions`` (what was asked ∩ the owner's rights now, in the request's order)
    within the cap's most specific rule for ``repository``; nothing outside the cap."""
    rule = cap.rules.match(repository)
    if rule is None or not rule.actions:
        return ()
    return tuple(action for action in granted_actions if action in rule.actions)


def shown_scope(text: str) -> str:
    """A ``--scope`` value for an error message, cut short."""
    return repr(text if len(text) <= 60 else text[:59] + "…")


def _checked(key: object, actions: object, where: str) -> frozenset[str]:
    if not isinstance(key, str):
        raise CapError(f"{where}: expected a repository pattern, not {shown(key)}")
    if ACCOUNT in key:
        raise CapError(
            f"{where}: {ACCOUNT} has no meaning in a token's cap: write the owner's name"
        )
    try:
        compile_pattern(key)
        return parse_actions(actions)
    except (PatternError, ActionsError) as e:
        raise CapError(f"{where}: {e}") from None


def _cap(written: dict[str, frozenset[str]], given: Mapping[str, str]) -> Cap:
    if not written:
        raise CapError(_EMPTY)
    if len(written) > MAX_CAP_RULES:
        raise CapError(f"a token's cap holds at most {MAX_CAP_RULES} patterns")
    rules = [Rule(compile_pattern(key), actions) for key, actions in written.items()]
    try:
        rule_set = build_rule_set(rules)
    except AmbiguousRules as e:
        raise CapError(f"{given[e.second]}: {e}") from None
    return Cap(MappingProxyType(written), rule_set)
