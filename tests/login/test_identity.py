"""Identities and what the policy reads from them (:meth:`Policy.rights`), in memory: rights
come from where an identity says its rights are written, never from which backend vouched."""

from __future__ import annotations

from pathlib import Path

import pytest
from policies import policy_in

from tokend.dn import normalise_dn
from tokend.login.identity import (
    DIRECTORY,
    USERS,
    Identity,
    UnfitName,
    directory_name,
    directory_spelling,
)
from tokend.policy.model import DIRECTORY_GROUPS, PROGRAM_LABELS, Policy, labels_from
from tokend.scope import ResourceScope

COMPOSERS = "cn=composers,ou=groups,dc=example,dc=com"


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return policy_in(
        tmp_path,
        {"alice": ("pw", {"alice/*": ["pull", "push"]})},
        groups={
            "composers": {
                "ldap_groups": [COMPOSERS],
                "repositories": {"music/*": ["pull"], "home/${account}": ["pull", "push"]},
            },
            "builders": {
                "program_labels": {"group": ["ci", "release"], "level": ["max"]},
                "repositories": {"builds/*": ["pull", "push"], "home/${account}": ["pull"]},
            },
        },
    )


def granted(policy: Policy, identity: Identity, name: str) -> tuple[str, ...]:
    scope = ResourceScope("repository", name, ("pull", "push"))
    return policy.grant(identity.account, scope, policy.rights(identity))


def test_a_users_json_identity_holds_its_entry_whoever_vouched(policy: Policy) -> None:
    for source in (USERS, "refresh token", "api keys"):
        identity = Identity("alice", source)
        assert policy.rights(identity) is policy.users["alice"]
        assert granted(policy, identity, "alice/app") == ("pull", "push")
    assert policy.rights(Identity("nobody", USERS)) is None


def test_a_directory_identity_holds_its_groups_rights_bound_to_its_name(policy: Policy) -> None:
    mozart = Identity(
        "mozart",
        DIRECTORY,
        frozenset({normalise_dn(COMPOSERS)}),
        rights_from=DIRECTORY_GROUPS,
    )
    assert granted(policy, mozart, "music/requiem") == ("pull",)
    assert granted(policy, mozart, "home/mozart") == ("pull", "push")
    assert granted(policy, mozart, "home/salieri") == ()
    outsider = Identity("salieri", DIRECTORY, rights_from=DIRECTORY_GROUPS)
    rights = policy.rights(outsider)
    assert rights is not None and rights.sources == ()
    assert granted(policy, outsider, "music/requiem") == ()


def test_a_program_identity_holds_the_rights_of_groups_one_of_its_labels_names(
    policy: Policy,
) -> None:
    """Any listed value of any listed label makes it a member; ``${account}`` is its name."""
    for labels in ({"group": ["other", "ci"]}, {"level": ["max"]}, {"group": ["release"]}):
        robot = Identity("robot", "program", labels=labels_from(labels), rights_from=PROGRAM_LABELS)
        assert granted(policy, robot, "builds/app") == ("pull", "push")
        assert granted(policy, robot, "home/robot") == ("pull",)
        assert granted(policy, robot, "music/requiem") == ()
    for labels in ({}, {"group": ["other"]}, {"ci": ["group"]}, {"levels": ["max"]}):
        outsider = Identity(
            "robot", "program", labels=labels_from(labels), rights_from=PROGRAM_LABELS
        )
        assert granted(policy, outsider, "builds/app") == ()


def test_a_program_identity_named_like_a_user_gets_no_users_json_rights(policy: Policy) -> None:
    identity = Identity("alice", "program", labels=labels_from({}), rights_from=PROGRAM_LABELS)
    assert granted(policy, identity, "alice/app") == ()


def test_a_directory_identity_named_like_a_user_gets_no_users_json_rights(
    policy: Policy,
) -> None:
    """Rights follow where they are written: a group member called alice is not alice."""
    identity = Identity("alice", DIRECTORY, rights_from=DIRECTORY_GROUPS)
    assert granted(policy, identity, "alice/app") == ()


def test_users_json_decides_the_names_it_holds_in_any_case(policy: Policy) -> None:
    assert directory_spelling("alice", policy) is None
    assert directory_spelling("ALICE", policy) is None
    assert directory_spelling("Mozart", policy) == "mozart"


@pytest.mark.parametrize(
    "name",
    [
        "",
        " mozart",
        "mo  zart",
        "\N{FULLWIDTH LATIN SMALL LETTER M}ozart",
        "stra\N{LATIN SMALL LETTER SHARP S}e",
    ],
)
def test_a_name_the_directory_would_read_as_another_is_unfit(name: str) -> None:
    with pytest.raises(UnfitName):
        directory_name(name)
