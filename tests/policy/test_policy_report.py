"""What check-config and the reload log tell an operator about a valid policy: a typo'd key
named with the key meant, and a user's own deny that a group's grant makes void."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from tokend.cli import main
from tokend.policy.documents import (
    anonymous_from_document,
    groups_from_document,
    users_from_document,
)
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import Policy, PolicyError
from tokend.policy.reload import PolicyReloader
from tokend.policy.report import MAX_OVERRIDE_WARNINGS, group_override_warnings

T = TypeVar("T")

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("repositorys", "repositories"), ("pass-hash", "pass_hash"), ("group", "groups")],
)
def test_a_typo_in_users_json_names_the_key_meant(typo: str, meant: str) -> None:
    with pytest.raises(PolicyError) as raised:
        users_from_document({"alice": {"pass_hash": HASH, typo: {}}}, "users.json")
    assert (raised.value.file, raised.value.path) == ("users.json", f"alice.{typo}")
    assert raised.value.reason == f'unknown key "{typo}" (did you mean "{meant}"?)'


def test_a_typo_in_repositories_json_names_the_key_meant() -> None:
    with pytest.raises(PolicyError) as raised:
        anonymous_from_document({"repositorys": []}, "repositories.json")
    assert (raised.value.file, raised.value.path) == ("repositories.json", "repositorys")
    assert raised.value.reason == 'unknown key "repositorys" (did you mean "repositories"?)'


def test_a_typo_in_groups_json_names_the_key_meant() -> None:
    with pytest.raises(PolicyError) as raised:
        groups_from_document({"staff": {"ldap_group": []}}, "groups.json")
    assert (raised.value.file, raised.value.path) == ("groups.json", "staff.ldap_group")
    assert raised.value.reason == 'unknown key "ldap_group" (did you mean "ldap_groups"?)'


@pytest.mark.parametrize(
    ("parse", "known"),
    [
        (
            lambda: users_from_document({"a": {"pass_hash": HASH, "rules": {}}}, "users.json"),
            '"pass_hash", "repositories", "groups", "catalog", "tokens_valid_after"',
        ),
        (
            lambda: anonymous_from_document({"whitelist": True}, "repositories.json"),
            '"blacklist", "repositories", "catalog"',
        ),
        (
            lambda: groups_from_document({"g": {"rules": {}}}, "groups.json"),
            '"repositories", "catalog", "ldap_groups", "program_labels", "admin"',
        ),
    ],
)
def test_a_key_like_no_known_one_lists_the_known_keys(parse: Any, known: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse()
    key = raised.value.path.rpartition(".")[2]
    assert raised.value.reason == f'unknown key "{key}" (known keys: {known})'


def write_files(directory: Path, users: dict[str, Any], groups: dict[str, Any] | None) -> Path:
    documents = {name: {"pass_hash": HASH, **entry} for name, entry in users.items()}
    (directory / "users.json").write_text(json.dumps(documents))
    (directory / "repositories.json").write_text(json.dumps({"repositories": []}))
    if groups is not None:
        (directory / "groups.json").write_text(json.dumps(groups))
    return directory


def check_config(directory: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["check-config", "--config-dir", str(directory)], io.StringIO(), out)
    return code, out.getvalue()


def test_check_config_names_the_key_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_files(tmp_path, {"alice": {"repositorys": {"a": ["pull"]}}}, None)
    assert check_config(tmp_path) == (1, "")
    assert capsys.readouterr().err == (
        f"tokend check-config: {tmp_path / 'users.json'}: alice.repositorys: "
        'unknown key "repositorys" (did you mean "repositories"?)\n'
    )


def build(users: dict[str, Any], groups: dict[str, Any] | None = None) -> Policy:
    group_policies = groups_from_document(groups or {}, "groups.json")
    documents = {name: {"pass_hash": HASH, **entry} for name, entry in users.items()}
    anonymous, _ = anonymous_from_document({}, "repositories.json")
    return Policy(
        users_from_document(documents, "users.json", group_policies), anonymous, group_policies
    )


def override(user: str, deny: str, group: str, rule: str, actions: str, example: str) -> str:
    return (
        f"users.json {user}: own rule {deny!r} (denies) does not take away group {group}'s "
        f"{rule!r} {actions} for names like {example!r}: a user holds the union of the user's "
        "own rules and every group's, so a deny in users.json only overrides the user's own "
        f"broader rules; deny it in group {group} (for every member), or take {user} out of "
        f"{group} and copy to {user} the rules of {group} that {user} should keep"
    )


def test_a_group_grant_on_a_name_the_user_denies_is_reported() -> None:
    policy = build(
        {"alice": {"repositories": {"secret/*": []}, "groups": ["devs"]}},
        {"devs": {"repositories": {"secret/db": ["pull"]}}},
    )
    assert policy.allowed("alice", "repository", "secret/db") == {"pull"}
    assert group_override_warnings(policy) == (
        override("alice", "secret/*", "devs", "secret/db", "[pull]", "secret/db"),
    )


def test_a_broader_group_grant_overrides_the_users_deny_too() -> None:
    policy = build(
        {"alice": {"repositories": {"*": ["pull", "push"], "secret/**": []}, "groups": ["all"]}},
        {"all": {"repositories": {"*": ["pull"]}}},
    )
    assert policy.allowed("alice", "repository", "secret/a") == {"pull"}
    assert group_override_warnings(policy) == (
        override("alice", "secret/**", "all", "*", "[pull]", "secret/a"),
    )


def test_the_example_is_a_name_the_group_grants_and_the_deny_decides() -> None:
    policy = build(
        {
            "alice": {
                "repositories": {"secret/**": [], "secret/a": ["pull"]},
                "groups": ["devs"],
            }
        },
        {"devs": {"repositories": {"secret/*": ["pull", "push"], "secret/b": []}}},
    )
    (warning,) = group_override_warnings(policy)
    assert "for names like 'secret/c'" in warning
    assert policy.allowed("alice", "repository", "secret/c") == {"pull", "push"}


def test_a_group_rule_for_the_member_asking_is_bound_to_the_user() -> None:
    policy = build(
        {
            "alice": {"repositories": {"alice/private/**": []}, "groups": ["staff"]},
            "bob": {"repositories": {"alice/private/**": []}, "groups": ["staff"]},
        },
        {"staff": {"repositories": {"${account}/**": ["*"]}}},
    )
    assert group_override_warnings(policy) == (
        override(
            "alice", "alice/private/**", "staff", "${account}/**", "[delete, pull, push]",
            "alice/private/a",
        ),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("users", "groups"),
    [
        ({"alice": {"repositories": {"*": ["pull"], "secret/**": []}}}, None),
        (
            {"alice": {"repositories": {"secret/*": []}, "groups": ["all"]}},
            {"all": {"repositories": {"*": ["pull"], "secret/**": []}}},
        ),
        (
            {"alice": {"repositories": {"secret/*": [], "secret/ok": ["pull"]}, "groups": ["g"]}},
            {"g": {"repositories": {"secret/ok": ["pull", "push"], "public/*": ["pull"]}}},
        ),
        (
            {"alice": {"repositories": {"secret/*": []}, "groups": ["g"]}},
            {"g": {"repositories": {"secret/a/**": ["pull"], "secretive/*": ["pull"]}}},
        ),
    ],
    ids=["no group", "the group denies too", "the user allows it", "no name in common"],
)
def test_no_warning_where_the_users_deny_holds(users: dict[str, Any], groups: Any) -> None:
    assert group_override_warnings(build(users, groups)) == ()


def test_check_config_and_the_reload_log_warn_about_it(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {"alice": {"repositories": {"secret/*": []}, "groups": ["devs"]}},
        {"devs": {"repositories": {"secret/db": ["pull"]}}},
    )
    expected = override("alice", "secret/*", "devs", "secret/db", "[pull]", "secret/db")
    code, out = check_config(tmp_path)
    assert code == 0
    assert f"warning: {expected}" in out.splitlines()

    holder = PolicyHolder(Policy(), 0)
    with capturedLogs() as events:
        PolicyReloader(tmp_path, holder, Clock(), InlineRunner()).reload("SIGHUP")
    assert holder.generation == 2
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warnings == [f"policy warning: {expected}"]


class InlineRunner:
    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return succeed(function(*args))


def test_one_mistake_repeated_for_many_users_is_reported_a_bounded_number_of_times() -> None:
    users = {f"u{i}": {"repositories": {"secret/*": []}, "groups": ["all"]} for i in range(80)}
    warnings = group_override_warnings(build(users, {"all": {"repositories": {"*": ["pull"]}}}))
    assert len(warnings) == MAX_OVERRIDE_WARNINGS + 1
    assert warnings[-1] == (
        f"… more group grants over users' denies not shown (limit {MAX_OVERRIDE_WARNINGS})"
    )


@pytest.mark.parametrize(
    ("labels", "path", "reason"),
    [
        (["ci"], "g.program_labels", "expected an object mapping label names to lists of values"),
        ({"group": "ci"}, "g.program_labels.group", "expected a list of label values"),
        ({"group": ["ci", 3]}, "g.program_labels.group[1]", "expected a non-empty string, not 3"),
        ({"group": [""]}, "g.program_labels.group[0]", 'expected a non-empty string, not ""'),
        ({"": ["ci"]}, 'g.program_labels[""]', "a label name must not be empty"),
    ],
)
def test_check_config_refuses_program_labels_that_are_not_label_lists(
    labels: object, path: str, reason: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        groups_from_document({"g": {"program_labels": labels}}, "groups.json")
    assert (raised.value.path, raised.value.reason) == (path, reason)
