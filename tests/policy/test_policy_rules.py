"""Authorization rules: patterns, ${account}, groups, delete and ``*`` actions, catalog rights,
and the properties every policy keeps (never more than asked or allowed; seed files unchanged)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokend.policy.changes import policy_change
from tokend.policy.documents import (
    anonymous_from_document,
    groups_from_document,
    users_from_document,
)
from tokend.policy.files import load_policy
from tokend.policy.model import Policy, PolicyError
from tokend.policy.report import overlap_notes, unused_rule_warnings
from tokend.scope import ResourceScope

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()


def build(
    users: dict[str, dict[str, Any]],
    groups: dict[str, Any] | None = None,
    anonymous: dict[str, Any] | None = None,
) -> Policy:
    group_policies = groups_from_document({} if groups is None else groups, "groups.json")
    documents = {name: {"pass_hash": HASH, **entry} for name, entry in users.items()}
    anon, _ = anonymous_from_document(anonymous or {}, "repositories.json")
    return Policy(
        users_from_document(documents, "users.json", group_policies), anon, group_policies
    )


def grant(policy: Policy, account: str | None, text: str) -> tuple[str, ...]:
    kind, name, actions = text.rsplit(":", 2) if text.count(":") > 2 else text.split(":")
    return policy.grant(account, ResourceScope(kind, name, tuple(actions.split(","))))


PERSONAL = {"staff": {"repositories": {"${account}/**": ["*"], "*": ["pull"], "secret/**": []}}}


def test_personal_namespaces_through_a_group() -> None:
    policy = build({"alice": {"groups": ["staff"]}, "bob": {"groups": ["staff"]}}, PERSONAL)
    assert grant(policy, "alice", "repository:alice/app:pull,push,delete") == (
        "pull",
        "push",
        "delete",
    )
    assert grant(policy, "bob", "repository:alice/app:pull,push,delete") == ("pull",)
    assert grant(policy, "alice", "repository:alice:push") == ()
    assert grant(policy, "alice", "repository:secret/x:pull") == ()


def test_rights_are_the_union_of_own_rules_and_every_group() -> None:
    groups = {
        "readers": {"repositories": {"*": ["pull"]}},
        "web": {"repositories": {"web/**": ["pull", "push"], "web/prod": []}},
    }
    policy = build(
        {"u": {"groups": ["readers", "web"], "repositories": {"web/prod": ["delete"]}}}, groups
    )
    assert grant(policy, "u", "repository:web/app:pull,push,delete") == ("pull", "push")
    assert grant(policy, "u", "repository:web/prod:pull,push,delete") == ("pull", "delete")
    assert grant(policy, "u", "repository:other:pull,push") == ("pull",)


def test_star_action_means_every_action_and_a_star_request_lists_them() -> None:
    policy = build({"u": {"repositories": {"mine/**": ["*"], "*": ["pull"]}}})
    assert grant(policy, "u", "repository:mine/app:*") == ("pull", "push", "delete")
    assert grant(policy, "u", "repository:other:*") == ("pull",)


def test_account_in_a_users_own_rules_is_their_name() -> None:
    policy = build({"carol": {"repositories": {"${account}/**": ["pull", "push"]}}})
    assert grant(policy, "carol", "repository:carol/x:push") == ("push",)
    assert grant(policy, "carol", "repository:dave/x:pull") == ()


def test_catalog_from_user_then_groups_then_the_seed_default() -> None:
    groups = {"open": {"catalog": True}, "closed": {"catalog": False}, "plain": {}}
    policy = build(
        {
            "default": {},
            "plain": {"groups": ["plain"]},
            "denied": {"groups": ["closed"]},
            "either": {"groups": ["closed", "open"]},
            "own": {"groups": ["open"], "catalog": False},
        },
        groups,
    )
    catalog = {u: grant(policy, u, "registry:catalog:*") for u in policy.users}
    assert catalog == {
        "default": ("*",),
        "plain": ("*",),
        "denied": (),
        "either": ("*",),
        "own": (),
    }


def test_anonymous_patterns_in_whitelist_and_blacklist() -> None:
    white = build({}, anonymous={"repositories": ["public/**", "mirror/*"]})
    assert grant(white, None, "repository:public/a/b:pull,push,delete") == ("pull",)
    assert grant(white, None, "repository:mirror/a/b:pull") == ()
    black = build({}, anonymous={"blacklist": True, "repositories": ["private/**"]})
    assert grant(black, None, "repository:private/x:pull") == ()
    assert grant(black, None, "repository:open:pull,delete") == ("pull",)


@pytest.mark.parametrize(
    ("users", "groups", "anonymous", "message"),
    [
        ({"u": {"groups": ["nope"]}}, {}, {}, 'users.json: u.groups[0]: no group "nope"'),
        ({"u": {"groups": "staff"}}, {}, {}, "u.groups: expected a list"),
        ({"u": {"catalog": "yes"}}, {}, {}, "u.catalog: expected true or false"),
        (
            {"u": {"repositories": {"a/*": ["pull"], "a/**": []}}},
            {},
            {},
            "users.json: u.repositories[\"a/**\"]: 'a/*' and 'a/**' both match 'a/a'",
        ),
        ({}, {"g": {"repositories": {"x/**y": ["pull"]}}}, {}, "whole path component"),
        ({}, {"g": {"rules": {}}}, {}, "groups.json: g.rules: unknown key"),
        ({}, [], {}, "groups.json: expected an object"),
        (
            {"team": {"groups": ["g"]}},
            {"g": {"repositories": {"${account}/**": ["pull"], "team/*": []}}},
            {},
            "users.json: team.groups[0]: in group 'g' for 'team'",
        ),
        ({}, {}, {"repositories": ["${account}/x"]}, "no meaning for anonymous"),
        ({}, {}, {"repositories": ["a/**b"]}, "repositories[0]: not a repository name or pattern"),
        ({"u": {"repositories": {"x": ["push", "delete"]}}}, {}, {}, "push requires pull"),
        (
            {"u": {"repositories": {"x": ["p" * 5000]}}},
            {},
            {},
            'unknown action "' + "p" * 58 + "… (known: pull, push, delete, *)",
        ),
    ],
)
def test_rule_errors_are_located(
    users: dict[str, Any], groups: Any, anonymous: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        build(users, groups, anonymous)
    assert message in str(raised.value)


def test_groups_json_is_optional_and_read_with_the_others(tmp_path: Path) -> None:
    (tmp_path / "users.json").write_text(f'{{"u": {{"pass_hash": "{HASH}", "groups": ["g"]}}}}')
    (tmp_path / "repositories.json").write_text("{}")
    with pytest.raises(PolicyError, match=r'u.groups\[0\]: no group "g" in groups.json'):
        load_policy(tmp_path)
    (tmp_path / "groups.json").write_text('{"g": {"repositories": {"g/**": ["pull"]}}}')
    policy = load_policy(tmp_path).policy
    assert grant(policy, "u", "repository:g/app:pull") == ("pull",)
    (tmp_path / "groups.json").write_text('{"g": {"repositories": {"g/**": ["pull"]}')
    with pytest.raises(PolicyError) as raised:
        load_policy(tmp_path)
    assert raised.value.file == str(tmp_path / "groups.json") and raised.value.line == 1


def test_reports_unused_groups_unbindable_accounts_and_overrides() -> None:
    policy = build(
        {"Odd.Name@corp": {"groups": ["staff"]}, "ok": {"repositories": {"a/**": ["pull"]}}},
        {**PERSONAL, "idle": {"repositories": {"x": ["pull"]}}},
    )
    warnings = unused_rule_warnings(policy)
    assert (
        "groups.json: idle: no user is a member and it names no ldap_groups, its rules never apply"
    ) in warnings
    assert any("group staff never match for 'Odd.Name@corp'" in w for w in warnings)
    assert grant(policy, "Odd.Name@corp", "repository:odd/x:pull") == ("pull",)
    notes = overlap_notes(policy)
    assert notes == [
        "groups.json staff: 'secret/**' (denies) takes precedence over '*' [pull] "
        "for names like 'secret/a'"
    ]


def test_a_change_to_a_group_changes_its_members() -> None:
    users = {"a": {"groups": ["g"]}, "b": {}}
    old = build(users, {"g": {"repositories": {"x": ["pull"]}}})
    new = build(users, {"g": {"repositories": {"x": ["pull", "push"]}}})
    change = policy_change(old, new)
    assert change.changed == ("a",)
    assert not policy_change(new, build(users, {"g": {"repositories": {"x": ["pull", "push"]}}}))


# Random policies over a small world of names, so rules and requests meet often.
_NAMES = ["a", "b", "a/b", "a/b/c", "alice/x", "bob/x", "team/app", "team/app/cli"]
_KEYS = st.sampled_from(
    ["*", "a", "a/*", "a/**", "team/*", "team/**/cli", "${account}/**", "team/app", "b"]
)
_RULE_ACTIONS = st.sampled_from([[], ["pull"], ["pull", "push"], ["delete"], ["*"]])
_RULES = st.dictionaries(_KEYS, _RULE_ACTIONS, max_size=4)
_ASKED = st.lists(st.sampled_from(["pull", "push", "delete", "*", "other"]), max_size=4)


def _build_or_skip(users: dict[str, Any], groups: dict[str, Any], anonymous: dict[str, Any]) -> Any:
    try:
        return build(users, groups, anonymous)
    except PolicyError as e:
        assert "both match" in str(e)  # the only error these documents can have: a tie
        return None


@settings(max_examples=400, deadline=None, database=None)
@given(
    users=st.dictionaries(
        st.sampled_from(["alice", "bob", "Bad@Name"]),
        st.fixed_dictionaries(
            {"repositories": _RULES},
            optional={"groups": st.lists(st.sampled_from(["g1", "g2"]), max_size=2)},
        ),
        max_size=3,
    ),
    groups=st.fixed_dictionaries({"g1": st.fixed_dictionaries({"repositories": _RULES})}).map(
        lambda g: {**g, "g2": {"repositories": {"team/**": ["pull", "push"]}}}
    ),
    anonymous=st.fixed_dictionaries(
        {
            "blacklist": st.booleans(),
            "repositories": st.lists(st.sampled_from(["a", "a/**", "team/*", "*"]), max_size=3),
        }
    ),
    account=st.sampled_from([None, "alice", "bob", "Bad@Name", "ghost"]),
    kind=st.sampled_from(["repository", "registry", "other"]),
    name=st.sampled_from([*_NAMES, "catalog"]),
    asked=_ASKED,
)
def test_granted_is_within_asked_and_allowed_and_anonymous_only_pulls(
    users: dict[str, Any],
    groups: dict[str, Any],
    anonymous: dict[str, Any],
    account: str | None,
    kind: str,
    name: str,
    asked: list[str],
) -> None:
    policy = _build_or_skip(users, groups, anonymous)
    if policy is None:
        return
    granted = policy.grant(account, ResourceScope(kind, name, tuple(asked)))
    allowed = policy.allowed(account, kind, name)
    assert set(granted) <= allowed
    assert set(granted) <= set(asked) | (allowed if "*" in asked else set())
    assert allowed == policy.decide(account, kind, name).actions
    if account is None:
        assert not set(granted) & {"push", "delete"}
    if account not in policy.users:
        assert account is None or granted == ()


_SEED_RULES = st.dictionaries(
    st.sampled_from(["*", "a", "b", "a/b", "c/d/e"]),
    st.sampled_from([[], ["pull"], ["pull", "push"]]),
    max_size=4,
)


def seed_grant(
    users: dict[str, dict[str, list[str]]],
    anonymous: dict[str, Any],
    account: str | None,
    kind: str,
    name: str,
    asked: list[str],
) -> tuple[str, ...]:
    """The seed format's meaning, written out independently of tokend's rule engine."""
    if (kind, name) == ("registry", "catalog"):
        allowed = {"*"} if (account is not None or anonymous.get("catalog")) else set()
    elif kind != "repository":
        allowed = set()
    elif account is None:
        listed = name in anonymous.get("repositories", [])
        allowed = {"pull"} if listed != anonymous.get("blacklist", False) else set()
    else:
        rules = users[account]
        allowed = set(rules[name] if name in rules else rules.get("*", []))
    if "*" in asked and "*" not in allowed:
        return tuple(a for a in ("pull", "push") if a in allowed)
    return tuple(a for a in asked if a in allowed)


@settings(max_examples=400, deadline=None, database=None)
@given(
    users=st.dictionaries(st.sampled_from(["u", "v"]), _SEED_RULES, max_size=2),
    anonymous=st.fixed_dictionaries(
        {},
        optional={
            "blacklist": st.booleans(),
            "repositories": st.lists(st.sampled_from(["a", "b", "a/b"]), max_size=3),
            "catalog": st.booleans(),
        },
    ),
    kind=st.sampled_from(["repository", "registry", "other"]),
    name=st.sampled_from(["a", "b", "a/b", "c/d/e", "x", "catalog"]),
    asked=st.lists(st.sampled_from(["pull", "push", "*", "delete"]), max_size=3),
    data=st.data(),
)
def test_a_seed_format_policy_means_exactly_what_it_meant(
    users: dict[str, dict[str, list[str]]],
    anonymous: dict[str, Any],
    kind: str,
    name: str,
    asked: list[str],
    data: st.DataObject,
) -> None:
    policy = build({u: {"repositories": rules} for u, rules in users.items()}, None, anonymous)
    account = data.draw(st.sampled_from([None, *users]))
    scope = ResourceScope(kind, name, tuple(dict.fromkeys(asked)))
    assert policy.grant(account, scope) == seed_grant(
        users, anonymous, account, kind, name, list(scope.actions)
    )
