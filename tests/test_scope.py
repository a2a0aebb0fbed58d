"""The scope grammar, including the awkward corners real clients produce."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokend.scope import (
    MAX_SCOPES,
    ResourceScope,
    ScopeError,
    is_valid_name,
    parse_scope,
    parse_scopes,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("repository:foo:pull", ResourceScope("repository", "foo", ("pull",))),
        ("repository:a/b/c:pull,push", ResourceScope("repository", "a/b/c", ("pull", "push"))),
        (
            "repository:localhost:5000/team/app:pull",
            ResourceScope("repository", "localhost:5000/team/app", ("pull",)),
        ),
        (
            "repository:registry.example.com/x_y.z__w-v:push",
            ResourceScope("repository", "registry.example.com/x_y.z__w-v", ("push",)),
        ),
        ("repository(plugin):foo:pull", ResourceScope("repository", "foo", ("pull",))),
        ("registry:catalog:*", ResourceScope("registry", "catalog", ("*",))),
        ("repository:foo:pull,pull", ResourceScope("repository", "foo", ("pull",))),
        ("repository:foo:", ResourceScope("repository", "foo", ())),
        ("madeup:foo:read", ResourceScope("madeup", "foo", ("read",))),
    ],
)
def test_valid_scopes(text: str, expected: ResourceScope) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "repository",
        "repository:foo",
        "repository::pull",
        "Repository:foo:pull",
        "repository:Foo:pull",
        "repository:foo/:pull",
        "repository:/foo:pull",
        "repository:foo//bar:pull",
        "repository:foo:PULL",
        "repository:foo:pu-ll",
        "repository:-foo:pull",
        "repository(:foo:pull",
        "repository:" + "a" * 256 + ":pull",
        "repository:foo bar:pull",
    ],
)
def test_malformed_scopes_name_the_scope(text: str) -> None:
    with pytest.raises(ScopeError) as raised:
        parse_scope(text)
    assert repr(text[:100]) in str(raised.value)


def test_repeated_and_space_separated_scopes_are_all_answered() -> None:
    scopes = parse_scopes(
        ["repository:a:pull repository:b:push", "registry:catalog:*", "repository:a:push"]
    )
    assert scopes == (
        ResourceScope("repository", "a", ("pull", "push")),
        ResourceScope("repository", "b", ("push",)),
        ResourceScope("registry", "catalog", ("*",)),
    )


def test_resource_class_is_dropped_and_merged_with_the_plain_type() -> None:
    scopes = parse_scopes(["repository(plugin):a:pull", "repository:a:push"])
    assert scopes == (ResourceScope("repository", "a", ("pull", "push")),)


def test_too_many_scopes() -> None:
    with pytest.raises(ScopeError, match="more than"):
        parse_scopes([f"repository:r{i}:pull" for i in range(MAX_SCOPES + 1)])


def test_empty_values_mean_no_scope() -> None:
    assert parse_scopes(["", "  "]) == ()


_component = st.from_regex(r"[a-z0-9]{1,5}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,5}){0,2}", fullmatch=True)
_names = st.builds(
    lambda host, parts: "/".join(([host] if host else []) + parts),
    st.one_of(st.none(), st.from_regex(r"[a-z]{1,8}(?:\.[a-z]{1,8})?:[0-9]{1,5}", fullmatch=True)),
    st.lists(_component, min_size=1, max_size=4),
)
_actions = st.lists(st.sampled_from(["pull", "push", "delete", "*"]), min_size=1, unique=True)


@given(st.sampled_from(["repository", "registry"]), _names, _actions)
def test_valid_scopes_round_trip(kind: str, name: str, actions: list[str]) -> None:
    scope = ResourceScope(kind, name, tuple(actions))
    assert is_valid_name(name)
    assert parse_scope(str(scope)) == scope


@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_scope_error(text: str) -> None:
    try:
        parse_scopes([text])
    except ScopeError:
        pass
