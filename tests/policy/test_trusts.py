"""issuers.json trusts: parsing with located refusals, claim paths, conditions, accounts, and the
rights a federated identity holds (claim values bound only when they are safe repository paths)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tokend.login.identity import FEDERATED_SOURCE, Identity
from tokend.policy.claims import claim_path
from tokend.policy.documents import groups_from_document, users_from_document
from tokend.policy.files import load_policy
from tokend.policy.model import FEDERATED, Policy, PolicyError
from tokend.policy.report import trust_summaries
from tokend.policy.trusts import Trust, trusts_from_document
from tokend.scope import parse_scope

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
GITHUB = "https://token.actions.githubusercontent.com"
REGISTRY = "https://registry.example.com"
CLUSTER = "https://kubernetes.default.svc.cluster.local"

GITHUB_CLAIMS: dict[str, Any] = {
    "iss": GITHUB,
    "aud": REGISTRY,
    "sub": "repo:acme/app:ref:refs/heads/main",
    "repository": "acme/app",
    "repository_owner": "acme",
    "repository_id": "123456",
    "ref": "refs/heads/main",
    "ref_type": "branch",
    "workflow": "release",
    "actor": "octocat",
    "event_name": "push",
    "iat": 1700000000,
    "nbf": 1700000000,
    "exp": 1700000300,
}
KUBERNETES_CLAIMS: dict[str, Any] = {
    "iss": CLUSTER,
    "aud": [REGISTRY],
    "sub": "system:serviceaccount:ci:builder",
    "kubernetes.io": {
        "namespace": "ci",
        "serviceaccount": {"name": "builder", "uid": "0a1b"},
        "pod": {"name": "builder-7f9c", "uid": "9d8e"},
    },
    "iat": 1700000000,
    "nbf": 1700000000,
    "exp": 1700003600,
}


def github_trust(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "issuer": GITHUB,
        "audience": REGISTRY,
        "conditions": {"repository_owner": "acme", "ref": ["refs/heads/main", "refs/tags/*"]},
        "account": "github:${claim.repository}",
        "groups": ["ci"],
        "rules": {"${claim.repository}": ["pull", "push"]},
        "token_ttl": 120,
        "max_token_age": 3600,
    }
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


GROUPS = {"ci": {"repositories": {"base/*": ["pull"], "cache/${account}": ["pull", "push"]}}}


def load(
    trusts: dict[str, object],
    users: dict[str, object] | None = None,
    groups: dict[str, object] | None = None,
    config_dir: Path = Path("/nonexistent"),
) -> Policy:
    group_policies = groups_from_document(GROUPS if groups is None else groups, "groups.json")
    user_policies = users_from_document(users or {}, "users.json", group_policies)
    parsed = trusts_from_document(
        {"trusts": trusts}, "issuers.json", config_dir, group_policies, user_policies
    )
    return Policy(user_policies, groups=group_policies, trusts=parsed)


def refusal(trusts: dict[str, object], **kwargs: Any) -> str:
    with pytest.raises(PolicyError) as caught:
        load(trusts, **kwargs)
    return str(caught.value)


def document_refusal(document: object) -> str:
    groups = groups_from_document(GROUPS, "groups.json")
    with pytest.raises(PolicyError) as caught:
        trusts_from_document(document, "issuers.json", Path("/nonexistent"), groups, {})
    return str(caught.value)


def identity(trust: Trust, claims: dict[str, Any]) -> Identity:
    account = trust.account_for(claims)
    assert account is not None
    return Identity(
        account,
        FEDERATED_SOURCE,
        rights_from=FEDERATED,
        trust=trust.name,
        claim_values=trust.claim_values(claims),
        expires_at=claims["exp"],
    )


def grants(policy: Policy, who: Identity, *scopes: str) -> list[tuple[str, ...]]:
    rights = policy.rights(who)
    return [policy.grant(who.account, parse_scope(text), rights) for text in scopes]


def test_a_github_trust_parses_every_field(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not checked here")
    policy = load(
        {"github-actions": github_trust(jwks_uri=f"{GITHUB}/.well-known/jwks", ca_file="ca.pem")},
        config_dir=tmp_path,
    )
    trust = policy.trusts["github-actions"]
    assert (trust.name, trust.issuer, trust.audience) == ("github-actions", GITHUB, REGISTRY)
    assert trust.jwks_uri == f"{GITHUB}/.well-known/jwks"
    assert trust.jwks_file is None
    assert trust.ca_file == tmp_path / "ca.pem"
    assert trust.groups == ("ci",)
    assert (trust.token_ttl, trust.max_token_age) == (120, 3600)
    assert trust.discovery_url is None


def test_without_jwks_uri_or_file_the_keys_come_from_discovery() -> None:
    trust = load({"gh": github_trust()}).trusts["gh"]
    assert trust.discovery_url == f"{GITHUB}/.well-known/openid-configuration"
    slash = load({"gh": github_trust(issuer=GITHUB + "/")}).trusts["gh"]
    assert slash.discovery_url == f"{GITHUB}/.well-known/openid-configuration"


def test_a_github_job_becomes_its_repository_and_pushes_only_its_own_image() -> None:
    policy = load({"gh": github_trust()})
    trust = policy.trusts["gh"]
    assert trust.admits(GITHUB_CLAIMS)
    assert trust.account_for(GITHUB_CLAIMS) == "github:acme/app"
    assert trust.claim_values(GITHUB_CLAIMS) == (("repository", "acme/app"),)
    who = identity(trust, GITHUB_CLAIMS)
    assert grants(
        policy,
        who,
        "repository:acme/app:pull,push",
        "repository:acme/other:pull,push",
        "repository:base/python:pull,push",
        "repository:acme/app/sub:pull",
    ) == [("pull", "push"), (), ("pull",), ()]
    assert policy.rights(who).groups == ("ci",)  # type: ignore[union-attr]


def test_the_group_binds_account_like_a_directory_member_and_skips_unsafe_names() -> None:
    policy = load({"k8s": kubernetes_trust(account="${claim[kubernetes.io].serviceaccount.name}")})
    who = identity(policy.trusts["k8s"], KUBERNETES_CLAIMS)
    assert grants(policy, who, "repository:cache/builder:push") == [("push",)]
    # github:acme/app is no path component: the group's ${account} rule matches nothing
    github = load({"gh": github_trust()})
    who = identity(github.trusts["gh"], GITHUB_CLAIMS)
    assert grants(github, who, "repository:cache/github:push") == [()]


def kubernetes_trust(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "issuer": CLUSTER,
        "audience": REGISTRY,
        "jwks_file": None,
        "conditions": {"[kubernetes.io].namespace": ["ci", "build-*"]},
        "account": (
            "k8s:${claim[kubernetes.io].namespace}:${claim[kubernetes.io].serviceaccount.name}"
        ),
        "groups": ["ci"],
        "rules": {"${claim[kubernetes.io].namespace}/**": ["pull", "push"]},
    }
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


def test_a_kubernetes_pod_reaches_nested_claims_under_a_key_with_dots(tmp_path: Path) -> None:
    (tmp_path / "cluster-jwks.json").write_text('{"keys": []}')
    policy = load({"k8s": kubernetes_trust(jwks_file="cluster-jwks.json")}, config_dir=tmp_path)
    trust = policy.trusts["k8s"]
    assert trust.jwks_file == tmp_path / "cluster-jwks.json"
    assert trust.discovery_url is None
    assert trust.admits(KUBERNETES_CLAIMS)
    assert trust.account_for(KUBERNETES_CLAIMS) == "k8s:ci:builder"
    assert trust.claim_values(KUBERNETES_CLAIMS) == (
        ("[kubernetes.io].namespace", "ci"),
        ("[kubernetes.io].serviceaccount.name", "builder"),
    )
    who = identity(trust, KUBERNETES_CLAIMS)
    assert grants(policy, who, "repository:ci/tools:push,pull", "repository:prod/app:pull") == [
        ("push", "pull"),
        (),
    ]


def test_claim_paths_read_plain_nested_and_bracketed_keys() -> None:
    assert claim_path("repository").keys == ("repository",)
    assert claim_path("a.b.c").keys == ("a", "b", "c")
    assert claim_path("[kubernetes.io].namespace").keys == ("kubernetes.io", "namespace")
    assert claim_path("a[b.c].d").keys == ("a", "b.c", "d")
    assert claim_path("[https://example.com/claims]").keys == ("https://example.com/claims",)
    assert claim_path("[repository]").text == "repository"
    assert claim_path("a.[b.c]").text == "a[b.c]"


@pytest.mark.parametrize("text", ["", ".a", "a.", "a..b", "a b", "[]", "a[b", "a.b]", "[a]]"])
def test_a_malformed_claim_path_is_refused_with_how_to_write_one(text: str) -> None:
    message = refusal({"gh": github_trust(conditions={text: "x"})})
    where = json.dumps(text)
    assert message.startswith(f"issuers.json: trusts.gh.conditions[{where}]: ")
    assert "empty claim path" in message or "[kubernetes.io].namespace" in message


@pytest.mark.parametrize(
    ("wanted", "value", "holds"),
    [
        ("acme", "acme", True),
        ("acme", "acme-corp", False),
        ("refs/tags/*", "refs/tags/v1.2", True),
        ("refs/tags/*", "refs/tags/release/v1", True),
        ("refs/tags/*", "refs/heads/main", False),
        ("*-prod", "eu-prod", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("a*a", "a", False),
        ("*", "", True),
    ],
)
def test_a_condition_is_exact_or_a_glob_where_star_is_any_run(
    wanted: str, value: str, holds: bool
) -> None:
    trust = load({"gh": github_trust(conditions={"ref": wanted})}).trusts["gh"]
    assert trust.admits({"ref": value}) is holds


def test_every_condition_must_hold_and_a_missing_or_non_string_claim_fails() -> None:
    trust = load({"gh": github_trust()}).trusts["gh"]
    assert trust.admits({**GITHUB_CLAIMS, "ref": "refs/tags/v1"})
    assert not trust.admits({**GITHUB_CLAIMS, "ref": "refs/heads/feature"})
    assert not trust.admits({**GITHUB_CLAIMS, "repository_owner": "evil"})
    assert not trust.admits({k: v for k, v in GITHUB_CLAIMS.items() if k != "ref"})
    assert not trust.admits({**GITHUB_CLAIMS, "repository_owner": ["acme"]})
    assert not trust.admits({**GITHUB_CLAIMS, "repository_owner": {"acme": "acme"}})


def test_an_account_needs_every_claim_it_names_as_a_printable_string() -> None:
    trust = load({"gh": github_trust()}).trusts["gh"]
    assert trust.account_for({**GITHUB_CLAIMS, "repository": 7}) is None
    assert trust.account_for({k: v for k, v in GITHUB_CLAIMS.items() if k != "repository"}) is None
    assert trust.account_for({**GITHUB_CLAIMS, "repository": "acme/app\n"}) is None
    assert trust.account_for({**GITHUB_CLAIMS, "repository": "a" * 300}) is None
    # the account is a name, not a repository path: upper case is kept
    assert trust.account_for({**GITHUB_CLAIMS, "repository": "Acme/App"}) == "github:Acme/App"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "*",
        "acme/*",
        "..",
        "acme/..",
        "../acme",
        "Acme/app",
        "/acme/app",
        "acme/app/",
        "a//b",
        "acme/**",
        "reg.io:5000/acme",
        "a" * 256,
    ],
)
def test_a_claim_value_that_is_no_safe_repository_path_makes_its_rule_match_nothing(
    value: str,
) -> None:
    rules = {"${claim.repository}": ["pull", "push"], "${claim.repository}/**": ["pull"]}
    policy = load({"gh": github_trust(rules=rules, account="gh:${claim.sub}")})
    who = identity(policy.trusts["gh"], {**GITHUB_CLAIMS, "repository": value})
    assert grants(
        policy,
        who,
        "repository:acme/app:pull,push",
        "repository:acme/app/x:pull",
        "repository:x:pull",
        "repository:base/python:pull",  # the group's rules still hold
    ) == [(), (), (), ("pull",)]


def test_rules_that_tie_once_bound_make_the_trust_grant_nothing_of_its_own() -> None:
    rules = {"acme/app": ["pull"], "${claim.repository}": ["pull", "push"]}
    policy = load({"gh": github_trust(rules=rules)})
    trust = policy.trusts["gh"]
    tie = identity(trust, GITHUB_CLAIMS)
    assert grants(policy, tie, "repository:acme/app:pull", "repository:base/x:pull") == [
        (),
        ("pull",),
    ]
    other = identity(trust, {**GITHUB_CLAIMS, "repository": "acme/web"})
    assert grants(policy, other, "repository:acme/app:pull", "repository:acme/web:push") == [
        ("pull",),
        ("push",),
    ]


def test_account_stands_for_the_account_in_the_trusts_own_rules() -> None:
    rules = {"mirror/${account}": ["pull", "push"]}
    policy = load({"k8s": kubernetes_trust(rules=rules, account="${claim.sub}-x")})
    trust = policy.trusts["k8s"]
    claims = {**KUBERNETES_CLAIMS, "sub": "builder"}
    assert grants(policy, identity(trust, claims), "repository:mirror/builder-x:push") == [
        ("push",)
    ]
    assert grants(policy, identity(trust, KUBERNETES_CLAIMS), "repository:mirror/x:pull") == [()]


def test_trust_for_chooses_by_issuer_and_audience() -> None:
    policy = load(
        {
            "gh": github_trust(),
            "gh-staging": github_trust(audience="https://staging.example.com"),
            "k8s": kubernetes_trust(),
        }
    )
    assert policy.trust_for(GITHUB, [REGISTRY]).name == "gh"  # type: ignore[union-attr]
    assert policy.trust_for(GITHUB, REGISTRY).name == "gh"  # type: ignore[union-attr]
    staging = policy.trust_for(GITHUB, ["x", "https://staging.example.com"])
    assert staging is not None and staging.name == "gh-staging"
    assert policy.trust_for(CLUSTER, [REGISTRY]).name == "k8s"  # type: ignore[union-attr]
    assert policy.trust_for(GITHUB, ["https://other.example.com"]) is None
    assert policy.trust_for("https://evil.example.com", [REGISTRY]) is None
    assert policy.trust_for(GITHUB + "/", [REGISTRY]) is None  # iss is compared exactly
    # one token for two trusts: which it was meant for cannot be told
    assert policy.trust_for(GITHUB, [REGISTRY, "https://staging.example.com"]) is None


def test_a_trust_gone_from_the_policy_gives_nothing() -> None:
    policy = load({"gh": github_trust()})
    who = identity(policy.trusts["gh"], GITHUB_CLAIMS)
    assert load({"other": github_trust()}).rights(who) is None


def test_rights_are_remembered_per_trust_account_and_claim_values() -> None:
    policy = load({"gh": github_trust()})
    trust = policy.trusts["gh"]
    first = policy.rights(identity(trust, GITHUB_CLAIMS))
    assert policy.rights(identity(trust, GITHUB_CLAIMS)) is first
    assert policy.rights(identity(trust, {**GITHUB_CLAIMS, "repository": "acme/web"})) is not first


def test_the_catalog_follows_the_trust_then_its_groups() -> None:
    assert (
        load({"gh": github_trust(catalog=False)})
        .rights(identity(load({"gh": github_trust(catalog=False)}).trusts["gh"], GITHUB_CLAIMS))
        .may_list_catalog
        is False
    )  # type: ignore[union-attr]
    policy = load({"gh": github_trust()}, groups={"ci": {"catalog": False}})
    assert policy.rights(identity(policy.trusts["gh"], GITHUB_CLAIMS)).may_list_catalog is False  # type: ignore[union-attr]


def test_a_trust_without_conditions_is_refused_with_why() -> None:
    assert refusal({"gh": github_trust(conditions=None)}) == (
        'issuers.json: trusts.gh: a trust needs "conditions" (claims every token must hold, '
        'e.g. {"repository_owner": "acme"}): without one, every token the issuer signs for '
        "this audience would log in, other owners' included"
    )
    assert refusal({"gh": github_trust(conditions={})}).startswith(
        "issuers.json: trusts.gh.conditions: expected an object of claims and the values they "
        'must hold, e.g. {"repository_owner": "acme"'
    )


@pytest.mark.parametrize(
    ("trusts", "expected"),
    [
        ([], 'issuers.json: expected an object: {"trusts": {NAME: {...}}}'),
        ({"trust": {}}, 'issuers.json: trust: unknown key "trust" (did you mean "trusts"?)'),
        ({"trusts": []}, "issuers.json: trusts: expected an object mapping trust names to trusts"),
    ],
)
def test_the_top_of_the_file_is_checked(trusts: object, expected: str) -> None:
    assert document_refusal(trusts) == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"issuer": None}, 'trusts.gh: a trust needs "issuer" (the exact "iss" of its tokens'),
        ({"audience": None}, 'trusts.gh: a trust needs "audience" (a value its tokens\' "aud"'),
        ({"account": None}, 'trusts.gh: a trust needs "account" (the account a token becomes'),
        (
            {"audiense": "x"},
            'trusts.gh.audiense: unknown key "audiense" (did you mean "audience"?)',
        ),
        ({"issuer": ""}, 'trusts.gh.issuer: expected a non-empty string, not ""'),
        ({"audience": ["a"]}, 'trusts.gh.audience: expected a non-empty string, not ["a"]'),
        (
            {"issuer": "token.actions.githubusercontent.com"},
            "trusts.gh.issuer: expected an https:// URL",
        ),
        (
            {"issuer": "http://issuer.example.com"},
            "trusts.gh.issuer: keys are fetched over https:// only (http:// to 127.0.0.1 or "
            "localhost)",
        ),
        ({"issuer": GITHUB + "?x=1"}, "trusts.gh.issuer: an issuer URL has no query or fragment"),
        (
            {"jwks_uri": "ftp://x/jwks"},
            'trusts.gh.jwks_uri: expected an https:// URL, not "ftp://x/jwks"',
        ),
        (
            {"jwks_uri": "http://keys.example.com/jwks"},
            "trusts.gh.jwks_uri: keys are fetched over https:// only",
        ),
        (
            {"jwks_file": "missing.json"},
            "trusts.gh.jwks_file: no such file: /nonexistent/missing.json",
        ),
        ({"ca_file": 3}, "trusts.gh.ca_file: expected a file name, not 3"),
        (
            {"account": "github"},
            "trusts.gh.account: the account names no claim: every job would log in as one account",
        ),
        (
            {"account": "${account}"},
            "trusts.gh.account: unknown placeholder ${account} (known: ${claim.PATH})",
        ),
        ({"account": "${claim.}"}, "trusts.gh.account: an empty claim path"),
        (
            {"account": "${repository}"},
            "trusts.gh.account: unknown placeholder ${repository} (known: ${claim.PATH})",
        ),
        (
            {"account": "gh:${claim.repository"},
            "trusts.gh.account: a placeholder is not closed: write ${claim.PATH}",
        ),
        ({"groups": "ci"}, "trusts.gh.groups: expected a list of group names"),
        ({"groups": ["cd"]}, 'trusts.gh.groups[0]: no group "cd" in groups.json'),
        ({"token_ttl": 0}, "trusts.gh.token_ttl: expected a number of seconds above 0, not 0"),
        (
            {"max_token_age": True},
            "trusts.gh.max_token_age: expected a number of seconds above 0, not true",
        ),
        (
            {"max_token_age": 1.5},
            "trusts.gh.max_token_age: expected a number of seconds above 0, not 1.5",
        ),
        ({"catalog": "yes"}, "trusts.gh.catalog: expected true or false"),
        (
            {"conditions": {"ref": []}},
            "trusts.gh.conditions.ref: expected a non-empty string (a glob with *) or a list of "
            "them, not []",
        ),
        (
            {"conditions": {"ref": ""}},
            "trusts.gh.conditions.ref: expected a non-empty string (a glob with *) or a list of "
            'them, not ""',
        ),
        (
            {"conditions": {"ref": ["x", 1]}},
            "trusts.gh.conditions.ref: expected a non-empty string (a glob with *) or a list of "
            'them, not ["x", 1]',
        ),
        ({"rules": []}, "trusts.gh.rules: expected an object"),
        (
            {"rules": {"${claim.repository}": ["pull", "pusj"]}},
            'trusts.gh.rules["${claim.repository}"]: unknown action "pusj"',
        ),
        (
            {"rules": {"${claim.repository}": ["push"]}},
            'trusts.gh.rules["${claim.repository}"]: push requires pull',
        ),
        (
            {"rules": {"${claim.repo": ["pull"]}},
            'trusts.gh.rules["${claim.repo"]: a placeholder is not closed',
        ),
        (
            {"rules": {"${claims.repository}": ["pull"]}},
            'trusts.gh.rules["${claims.repository}"]: unknown placeholder ${claims.repository} '
            "(known: ${claim.PATH} and ${account})",
        ),
        (
            {"rules": {"a b/${claim.repository}": ["pull"]}},
            'trusts.gh.rules["a b/${claim.repository}"]: not a repository name, * or a pattern',
        ),
        (
            {"rules": {"${claim.repository}": {"actions": ["pull"]}}},
            'trusts.gh.rules["${claim.repository}"]: a rule written as an object needs "from"',
        ),
        (
            {"rules": {"a/*": ["pull"], "a/*b": ["pull"]}},
            "trusts.gh.rules[\"a/*b\"]: 'a/*' and 'a/*b' both match",
        ),
    ],
)
def test_every_refusal_names_the_file_the_place_and_why(
    changes: dict[str, object], expected: str
) -> None:
    message = refusal({"gh": github_trust(**changes)})
    assert message.startswith("issuers.json: " + expected), message


def test_ca_file_and_jwks_file_exclude_what_they_cannot_go_with(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text("{}")
    (tmp_path / "ca.pem").write_text("")
    with pytest.raises(PolicyError) as both:
        load(
            {"gh": github_trust(jwks_file="jwks.json", jwks_uri=f"{GITHUB}/jwks")},
            config_dir=tmp_path,
        )
    assert (
        str(both.value) == "issuers.json: trusts.gh.jwks_uri: give jwks_uri or jwks_file, not both"
    )
    with pytest.raises(PolicyError) as ca:
        load({"gh": github_trust(jwks_file="jwks.json", ca_file="ca.pem")}, config_dir=tmp_path)
    assert str(ca.value) == (
        "issuers.json: trusts.gh.ca_file: the keys come from jwks_file: nothing is fetched, "
        "so no CA is needed"
    )
    # a cluster's issuer need not be a URL when its keys are a local file
    policy = load(
        {"k8s": kubernetes_trust(issuer="kubernetes/serviceaccount", jwks_file="jwks.json")},
        config_dir=tmp_path,
    )
    assert policy.trusts["k8s"].issuer == "kubernetes/serviceaccount"


def test_a_trust_may_not_bear_the_name_of_a_users_json_account_in_any_case() -> None:
    users = {"Builder": {"pass_hash": HASH}}
    assert refusal({"builder": github_trust()}, users=users) == (
        "issuers.json: trusts.builder: users.json holds the account 'Builder': a trust's name "
        "is what a job logs in as (TRUST:JWT), so it must not be an account's"
    )


@pytest.mark.parametrize("name", ["", "a:b", "tab\there", "x" * 256])
def test_a_trust_name_is_one_that_basic_credentials_can_carry(name: str) -> None:
    assert refusal({name: github_trust()}).endswith(
        "trust names must be 1-255 printable characters, no ':'"
    )


def test_two_trusts_with_one_issuer_and_one_audience_are_refused() -> None:
    assert refusal({"gh": github_trust(), "gh2": github_trust(conditions={"ref": "x"})}) == (
        "issuers.json: trusts.gh2: trust 'gh' has the same issuer and audience: a token could "
        "not tell which of the two it is for"
    )


def test_issuers_json_is_optional_and_loads_with_the_other_files(tmp_path: Path) -> None:
    (tmp_path / "users.json").write_text(json.dumps({"alice": {"pass_hash": HASH}}))
    (tmp_path / "repositories.json").write_text("{}")
    assert load_policy(tmp_path).policy.trusts == {}
    (tmp_path / "groups.json").write_text(json.dumps(GROUPS))
    (tmp_path / "issuers.json").write_text(json.dumps({"trusts": {"gh": github_trust()}}))
    policy = load_policy(tmp_path).policy
    assert list(policy.trusts) == ["gh"]
    who = identity(policy.trusts["gh"], GITHUB_CLAIMS)
    assert grants(policy, who, "repository:base/x:pull") == [("pull",)]
    (tmp_path / "issuers.json").write_text('{"trusts": {"gh": {"issuer": 1,}}}')
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path)
    assert (caught.value.file, caught.value.line, caught.value.column) == (
        str(tmp_path / "issuers.json"),
        1,
        32,
    )


def test_the_start_up_log_says_what_each_trust_takes_and_gives(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text("{}")
    policy = load(
        {"gh": github_trust(), "k8s": kubernetes_trust(jwks_file="jwks.json")}, config_dir=tmp_path
    )
    assert trust_summaries(policy) == [
        f"trust gh: iss {GITHUB}, aud {REGISTRY}, keys from "
        f"{GITHUB}/.well-known/openid-configuration; 2 conditions; account "
        "github:${claim.repository}; group ci, 1 rules of its own",
        f"trust k8s: iss {CLUSTER}, aud {REGISTRY}, keys from {tmp_path / 'jwks.json'}; "
        "1 conditions; account k8s:${claim[kubernetes.io].namespace}:"
        "${claim[kubernetes.io].serviceaccount.name}; group ci, 1 rules of its own",
    ]
