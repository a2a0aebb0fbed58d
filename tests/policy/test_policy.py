"""Policy building (validation with located errors) and evaluation (requested ∩ allowed)."""

from __future__ import annotations

import json
from pathlib import Path

import bcrypt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import REPO

from tokend.policy.documents import anonymous_from_document, users_from_document
from tokend.policy.files import load_policy
from tokend.policy.model import AnonymousPolicy, Policy, PolicyError
from tokend.scope import ResourceScope

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()


def scope(text: str) -> ResourceScope:
    kind, name, actions = text.split(":")
    return ResourceScope(kind, name, tuple(actions.split(",")))


def make_policy(users: dict[str, dict[str, list[str]]], **anonymous: object) -> Policy:
    document = {name: {"pass_hash": HASH, "repositories": repos} for name, repos in users.items()}
    anon, _ = anonymous_from_document(anonymous, "repositories.json")
    return Policy(users_from_document(document, "users.json"), anon)


def test_grant_is_the_intersection_of_asked_and_allowed() -> None:
    policy = make_policy({"bar": {"*": ["pull", "push"]}, "foo": {"*": ["pull"]}})
    assert policy.grant("bar", scope("repository:a:pull")) == ("pull",)
    assert policy.grant("bar", scope("repository:a:push,pull")) == ("push", "pull")
    assert policy.grant("foo", scope("repository:a:pull,push")) == ("pull",)
    assert policy.grant("foo", scope("repository:a:delete")) == ()


def test_exact_name_wins_over_star_and_can_deny() -> None:
    policy = make_policy({"u": {"*": ["pull", "push"], "secret": [], "ro": ["pull"]}})
    assert policy.grant("u", scope("repository:secret:pull")) == ()
    assert policy.grant("u", scope("repository:ro:pull,push")) == ("pull",)
    assert policy.grant("u", scope("repository:other:pull,push")) == ("pull", "push")


def test_without_star_only_listed_repositories() -> None:
    policy = make_policy({"u": {"team/app": ["pull"]}})
    assert policy.grant("u", scope("repository:team/app:pull")) == ("pull",)
    assert policy.grant("u", scope("repository:team/other:pull")) == ()


def test_star_action_asks_for_everything_allowed_but_never_grants_star() -> None:
    policy = make_policy({"u": {"*": ["pull"]}})
    assert policy.grant("u", scope("repository:a:*")) == ("pull",)


def test_unknown_users_and_unknown_types_get_nothing() -> None:
    policy = make_policy({"u": {"*": ["pull", "push"]}})
    assert policy.grant("ghost", scope("repository:a:pull")) == ()
    assert policy.grant("u", scope("madeup:a:pull")) == ()
    assert policy.grant("u", scope("registry:other:*")) == ()


def test_anonymous_whitelist_and_blacklist_give_only_pull() -> None:
    white = make_policy({}, blacklist=False, repositories=["public/app"])
    assert white.grant(None, scope("repository:public/app:pull,push")) == ("pull",)
    assert white.grant(None, scope("repository:private/app:pull")) == ()
    black = make_policy({}, blacklist=True, repositories=["private/app"])
    assert black.grant(None, scope("repository:private/app:pull")) == ()
    assert black.grant(None, scope("repository:anything:pull,push")) == ("pull",)


def test_catalog_for_users_and_for_anonymous_only_when_enabled() -> None:
    closed = make_policy({"u": {}})
    assert closed.grant("u", scope("registry:catalog:*")) == ("*",)
    assert closed.grant(None, scope("registry:catalog:*")) == ()
    opened = make_policy({}, catalog=True)
    assert opened.grant(None, scope("registry:catalog:*")) == ("*",)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "users.json: expected an object"),
        ({"a": {"pass_hash": HASH, "repos": {}}}, "users.json: a.repos: unknown key"),
        ({"a": {"pass_hash": 12}}, "users.json: a.pass_hash: expected a bcrypt hash"),
        ({"a": {"pass_hash": "plaintext"}}, "a.pass_hash: expected a bcrypt hash"),
        (
            {"alice": {"pass_hash": HASH, "repositories": {"a/b": ["pusj"]}}},
            'users.json: alice.repositories["a/b"]: unknown action "pusj"',
        ),
        (
            {"a": {"pass_hash": HASH, "repositories": {"x": ["push"]}}},
            "a.repositories.x: push requires pull",
        ),
        (
            {"a": {"pass_hash": HASH, "repositories": {"Bad Name": ["pull"]}}},
            'a.repositories["Bad Name"]: not a repository name',
        ),
        ({"a": {"pass_hash": HASH, "repositories": {"x": "pull"}}}, "expected a list"),
        ({"a:b": {"pass_hash": HASH}}, "no ':'"),
        ({"a": "x"}, "users.json: a: expected an object"),
    ],
)
def test_users_errors_are_located(document: object, message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        users_from_document(document, "users.json")
    assert message in str(raised.value)


def test_htpasswd_style_hashes_are_accepted() -> None:
    for prefix in ("$2a$", "$2b$", "$2y$"):
        users = users_from_document({"u": {"pass_hash": prefix + HASH[4:]}}, "users.json")
        assert bcrypt.checkpw(b"pw", users["u"].pass_hash)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"blacklist": "yes"}, "blacklist: expected true or false"),
        ({"whitelist": True}, "whitelist: unknown key"),
        ({"blacklist": True, "backlist": True}, "both"),
        ({"repositories": "a"}, "expected a list"),
        ({"repositories": ["ok", "Not OK"]}, "repositories[1]: not a repository name"),
        ({"catalog": 1}, "catalog: expected true or false"),
    ],
)
def test_repositories_errors_are_located(document: object, message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        anonymous_from_document(document, "repositories.json")
    assert message in str(raised.value)


def test_misspelt_backlist_still_works_with_a_warning() -> None:
    anonymous, warnings = anonymous_from_document(
        {"backlist": True, "repositories": ["x"]}, "repositories.json"
    )
    assert anonymous == AnonymousPolicy(blacklist=True, repositories=frozenset({"x"}))
    assert warnings and "deprecated" in warnings[0]


def write(directory: Path, users: str, repositories: str) -> None:
    (directory / "users.json").write_text(users)
    (directory / "repositories.json").write_text(repositories)


def test_load_policy_reports_syntax_errors_by_line_and_column(tmp_path: Path) -> None:
    write(tmp_path, '{\n  "a": {\n    "pass_hash": \n}', "{}")
    with pytest.raises(PolicyError) as raised:
        load_policy(tmp_path)
    error = raised.value
    assert error.file == str(tmp_path / "users.json")
    assert (error.line, error.column) == (4, 1)
    assert str(error).startswith(f"{tmp_path / 'users.json'}: line 4 column 1: ")


def test_load_policy_rejects_duplicate_keys_and_missing_files(tmp_path: Path) -> None:
    write(tmp_path, "{}", '{"blacklist": false, "blacklist": true}')
    with pytest.raises(PolicyError, match='duplicate key "blacklist"'):
        load_policy(tmp_path)
    (tmp_path / "repositories.json").unlink()
    with pytest.raises(PolicyError, match=r"repositories\.json: file not found"):
        load_policy(tmp_path)


def test_shipped_config_loads_with_the_seed_users() -> None:
    policy = load_policy(REPO / "config").policy
    assert bcrypt.checkpw(b"foo", policy.users["foo"].pass_hash)
    assert bcrypt.checkpw(b"bar", policy.users["bar"].pass_hash)
    assert policy.grant("foo", scope("repository:x:pull,push")) == ("pull",)
    assert policy.grant("bar", scope("repository:x:pull,push")) == ("pull", "push")


_actions = st.lists(st.sampled_from(["pull", "push", "delete", "*", "x"]), max_size=4)
_rules = st.dictionaries(
    st.sampled_from(["*", "a", "b", "c/d"]),
    st.sampled_from([[], ["pull"], ["pull", "push"]]),
    max_size=4,
)


@given(
    st.dictionaries(st.sampled_from(["u", "v"]), _rules, max_size=2),
    st.booleans(),
    st.lists(st.sampled_from(["a", "b", "c/d"]), max_size=3),
    st.sampled_from([None, "u", "v", "w"]),
    st.sampled_from(["repository", "registry", "other"]),
    st.sampled_from(["a", "b", "c/d", "catalog"]),
    _actions,
)
def test_grants_are_always_within_asked_and_allowed(
    users: dict[str, dict[str, list[str]]],
    blacklist: bool,
    anonymous_repos: list[str],
    account: str | None,
    kind: str,
    name: str,
    asked: list[str],
) -> None:
    policy = make_policy(users, blacklist=blacklist, repositories=anonymous_repos)
    granted = policy.grant(account, ResourceScope(kind, name, tuple(asked)))
    allowed = policy.allowed(account, kind, name)
    assert set(granted) <= allowed
    assert set(granted) <= set(asked) | ({"pull", "push"} if "*" in asked else set())
    if account is None:
        assert set(granted) <= {"pull"} if kind == "repository" else {"*"}


def test_bcrypt_cost_of_unknown_users_follows_the_policy() -> None:
    users = {"u": {"pass_hash": bcrypt.hashpw(b"x", bcrypt.gensalt(5)).decode()}}
    assert Policy(users_from_document(users, "users.json")).dummy_cost("ghost") == 5
    assert Policy().dummy_cost("ghost") == 12


def test_example_documents_are_plain_json() -> None:
    root = REPO / "config"
    for name in ("users.json", "repositories.json"):
        json.loads((root / name).read_text())
