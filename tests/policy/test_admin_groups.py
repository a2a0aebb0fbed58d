"""groups.json ``"admin": true``: the members of such a group manage everyone's access tokens
(#26), whichever way they are members (users.json, directory groups, program labels)."""

from __future__ import annotations

from typing import Any

import bcrypt
import pytest

from tokend.dn import normalise_dn
from tokend.login.identity import DIRECTORY, FEDERATED_SOURCE, USERS, Identity
from tokend.policy.documents import groups_from_document, users_from_document
from tokend.policy.model import (
    DIRECTORY_GROUPS,
    FEDERATED,
    PROGRAM_LABELS,
    Policy,
    PolicyError,
    labels_from,
)

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
OPS_DN = "cn=ops,ou=groups,dc=example,dc=org"


def build(users: dict[str, list[str]], groups: dict[str, Any]) -> Policy:
    group_policies = groups_from_document(groups, "groups.json")
    documents = {
        name: {"pass_hash": HASH, "groups": member_of} for name, member_of in users.items()
    }
    return Policy(
        users_from_document(documents, "users.json", group_policies), groups=group_policies
    )


GROUPS = {
    "ops": {"admin": True, "ldap_groups": [OPS_DN], "program_labels": {"team": ["ops"]}},
    "dev": {"admin": False, "repositories": {"dev/*": ["pull"]}},
    "qa": {"repositories": {"qa/*": ["pull"]}},
}


def test_admin_is_read_from_groups_json_and_defaults_to_false() -> None:
    groups = groups_from_document(GROUPS, "groups.json")
    assert groups["ops"].admin is True
    assert groups["dev"].admin is False
    assert groups["qa"].admin is False


@pytest.mark.parametrize("value", ["yes", 1, None, [], {}])
def test_an_admin_that_is_not_a_boolean_is_a_located_policy_error(value: object) -> None:
    with pytest.raises(PolicyError) as raised:
        groups_from_document({"ops": {"admin": value}}, "groups.json")
    assert str(raised.value) == "groups.json: ops.admin: expected true or false"


def test_users_json_members_of_an_admin_group_are_admins_and_no_one_else() -> None:
    policy = build({"alice": ["ops"], "bob": ["dev", "qa"], "carol": []}, GROUPS)
    assert policy.is_admin(Identity("alice", USERS))
    assert not policy.is_admin(Identity("bob", USERS))
    assert not policy.is_admin(Identity("carol", USERS))
    assert not policy.is_admin(Identity("nobody", USERS))


def test_directory_and_program_accounts_are_admins_through_their_groups_and_labels() -> None:
    policy = build({}, GROUPS)
    mozart = Identity(
        "mozart",
        DIRECTORY,
        directory_groups=frozenset({normalise_dn(OPS_DN)}),
        rights_from=DIRECTORY_GROUPS,
    )
    salieri = Identity("salieri", DIRECTORY, rights_from=DIRECTORY_GROUPS)
    assert policy.is_admin(mozart)
    assert not policy.is_admin(salieri)
    ops = Identity(
        "bot", "program", labels=labels_from({"team": ["ops"]}), rights_from=PROGRAM_LABELS
    )
    qa = Identity(
        "bot", "program", labels=labels_from({"team": ["qa"]}), rights_from=PROGRAM_LABELS
    )
    assert policy.is_admin(ops)
    assert not policy.is_admin(qa)


def test_a_platform_token_never_administers_even_when_its_name_is_an_admins() -> None:
    policy = build({"alice": ["ops"]}, GROUPS)
    assert not policy.is_admin(
        Identity("alice", FEDERATED_SOURCE, trust="alice", rights_from=FEDERATED)
    )
