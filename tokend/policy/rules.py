"""Repository name patterns and rule sets: the matching engine behind every policy decision.

A rule key is an exact repository name or a glob: ``*`` matches within one path component,
``**`` (a whole component) matches one or more components, and the key ``*`` alone matches
every name. ``${account}`` stands for the authenticated user's name. Within one rule set the
most specific match wins: an exact name, then the longest literal prefix (the text before the
first wildcard). Two patterns with the same literal prefix that can match the same name are a
configuration error, found here at load time with an example name, never a runtime surprise.
A rule may hold only for some client networks (``from``): elsewhere it is passed over, and the
next most specific rule that matches decides.

Patterns are compiled once per reload and bucketed by literal prefix, so matching a name costs
a handful of dictionary lookups however many rules there are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from tokend.client_address import IPNetwork
from tokend.policy.networks import ANYWHERE, Address
from tokend.scope import is_valid_name

ACCOUNT = "${account}"
DOUBLE_STAR = "**"
EVERYTHING = "*"


class PatternError(ValueError):
    """A rule key that is neither a repository name nor a pattern that could match one."""


class AmbiguousRules(ValueError):
    """Two rules of one set tie for some name; the message names both and an example."""

    def __init__(self, first: str, second: str, example: str) -> None:
        super().__init__(
            f"{first!r} and {second!r} both match {example!r} with the same literal prefix: "
            "make one of them more specific"
        )
        self.first = first
        self.second = second
        self.example = example


def is_valid_component(text: str) -> bool:
    """A single path component of a repository name (what ``${account}`` must expand to)."""
    return "/" not in text and is_valid_name(text)


def _component_matches(pieces: tuple[str, ...], text: str) -> bool:
    """Whether ``text`` (no ``/``) is ``pieces`` joined by runs of any characters.

    The first piece anchors at the start and the last at the end; each one between is taken
    where it first occurs after the one before. Taking it later only leaves the pieces after it
    less room, so if any placement works the leftmost one does, and the text is scanned once,
    left to right.
    """
    first, last = pieces[0], pieces[-1]
    end = len(text) - len(last)
    if end < len(first) or not text.startswith(first) or not text.endswith(last):
        return False
    position = len(first)
    for index in range(1, len(pieces) - 1):
        found = text.find(pieces[index], position, end)
        if found < 0:
            return False
        position = found + len(pieces[index])
    return True


def _components_match(globs: tuple[tuple[str, ...], ...], parts: list[str], start: int) -> bool:
    """Whether ``parts[start:]`` begins with components matching ``globs`` (it has as many)."""
    for pieces in globs:
        if len(pieces) == 1:
            if parts[start] != pieces[0]:
                return False
        elif not _component_matches(pieces, parts[start]):
            return False
        start += 1
    return True


@dataclass(frozen=True, slots=True)
class Glob:
    """A key that no fast path covers, as component globs around its ``**`` components.

    A component glob is the literal pieces between its ``*`` (one piece: a literal component).
    ``head`` are the components before the first ``**``, ``tail`` those after the last and
    each of ``middles`` those between two; ``deep`` says whether there is a ``**`` at all.
    """

    head: tuple[tuple[str, ...], ...]
    middles: tuple[tuple[tuple[str, ...], ...], ...] = ()
    tail: tuple[tuple[str, ...], ...] = ()
    deep: bool = False

    @classmethod
    def of(cls, key: str) -> Glob:
        runs: list[tuple[tuple[str, ...], ...]] = [()]
        for part in key.split("/"):
            if part == DOUBLE_STAR:
                runs.append(())
            else:
                runs[-1] += (tuple(part.split("*")),)
        if len(runs) == 1:
            return cls(runs[0])
        return cls(runs[0], tuple(runs[1:-1]), runs[-1], deep=True)

    def matches(self, name: str) -> bool:
        """Linear in ``name`` for a given key: every component is tried against a bounded
        number of component globs.

        A ``**`` covers one or more whole components (any non-empty text between two ``/``
        of the key). Every run of components between two ``**`` is placed where it first
        fits after the one before: the ``**`` after it takes any text, so an earlier place
        never leaves the later runs less room than a later one would.
        """
        parts = name.split("/")
        if not self.deep:
            return len(parts) == len(self.head) and _components_match(self.head, parts, 0)
        end = len(parts) - len(self.tail)  # the first component of the tail
        start = len(self.head)  # the first component the next ** covers
        if end <= start or not (
            _components_match(self.head, parts, 0) and _components_match(self.tail, parts, end)
        ):
            return False
        for run in self.middles:
            # The ** covers parts[start:place]: at least one component, and not one empty one.
            place = start + 1 if parts[start] else start + 2
            while place + len(run) < end and not _components_match(run, parts, place):
                place += 1
            start = place + len(run)
            if start >= end:
                return False
        return end - start > 1 or (end - start == 1 and parts[start] != "")


@dataclass(frozen=True, slots=True)
class Pattern:
    """One compiled rule key: an exact name, ``prefix/**``, ``prefix*`` or a :class:`Glob`.

    The common shapes are tested with string operations; a glob is built only for the rest,
    which keeps loading thousands of per-user patterns fast. Matching never backtracks: it
    takes time linear in the name whatever the key (a request may ask for 64 names).
    """

    key: str
    prefix: str
    glob: Glob | None
    uses_account: bool
    exact: bool
    one_level: bool = False

    def matches(self, name: str) -> bool:
        if self.exact:
            return name == self.key
        if self.glob is not None:
            return self.glob.matches(name)
        if not name.startswith(self.prefix):
            return False
        if self.one_level:
            return name.find("/", len(self.prefix)) < 0
        return len(name) > len(self.prefix)


@lru_cache(maxsize=16384)
def compile_pattern(key: str) -> Pattern:
    """Compile a rule key; raises :class:`PatternError` with a reason an operator can act on.

    Cached: thousands of users share the same few keys, and a Pattern is immutable.
    """
    if key in (EVERYTHING, DOUBLE_STAR):
        return Pattern(key, "", None, uses_account=False, exact=False)
    if "*" not in key and "$" not in key:  # a plain name, the commonest key by far
        if not is_valid_name(key):
            raise PatternError("not a repository name, * or a pattern that could match one")
        return Pattern(key, key, None, uses_account=False, exact=True)
    uses_account = ACCOUNT in key
    stand_in = key.replace(ACCOUNT, "a")
    if "$" in stand_in:
        raise PatternError("the only placeholder is ${account}")
    components = stand_in.split("/")
    for component in components:
        if DOUBLE_STAR in component and component != DOUBLE_STAR:
            raise PatternError("** must be a whole path component (team/**)")
    if not is_valid_name("/".join(c.replace("*", "a") for c in components)):
        raise PatternError("not a repository name, * or a pattern that could match one")
    if "*" not in key:
        return Pattern(key, key, None, uses_account, exact=True)
    prefix = key[: key.index("*")]
    if key.endswith("/" + DOUBLE_STAR) and len(prefix) == len(key) - len(DOUBLE_STAR):
        return Pattern(key, prefix, None, uses_account, exact=False)
    if len(prefix) == len(key) - 1:
        return Pattern(key, prefix, None, uses_account, exact=False, one_level=True)
    return Pattern(key, prefix, Glob.of(key), uses_account, exact=False)


def bind_account(key: str, account: str) -> Pattern | None:
    """A ``${account}`` key with the account filled in; None if it cannot name a component.

    The key was validated when it was compiled and a path component fits wherever
    ``${account}`` may stand, so this only substitutes: it runs once per member per reload.
    """
    if not is_valid_component(account):
        return None
    template = compile_pattern(key)
    bound_key = key.replace(ACCOUNT, account)
    prefix = template.prefix.replace(ACCOUNT, account)
    if template.glob is None:
        return Pattern(
            bound_key, prefix, None, False, exact=template.exact, one_level=template.one_level
        )
    return Pattern(bound_key, prefix, Glob.of(bound_key), uses_account=False, exact=False)


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule key and the actions it allows (none: it denies), from ``networks`` only if any."""

    pattern: Pattern
    actions: frozenset[str]
    networks: tuple[IPNetwork, ...] = ()

    @property
    def key(self) -> str:
        return self.pattern.key

    def applies_from(self, address: Address) -> bool:
        """Whether the rule holds for a client at ``address``: always without ``networks``;
        with them, only from inside one (never without an address)."""
        if not self.networks or address is ANYWHERE:
            return True
        return address is not None and any(address in network for network in self.networks)


@dataclass(frozen=True, slots=True)
class Bound:
    """A ``${account}`` rule with one account filled in, compiled when the policy loads."""

    pattern: Pattern
    rule: Rule


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one user, one group or the anonymous list, compiled for fast lookup.

    ``${account}`` rules are kept as ``templates``; :func:`bind` compiles them per account.
    """

    exact: Mapping[str, Rule]
    by_prefix: Mapping[str, tuple[Rule, ...]]
    prefix_lengths: tuple[int, ...]
    templates: tuple[Rule, ...] = ()

    def __len__(self) -> int:
        return len(self.exact) + sum(map(len, self.by_prefix.values())) + len(self.templates)

    def rules(self) -> Iterable[Rule]:
        yield from self.exact.values()
        for bucket in self.by_prefix.values():
            yield from bucket
        yield from self.templates

    def match(
        self,
        name: str,
        bound: tuple[Bound, ...] = (),
        address: Address = None,
        skipped: list[Rule] | None = None,
    ) -> Rule | None:
        """The most specific rule matching ``name`` that applies from ``address``, counting
        ``bound`` templates in. A matching rule that does not apply there is passed over (and
        added to ``skipped``): each rule on the way is looked at once, as before."""
        best: Rule | None = self.exact.get(name)
        if best is not None:
            if best.applies_from(address):
                return best
            if skipped is not None:
                skipped.append(best)
            best = None
        best_length = -1
        for length in self.prefix_lengths:
            if length > len(name):
                continue
            for rule in self.by_prefix.get(name[:length], ()):
                if rule.pattern.matches(name):
                    if rule.applies_from(address):
                        best, best_length = rule, length
                        break
                    if skipped is not None:
                        skipped.append(rule)
            if best is not None:
                break
        for template in bound:
            if not template.pattern.matches(name):
                continue
            wins = template.pattern.exact or len(template.pattern.prefix) > best_length
            if not template.rule.applies_from(address):
                if skipped is not None and wins:
                    skipped.append(template.rule)
                continue
            if template.pattern.exact:
                return template.rule
            if wins:
                best, best_length = template.rule, len(template.pattern.prefix)
        return best


EMPTY_RULES = RuleSet({}, {}, ())


def build_rule_set(rules: Iterable[Rule], *, ambiguity_is_error: bool = True) -> RuleSet:
    """Bucket compiled rules; raises :class:`AmbiguousRules` when two tie for some name.

    ``${account}`` rules stay templates here; :func:`bind` checks them per account.
    """
    exact: dict[str, Rule] = {}
    buckets: dict[str, list[Rule]] = {}
    templates: list[Rule] = []
    for rule in rules:
        if rule.pattern.uses_account:
            templates.append(rule)
        elif rule.pattern.exact:
            exact[rule.key] = rule
        else:
            bucket = buckets.setdefault(rule.pattern.prefix, [])
            if ambiguity_is_error:
                for other in bucket:
                    _raise_if_overlapping(other.pattern, rule.pattern)
            bucket.append(rule)
    if not exact and not buckets and not templates:
        return EMPTY_RULES
    return RuleSet(
        exact=exact,
        by_prefix={prefix: tuple(bucket) for prefix, bucket in buckets.items()},
        prefix_lengths=tuple(sorted({len(prefix) for prefix in buckets}, reverse=True)),
        templates=tuple(templates),
    )


def bind(rule_set: RuleSet, account: str) -> tuple[Bound, ...] | None:
    """Compile a set's ``${account}`` rules for ``account``; None if its name cannot be a
    path component (those rules then never match it). Raises :class:`AmbiguousRules` when a
    bound rule ties with another rule of the set."""
    bound: list[Bound] = []
    for template in rule_set.templates:
        pattern = bind_account(template.key, account)
        if pattern is None:
            return None
        if pattern.exact:
            static = rule_set.exact.get(pattern.key)
            if static is not None:
                raise AmbiguousRules(template.key, static.key, pattern.key)
        else:
            for other in rule_set.by_prefix.get(pattern.prefix, ()):
                _raise_if_overlapping(other.pattern, pattern, "", template.key)
        for earlier in bound:
            if earlier.pattern.exact and pattern.exact and earlier.pattern.key == pattern.key:
                raise AmbiguousRules(earlier.rule.key, template.key, pattern.key)
            if earlier.pattern.prefix == pattern.prefix and not (
                earlier.pattern.exact or pattern.exact
            ):
                _raise_if_overlapping(earlier.pattern, pattern, earlier.rule.key, template.key)
        bound.append(Bound(pattern, template))
    return tuple(bound)


def _raise_if_overlapping(
    first: Pattern, second: Pattern, first_key: str = "", second_key: str = ""
) -> None:
    example = common_match(first, second)
    if example is not None:
        raise AmbiguousRules(first_key or first.key, second_key or second.key, example)


# Pattern tokens for the overlap search: a literal character, "one non-slash character zero or
# more times" (*), "any character" and "any character zero or more times" (** is ANY ANY_STAR).
_STAR, _ANY, _ANY_STAR = object(), object(), object()


def _tokens(pattern: Pattern) -> list[object]:
    if pattern.exact:
        return list(pattern.key)
    if pattern.key in (EVERYTHING, DOUBLE_STAR):
        return [_ANY, _ANY_STAR]
    tokens: list[object] = []
    for index, part in enumerate(pattern.key.split("/")):
        if index:
            tokens.append("/")
        if part == DOUBLE_STAR:
            tokens.extend((_ANY, _ANY_STAR))
            continue
        for char in part:
            tokens.append(_STAR if char == "*" else char)
    return tokens


def _closure(tokens: list[object], states: Iterable[int]) -> frozenset[int]:
    result = set(states)
    stack = list(result)
    while stack:
        state = stack.pop()
        if state < len(tokens) and tokens[state] in (_STAR, _ANY_STAR) and state + 1 not in result:
            result.add(state + 1)
            stack.append(state + 1)
    return frozenset(result)


def _step(tokens: list[object], states: frozenset[int], char: str) -> frozenset[int]:
    following: set[int] = set()
    for state in states:
        if state == len(tokens):
            continue
        token = tokens[state]
        if token is _STAR:
            if char != "/":
                following.add(state)
        elif token is _ANY_STAR:
            following.add(state)
        elif token is _ANY or token == char:
            following.add(state + 1)
    return _closure(tokens, following)


def common_match(first: Pattern, second: Pattern) -> str | None:
    """A shortest string both patterns match, or None if their languages are disjoint.

    A breadth-first search over pairs of NFA state sets; the alphabet is the literal characters
    of both patterns, ``/`` and one character neither mentions (it stands for all the others).
    Strings with an empty path component are skipped: they are no repository names, and the
    example ends up in an error message.
    """
    a, b = _tokens(first), _tokens(second)
    literals = {t for t in (*a, *b) if isinstance(t, str)}
    other = next(c for c in "abcdefghijklmnopqrstuvwxyz0123456789" if c not in literals)
    alphabet = sorted(literals | {"/", other})
    start = (_closure(a, [0]), _closure(b, [0]), True)
    seen = {start}
    queue: deque[tuple[frozenset[int], frozenset[int], bool, str]] = deque([(*start, "")])
    while queue:
        states_a, states_b, at_boundary, text = queue.popleft()
        if len(a) in states_a and len(b) in states_b and not at_boundary:
            return text
        for char in alphabet:
            if char == "/" and at_boundary:
                continue  # names have no empty path components: prefer examples that are names
            key = (_step(a, states_a, char), _step(b, states_b, char), char == "/")
            if key[0] and key[1] and key not in seen:
                seen.add(key)
                queue.append((*key, text + char))
    return None
