"""A token's cap: users.json rules written ``team/*:pull,push``; the owner's rights now ∩ cap ∩
what was asked."""

from __future__ import annotations

import bcrypt
import pytest

from tokend.access_tokens.cap import MAX_CAP_RULES, Cap, CapError, cap_from_json, capped, parse_cap
from tokend.policy.documents import anonymous_from_document, users_from_document
from tokend.policy.model import Policy
from tokend.scope import ResourceScope

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()


def policy_of(users: dict[str, dict[str, list[str]]]) -> Policy:
    document = {name: {"pass_hash": HASH, "repositories": rules} for name, rules in users.items()}
    anonymous, _ = anonymous_from_document({}, "repositories.json")
    return Policy(users_from_document(document, "users.json"), anonymous)


def token_grant(policy: Policy, owner: str, cap: Cap, asked: str) -> tuple[str, ...]:
    """What a token of ``owner`` gets: the policy's grant (asked ∩ the owner's rights now),
    then the cap."""
    name, _, actions = asked.rpartition(":")
    scope = ResourceScope("repository", name, tuple(actions.split(",")))
    return capped(policy.grant(owner, scope), cap, name)


ALICE = {"team/*": ["pull", "push"], "team/prod": ["pull"], "other": ["*"]}


def test_a_token_gets_the_owners_rights_within_its_cap_and_what_was_asked() -> None:
    policy = policy_of({"alice": ALICE})
    cap = parse_cap(["team/*:pull,push", "other:pull"])
    assert token_grant(policy, "alice", cap, "team/app:push,pull") == ("push", "pull")
    assert token_grant(policy, "alice", cap, "team/app:pull") == ("pull",), "what was asked"
    assert token_grant(policy, "alice", cap, "team/prod:push,pull") == ("pull",), "the owner's"
    assert token_grant(policy, "alice", cap, "other:pull,push,delete") == ("pull",), "the cap's"
    assert token_grant(policy, "alice", cap, "other:*") == ("pull",)
    assert token_grant(policy, "alice", cap, "elsewhere:pull") == (), "outside the cap"


def test_a_cap_wider_than_its_owner_never_gives_more() -> None:
    policy = policy_of({"alice": ALICE})
    everything = parse_cap(["*:*"])
    for asked in ("team/app:*", "team/prod:*", "other:*", "mine:*", "team/a/b:*"):
        scope_name = asked.rpartition(":")[0]
        owner = policy.grant("alice", ResourceScope("repository", scope_name, ("*",)))
        assert token_grant(policy, "alice", everything, asked) == owner


def test_the_token_shrinks_with_its_owner_and_ends_with_them() -> None:
    cap = parse_cap(["team/*:pull,push"])
    reduced = policy_of({"alice": {"team/*": ["pull"]}})
    assert token_grant(reduced, "alice", cap, "team/app:push,pull") == ("pull",)
    removed = policy_of({"bob": ALICE})
    assert token_grant(removed, "alice", cap, "team/app:push,pull") == ()


def test_the_most_specific_rule_of_the_cap_decides_and_can_deny() -> None:
    cap = parse_cap(["team/*:pull,push", "team/prod:", "team/prod-*:pull"])
    granted = ("pull", "push")
    assert capped(granted, cap, "team/app") == ("pull", "push")
    assert capped(granted, cap, "team/prod") == ()
    assert capped(granted, cap, "team/prod-eu") == ("pull",)
    assert capped(granted, cap, "team/app/nested") == ()
    assert capped(granted, parse_cap(["team/**:pull"]), "team/app/nested") == ("pull",)


def test_the_command_line_and_the_stored_form_say_the_same() -> None:
    cap = parse_cap(["team/*:push,pull", "other:*", "team/prod:", "localhost:5000/a:pull"])
    stored = cap.to_json()
    assert stored == {
        "team/*": ["pull", "push"],
        "other": ["pull", "push", "delete"],
        "team/prod": [],
        "localhost:5000/a": ["pull"],
    }
    assert cap_from_json(stored) == cap
    assert cap.scopes() == (
        "team/*:pull,push",
        "other:pull,push,delete",
        "team/prod:",
        "localhost:5000/a:pull",
    )
    assert parse_cap(cap.scopes()) == cap


COMMAND_LINE_REFUSALS = [
    ([], "a token's cap names at least one repository pattern, e.g. team/*:pull "
     "(*:* for all its owner's rights)"),
    (["team/*"], "'team/*': expected PATTERN:ACTIONS, e.g. team/*:pull,push"),
    (["team/A*:pull"],
     "'team/A*:pull': not a repository name, * or a pattern that could match one"),
    (["team/**x:pull"], "'team/**x:pull': ** must be a whole path component (team/**)"),
    (["${account}/*:pull"],
     "'${account}/*:pull': ${account} has no meaning in a token's cap: write the owner's name"),
    (["team/*:pusj"], "'team/*:pusj': unknown action \"pusj\" (known: pull, push, delete, *)"),
    (["team/*:pull,"], "'team/*:pull,': unknown action \"\" (known: pull, push, delete, *)"),
    (["team/*:push"], "'team/*:push': push requires pull"),
    (["team/*:pull", "team/*:push,pull"],
     "'team/*:push,pull': team/* is capped twice: give it once"),
    (["team/*-eu:pull", "team/app*:pull", "team/*-*:pull"],
     "'team/*-*:pull': 'team/*-eu' and 'team/*-*' both match 'team/-eu' with the same literal "
     "prefix: make one of them more specific"),
    (["a" * 2000 + ":pull"], "'" + "a" * 40),
    ([f"r{i}:pull" for i in range(MAX_CAP_RULES + 1)],
     f"a token's cap holds at most {MAX_CAP_RULES} patterns"),
]  # fmt: skip


@pytest.mark.parametrize(("scopes", "sentence"), COMMAND_LINE_REFUSALS)
def test_every_refusal_on_the_command_line_is_one_sentence(
    scopes: list[str], sentence: str
) -> None:
    with pytest.raises(CapError) as raised:
        parse_cap(scopes)
    message = str(raised.value)
    assert message.startswith(sentence)
    assert "\n" not in message and len(message) < 200


STORED_FORM_REFUSALS = [
    (["team/*"], "cap: expected an object mapping repository patterns to lists of actions"),
    ({}, "a token's cap names at least one repository pattern"),
    ({"team/*": "pull"}, 'cap["team/*"]: expected a list of actions, e.g. ["pull", "push"]'),
    ({"team/*": {"actions": ["pull"], "from": ["10.0.0.0/8"]}},
     'cap["team/*"]: expected a list of actions, e.g. ["pull", "push"]'),
    ({"team/*": ["pusj"]},
     'cap["team/*"]: unknown action "pusj" (known: pull, push, delete, *)'),
    ({"team/*": [1]}, 'cap["team/*"]: unknown action 1 (known: pull, push, delete, *)'),
    ({"Team": ["pull"]},
     "cap.Team: not a repository name, * or a pattern that could match one"),
    ({"${account}": ["pull"]},
     'cap["${account}"]: ${account} has no meaning in a token\'s cap'),
    ({"team/*-eu": ["pull"], "team/*-*": ["pull"]},
     "cap[\"team/*-*\"]: 'team/*-eu' and 'team/*-*' both match"),
]  # fmt: skip


@pytest.mark.parametrize(("document", "sentence"), STORED_FORM_REFUSALS)
def test_every_refusal_of_the_stored_form_is_one_sentence(document: object, sentence: str) -> None:
    with pytest.raises(CapError) as raised:
        cap_from_json(document)
    assert str(raised.value).startswith(sentence)
