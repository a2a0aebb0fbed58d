"""Rules by client address: a rule value ``{"actions": [...], "from": [networks]}`` applies only
to requests from those networks; elsewhere (or with no address) the next most specific rule of
the same source decides."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network
from pathlib import Path

import bcrypt
import pytest

from tokend.client_address import client_ip
from tokend.policy.documents import groups_from_document, users_from_document
from tokend.policy.files import load_policy
from tokend.policy.model import Policy, PolicyError
from tokend.policy.rules import Rule, build_rule_set, compile_pattern
from tokend.scope import ResourceScope

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
CI = ip_address("10.1.2.3")
OFFICE = ip_address("192.0.2.7")
CI6 = ip_address("2001:db8::42")
OTHER6 = ip_address("2001:db9::1")


def policy_of(rules: dict[str, object], groups: dict[str, object] | None = None) -> Policy:
    entry: dict[str, object] = {"pass_hash": HASH, "repositories": rules}
    if groups is not None:
        entry["groups"] = list(groups)
    parsed_groups = groups_from_document(groups or {}, "groups.json")
    users = users_from_document({"ci": entry}, "users.json", parsed_groups)
    return Policy(users, groups=parsed_groups)


def granted(
    policy: Policy, name: str, address: object, asked: str = "pull,push"
) -> tuple[str, ...]:
    scope = ResourceScope("repository", name, tuple(asked.split(",")))
    return policy.grant("ci", scope, address=address)  # type: ignore[arg-type]


PUSH_FROM_CI = {
    "team/**": {"actions": ["pull", "push"], "from": ["10.0.0.0/8", "2001:db8::/32"]},
    "*": ["pull"],
}


def test_a_rule_applies_only_from_its_networks_v4_and_v6() -> None:
    policy = policy_of(PUSH_FROM_CI)
    assert granted(policy, "team/app", CI) == ("pull", "push")
    assert granted(policy, "team/app", CI6) == ("pull", "push")
    assert granted(policy, "team/app", OFFICE) == ("pull",)
    assert granted(policy, "team/app", OTHER6) == ("pull",)
    assert granted(policy, "other", CI) == ("pull",)


def test_no_address_means_no_from_rule_applies() -> None:
    """A UNIX-socket peer that names no client has no address: the next rule decides."""
    policy = policy_of(PUSH_FROM_CI)
    assert granted(policy, "team/app", None) == ("pull",)
    assert policy.allowed("ci", "repository", "team/app") == {"pull"}


def test_outside_the_networks_the_next_most_specific_rule_decides() -> None:
    """Exact name, then longest prefix, each falling through to the next when it does not
    apply from this address; a deny from a network falls through too."""
    policy = policy_of(
        {
            "team/app": {"actions": ["*"], "from": ["10.1.0.0/16"]},
            "team/a*": {"actions": ["pull", "push"], "from": ["10.0.0.0/8"]},
            "team/**": [],
            "*": ["pull"],
            "lab/x": {"actions": [], "from": ["192.0.2.0/24"]},
        }
    )
    assert granted(policy, "team/app", CI, "pull,push,delete") == ("pull", "push", "delete")
    assert granted(policy, "team/app", ip_address("10.9.9.9")) == ("pull", "push")
    assert granted(policy, "team/app", OFFICE) == ()
    assert granted(policy, "lab/x", OFFICE) == ()
    assert granted(policy, "lab/x", CI) == ("pull",)


def test_account_rules_and_group_rules_take_from_too() -> None:
    groups = {
        "builders": {
            "repositories": {
                "${account}/**": {"actions": ["pull", "push"], "from": ["10.0.0.0/8"]},
                "builds/**": {"actions": ["pull", "push"], "from": ["10.0.0.0/8"]},
            }
        }
    }
    policy = policy_of({"*": ["pull"]}, groups)
    assert granted(policy, "builds/app", CI) == ("pull", "push")
    assert granted(policy, "builds/app", OFFICE) == ("pull",)
    assert granted(policy, "ci/tool", CI) == ("pull", "push")
    assert granted(policy, "ci/tool", OFFICE) == ("pull",)
    own = policy_of({"${account}/**": {"actions": ["pull", "push"], "from": ["10.0.0.0/8"]}})
    assert granted(own, "ci/tool", CI) == ("pull", "push")
    assert granted(own, "ci/tool", OFFICE) == ()


def test_a_single_address_is_a_network_of_one_and_mapped_v6_counts_as_v4() -> None:
    """The realm and ``explain --from`` read addresses with client_ip, which unmaps."""
    policy = policy_of({"a": {"actions": ["pull", "push"], "from": ["10.1.2.3", "::1"]}})
    assert granted(policy, "a", CI) == ("pull", "push")
    assert granted(policy, "a", ip_address("10.1.2.4")) == ()
    assert granted(policy, "a", ip_address("::1")) == ("pull", "push")
    assert granted(policy, "a", client_ip("::ffff:10.1.2.3")) == ("pull", "push")
    assert granted(policy, "a", client_ip("unix")) == ()


def test_decide_names_the_rules_skipped_for_the_address() -> None:
    policy = policy_of(PUSH_FROM_CI)
    decision = policy.decide("ci", "repository", "team/app", address=None)
    (match,) = decision.matches
    assert match.rule is not None and match.rule.key == "*"
    assert [rule.key for rule in match.skipped] == ["team/**"]
    decision = policy.decide("ci", "repository", "team/app", address=CI)
    (match,) = decision.matches
    assert match.rule is not None and match.rule.key == "team/**" and match.skipped == ()


def test_the_rule_set_falls_through_in_linear_time() -> None:
    """Skipping a rule that does not apply costs one look per rule on the name's way down, never
    a second pass: every prefix length holds a rule that matches but does not apply here."""
    networks = (ip_network("10.0.0.0/8"),)
    keys = ["a" * n + "*" for n in range(1, 200)]
    rules = build_rule_set(
        [Rule(compile_pattern(key), frozenset({"pull"}), networks) for key in keys]
        + [Rule(compile_pattern("*"), frozenset())]
    )
    skipped: list[Rule] = []
    found = rules.match("a" * 300, address=OFFICE, skipped=skipped)
    assert found is not None and found.key == "*"
    assert len(skipped) == len(keys)
    assert rules.match("a" * 300, address=CI) == skipped[0]


@pytest.mark.parametrize(
    ("value", "path", "reason"),
    [
        ({"actions": ["pull"], "from": ["10.0.0.0/33"]}, ".from[0]", "not an IP network"),
        ({"actions": ["pull"], "from": ["ci-net"]}, ".from[0]", "not an IP network"),
        ({"actions": ["pull"], "from": ["10.1.2.3/8"]}, ".from[0]", 'did you mean "10.0.0.0/8"'),
        ({"actions": ["pull"], "from": [7]}, ".from[0]", "not an IP network"),
        ({"actions": ["pull"], "from": []}, ".from", "empty"),
        ({"actions": ["pull"], "from": "10.0.0.0/8"}, ".from", "expected a list"),
        ({"actions": ["pull"]}, "", 'needs "from"'),
        ({"from": ["10.0.0.0/8"]}, "", 'needs "actions"'),
        ({"actions": ["pull"], "from": ["10.0.0.0/8"], "form": 1}, ".form", 'did you mean "from"'),
        ({"actions": ["push"], "from": ["10.0.0.0/8"]}, ".actions", "push requires pull"),
        ({"actions": ["pusj"], "from": ["10.0.0.0/8"]}, ".actions", "unknown action"),
    ],
)
def test_bad_rule_values_are_refused_with_their_place(
    value: object, path: str, reason: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        users_from_document({"ci": {"pass_hash": HASH, "repositories": {"a/*": value}}}, "u.json")
    assert caught.value.path == 'ci.repositories["a/*"]' + path
    assert reason in caught.value.reason
    with pytest.raises(PolicyError) as caught:
        groups_from_document({"g": {"repositories": {"a": value}}}, "g.json")
    assert caught.value.path == "g.repositories.a" + path


def test_a_reload_sees_a_change_of_networks_alone(tmp_path: Path) -> None:
    """Equal rules compare equal; another network is another policy for that user."""
    first = policy_of({"a": {"actions": ["pull"], "from": ["10.0.0.0/8"]}})
    same = policy_of({"a": {"actions": ["pull"], "from": ["10.0.0.0/8"]}})
    other = policy_of({"a": {"actions": ["pull"], "from": ["10.0.0.0/16"]}})
    assert first.users["ci"] == same.users["ci"]
    assert first.users["ci"] != other.users["ci"]


def test_check_config_refuses_an_invalid_network(tmp_path: Path) -> None:
    from support import run_tool

    config = tmp_path / "config"
    config.mkdir()
    users = {
        "ci": {
            "pass_hash": HASH,
            "repositories": {"a": {"actions": ["pull"], "from": ["10.0.0.300/8"]}},
        }
    }
    (config / "users.json").write_text(json.dumps(users))
    (config / "repositories.json").write_text("{}")
    with pytest.raises(PolicyError, match="not an IP network"):
        load_policy(config)
    code, out, err = run_tool("check-config", "--config-dir", str(config))
    assert code != 0
    assert "ci.repositories.a.from[0]" in out + err


def test_the_report_counts_rules_with_from_and_says_where_they_hold() -> None:
    """An own deny that holds from a network is still no match for a group's grant there, and
    an overlap note says the specific rule decides only from its networks."""
    from tokend.policy.report import group_override_warnings, overlap_notes

    groups = {"devs": {"repositories": {"secret/db": {"actions": ["pull"], "from": ["::1"]}}}}
    policy = policy_of({"secret/*": {"actions": [], "from": ["10.0.0.0/8"]}, "*": ["pull"]}, groups)
    (warning,) = group_override_warnings(policy)
    assert warning.startswith(
        "users.json ci: own rule 'secret/*' (denies from 10.0.0.0/8) does not take away group "
        "devs's 'secret/db' [pull] from ::1 for names like 'secret/db'"
    )
    assert overlap_notes(policy) == [
        "users.json ci: 'secret/*' (denies from 10.0.0.0/8) takes precedence over '*' [pull] "
        "for names like 'secret/a' (from its networks only; elsewhere the broader rule decides)"
    ]
