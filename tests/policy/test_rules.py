"""Rule keys and rule sets: pattern meaning, specificity, ties, and the overlap search."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokend.policy.rules import (
    AmbiguousRules,
    PatternError,
    Rule,
    RuleSet,
    bind,
    build_rule_set,
    common_match,
    compile_pattern,
)

PULL = frozenset({"pull"})


def rule_set(*keys: str) -> RuleSet:
    return build_rule_set(Rule(compile_pattern(key), PULL) for key in keys)


@pytest.mark.parametrize(
    ("key", "matching", "not_matching"),
    [
        ("team/app", ["team/app"], ["team/app2", "team", "team/app/x"]),
        ("team/*", ["team/app", "team/a.b-c"], ["team", "team/app/cli", "other/app"]),
        ("team/**", ["team/app", "team/app/cli/x"], ["team", "teams/app", "other/team/app"]),
        ("*", ["a", "team/app/cli", "localhost:5000/a"], []),
        ("team/app-*", ["team/app-web", "team/app-"], ["team/app", "team/app-x/y"]),
        ("*/app", ["team/app", "x/app"], ["app", "a/b/app"]),
        ("a/**/z", ["a/b/z", "a/b/c/z"], ["a/z", "a/b/z/y"]),
        ("localhost:5000/**", ["localhost:5000/a/b"], ["localhost/a"]),
    ],
)
def test_what_a_key_matches(key: str, matching: list[str], not_matching: list[str]) -> None:
    pattern = compile_pattern(key)
    for name in matching:
        assert pattern.matches(name), name
    for name in not_matching:
        assert not pattern.matches(name), name


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("team/App", "not a repository name"),
        ("team//app", "not a repository name"),
        ("team/app-", "not a repository name"),
        ("team/**x", "whole path component"),
        ("team/a**", "whole path component"),
        ("${user}/app", "only placeholder"),
        ("", "not a repository name"),
    ],
)
def test_keys_that_could_never_match_are_refused(key: str, reason: str) -> None:
    with pytest.raises(PatternError, match=reason):
        compile_pattern(key)


def test_exact_beats_patterns_and_longer_prefix_beats_shorter() -> None:
    rules = rule_set("*", "team/**", "team/app", "team/app-*", "team/web/*")
    assert (m := rules.match("team/app")) is not None and m.key == "team/app"
    assert (m := rules.match("team/app-web")) is not None and m.key == "team/app-*"
    assert (m := rules.match("team/web/cli")) is not None and m.key == "team/web/*"
    assert (m := rules.match("team/web/cli/x")) is not None and m.key == "team/**"
    assert (m := rules.match("other")) is not None and m.key == "*"
    assert rule_set("team/**").match("other") is None


@pytest.mark.parametrize(
    ("first", "second", "example"),
    [
        ("team/*", "team/**", "team/a"),
        ("*", "**", "a"),
        ("a*", "a*b", "ab"),
        ("team/*/x", "team/**", "team/a/x"),
    ],
)
def test_patterns_with_the_same_prefix_that_share_a_name_are_refused(
    first: str, second: str, example: str
) -> None:
    with pytest.raises(AmbiguousRules) as raised:
        rule_set(first, second)
    assert (raised.value.first, raised.value.second, raised.value.example) == (
        first,
        second,
        example,
    )


def test_patterns_with_the_same_prefix_that_cannot_share_a_name_are_fine() -> None:
    rules = rule_set("team/*/web", "team/*/api", "a*x", "a*y")
    assert (m := rules.match("team/one/api")) is not None and m.key == "team/*/api"
    assert (m := rules.match("abx")) is not None and m.key == "a*x"


def test_account_rules_are_bound_per_user_and_checked_for_ties() -> None:
    rules = rule_set("${account}/**", "*", "shared/app")
    alice = bind(rules, "alice")
    assert alice is not None
    assert (m := rules.match("alice/app", alice)) is not None and m.key == "${account}/**"
    assert (m := rules.match("bob/app", alice)) is not None and m.key == "*"
    assert bind(rules, "Not A Component") is None
    with pytest.raises(AmbiguousRules, match="shared/app"):
        bind(rule_set("${account}/app", "shared/app"), "shared")
    with pytest.raises(AmbiguousRules, match="team/a"):
        bind(rule_set("${account}/**", "team/*"), "team")
    assert bind(rule_set("${account}/**", "team/*"), "alice") is not None


# Patterns over a tiny alphabet, so random ones overlap often and names hit them often.
_COMPONENT = st.sampled_from(["a", "b", "ab", "a-b", "*", "a*", "*b", "**"])
_KEYS = st.lists(_COMPONENT, min_size=1, max_size=3).map("/".join)
_NAMES = st.lists(st.sampled_from(["a", "b", "ab", "a-b", "ba", "c"]), min_size=1, max_size=4).map(
    "/".join
)


def reference_match(keys: list[str], name: str) -> str | None:
    """The rule as the README defines it: exact, else the longest literal prefix."""
    matching = [key for key in keys if compile_pattern(key).matches(name)]
    if name in matching:
        return name
    patterns = [key for key in matching if "*" in key]
    if not patterns:
        return None
    return max(patterns, key=lambda key: len(compile_pattern(key).prefix))


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_KEYS, min_size=1, max_size=6, unique=True), st.lists(_NAMES, max_size=10))
def test_match_agrees_with_the_definition(keys: list[str], names: list[str]) -> None:
    try:
        rules = rule_set(*keys)
    except AmbiguousRules as e:
        first, second = compile_pattern(e.first), compile_pattern(e.second)
        assert first.prefix == second.prefix
        assert first.matches(e.example) and second.matches(e.example)
        return
    for name in names:
        found = rules.match(name)
        assert (found.key if found else None) == reference_match(keys, name)


@settings(max_examples=300, deadline=None, database=None)
@given(_KEYS, _KEYS)
def test_common_match_finds_a_shared_name_exactly_when_there_is_one(a: str, b: str) -> None:
    first, second = compile_pattern(a), compile_pattern(b)
    example = common_match(first, second)
    if example is not None:
        assert first.matches(example) and second.matches(example)
        assert "//" not in example and not example.startswith("/") and not example.endswith("/")
        return
    pieces = ["a", "b", "ab", "a-b", "ba", "c", "x"]
    for size in (1, 2, 3):
        for parts in itertools.product(pieces, repeat=size):
            name = "/".join(parts)
            assert not (first.matches(name) and second.matches(name)), name


# Keys without wildcards drawn from distribution's name grammar itself (a registry host, then
# components of lower-case letters and digits joined by ".", "_", "__" or dashes), rather than
# _KEYS filtered: most of _KEYS hold a "*", and filtering them out tripped Hypothesis's
# filter_too_much health check for about one seed in 17. At most 21 + 4 * 38 + 3 characters:
# always within the 255 a name may have.
_ALPHANUMERIC = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_LITERAL_COMPONENT = st.builds(
    lambda first, rest: first + "".join(rest),
    _ALPHANUMERIC,
    st.lists(
        st.builds(str.__add__, st.sampled_from([".", "_", "__", "-", "--"]), _ALPHANUMERIC),
        max_size=3,
    ),
)
_LITERAL_KEYS = st.builds(
    lambda host, components: "/".join([*host, *components]),
    st.lists(st.sampled_from(["localhost:5000", "registry.example.com"]), max_size=1),
    st.lists(_LITERAL_COMPONENT, min_size=1, max_size=4),
)


@given(_LITERAL_KEYS)
def test_a_key_without_wildcards_is_exact(key: str) -> None:
    pattern = compile_pattern(key)
    assert pattern.exact and pattern.prefix == key
    assert pattern.matches(key) and not pattern.matches(key + "/x")
