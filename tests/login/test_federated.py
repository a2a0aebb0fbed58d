"""The federated door alone, in memory: real JWTs signed with keys made here, the issuers' keys
as a JWKS in memory, a ``task.Clock``. What a verified token logs in as, that it is remembered
until it expires, that each token is checked against one trust only, and every refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from minting import AUDIENCE, NOW, IssuerKey, github_claims, jwks, kubernetes_claims
from support import settled, write_policy
from trusted_issuers import CLUSTER, GITHUB, GITHUB_TRUST, TRUSTS, Published, write_trusts
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from tokend.login.credentials import FederatedToken, UsernamePassword
from tokend.login.federated import FederatedAccounts, FederatedLoginRefused
from tokend.login.federation.verify import jwt_fingerprint as fingerprint
from tokend.login.identity import FEDERATED_SOURCE, OPEN_GATE, Login
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import FEDERATED
from tokend.scope import parse_scope

GITHUB_KEY = IssuerKey.generate("RS256", "gh-1")
CLUSTER_KEY = IssuerKey.generate("ES256", "k8s-1")


class Door:
    """FederatedAccounts over a config directory with the GitHub Actions and cluster trusts."""

    def __init__(self, tmp_path: Path, trusts: dict[str, Any] = TRUSTS) -> None:
        self.config = tmp_path / "config"
        write_policy(self.config, {"alice": ("alice", {"*": ["pull"]})})
        write_trusts(self.config, trusts)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.holder = PolicyHolder(load_policy(self.config).policy, NOW)
        self.keys = Published({GITHUB: jwks(GITHUB_KEY), CLUSTER: jwks(CLUSTER_KEY)})
        holder = self.holder
        self.door = FederatedAccounts(self.keys, lambda: holder.current, self.clock.seconds)

    def edit(self, trusts: dict[str, Any]) -> None:
        write_trusts(self.config, trusts)
        self.holder.replace(load_policy(self.config).policy, self.clock.seconds())

    def login(self, credentials: object) -> Login:
        """What the door answers: its memory first, then a check."""
        policy = self.holder.current
        answered = self.door.answers(credentials, policy)
        assert isinstance(answered, FederatedToken)
        remembered = self.door.at_once(answered, policy, self.clock.seconds())
        if remembered is not None:
            return remembered
        login = settled(ensureDeferred(self.door.authenticate(answered, OPEN_GATE)))
        assert isinstance(login, Login)
        return login

    def refused(self, credentials: object) -> FederatedLoginRefused:
        with pytest.raises(FederatedLoginRefused) as refused:
            self.login(credentials)
        return refused.value

    def grants(self, login: Login, scope: str) -> tuple[str, ...]:
        policy = login.policy
        return policy.grant(
            login.identity.account, parse_scope(scope), policy.rights(login.identity), None
        )


def github_token(**changes: Any) -> str:
    return GITHUB_KEY.sign(github_claims(**changes))


def test_a_github_actions_token_logs_in_as_its_repository_with_its_rights(
    tmp_path: Path,
) -> None:
    door = Door(tmp_path)
    token = github_token()
    for credentials in (FederatedToken(token), UsernamePassword("github-actions", token.encode())):
        login = door.login(credentials)
        identity = login.identity
        assert (identity.account, identity.source, identity.rights_from, identity.trust) == (
            "github:acme/widget",
            FEDERATED_SOURCE,
            FEDERATED,
            "github-actions",
        )
        assert identity.claim_values == (("repository", "acme/widget"),)
        assert identity.expires_at == NOW + 295
        assert door.grants(login, "repository:acme/widget:pull,push") == ("pull", "push")
        assert door.grants(login, "repository:acme/other:pull") == ()


def test_a_kubernetes_token_logs_in_by_its_namespace_and_service_account(
    tmp_path: Path,
) -> None:
    door = Door(tmp_path)
    login = door.login(FederatedToken(CLUSTER_KEY.sign(kubernetes_claims(CLUSTER))))
    assert (login.identity.account, login.identity.trust) == ("k8s:ci/builder", "cluster")
    assert door.grants(login, "repository:ci/tools:pull,push") == ("pull",)


def test_names_that_are_no_trust_are_left_to_the_other_authenticators(tmp_path: Path) -> None:
    door = Door(tmp_path)
    policy = door.holder.current
    for name in ("alice", "nobody", "GitHub-Actions"):
        assert door.door.answers(UsernamePassword(name, github_token().encode()), policy) is None


def test_a_verified_token_is_remembered_until_it_expires(tmp_path: Path) -> None:
    door = Door(tmp_path)
    token = FederatedToken(github_token())
    door.login(token)
    assert door.keys.asked == 1
    door.clock.advance(290)
    for _ in range(3):
        assert door.login(token).identity.account == "github:acme/widget"
    assert door.keys.asked == 1, "remembered: no keys asked, no signature checked"
    door.clock.advance(5)
    assert "expired" in door.refused(token).message
    assert door.keys.asked == 2


def test_a_trust_edited_live_takes_effect_for_a_remembered_token_at_once(
    tmp_path: Path,
) -> None:
    door = Door(tmp_path)
    token = FederatedToken(github_token())
    door.login(token)
    door.edit({**TRUSTS, "github-actions": {**GITHUB_TRUST, "conditions": {"ref": "refs/tags/*"}}})
    refusal = door.refused(token)
    assert "a condition of the trust does not hold" in refusal.message
    assert (refusal.trust, refusal.account) == ("github-actions", "github:acme/widget")
    door.edit({**TRUSTS, "github-actions": {**GITHUB_TRUST, "account": "ci:${claim.actor}"}})
    assert door.login(token).identity.account == "ci:octocat"
    assert door.keys.asked == 1
    door.edit({**TRUSTS, "github-actions": {**GITHUB_TRUST, "audience": "https://other.example"}})
    assert "no trust takes this issuer and audience" in door.refused(token).message


def test_a_token_is_checked_against_the_trust_it_names_only(tmp_path: Path) -> None:
    door = Door(tmp_path)
    github, kubernetes = github_token(), CLUSTER_KEY.sign(kubernetes_claims(CLUSTER))
    as_cluster = door.refused(UsernamePassword("cluster", github.encode()))
    assert as_cluster.trust == "cluster"
    assert "issuer is not cluster's" in as_cluster.message or "key" in as_cluster.message
    door.login(FederatedToken(github))  # remembered under its own trust
    assert door.refused(UsernamePassword("cluster", github.encode())).trust == "cluster"
    assert door.refused(UsernamePassword("github-actions", kubernetes.encode())).trust == (
        "github-actions"
    )


def test_a_remembered_login_is_reused_only_for_its_trust_its_policy_and_its_age(
    tmp_path: Path,
) -> None:
    """Under the same policy a remembered token's login is the same one (no claims read
    again); named for another trust it is checked against that trust; past the trust's
    max_token_age it is refused although its login was remembered."""
    door = Door(tmp_path)
    token = github_token(exp=int(NOW) + 7200)  # outlives the trust's max_token_age of 3600 s
    basic = UsernamePassword("github-actions", token.encode())
    first = door.login(basic)
    assert door.login(basic) is first
    assert door.refused(UsernamePassword("cluster", token.encode())).trust == "cluster"
    assert door.login(basic) is first
    door.clock.advance(3600 - (NOW - int(NOW)) + 1)  # the token's iat is int(NOW) - 5
    refusal = door.refused(basic)
    assert "older than" in refusal.message, refusal.message


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"repository_owner": "evil"}, "a condition of the trust does not hold"),
        ({"ref": "refs/heads/feature"}, "a condition of the trust does not hold"),
        ({"repository": None}, "a claim the account is made of is missing"),
        ({"iat": int(NOW) - 3601}, "older than 3600 s"),
        ({"exp": int(NOW) - 1}, "expired"),
        ({"exp": None}, "no exp"),
        ({"nbf": int(NOW) + 120}, "not valid yet"),
        ({"aud": "https://other.example"}, "the audience is not github-actions's"),
    ],
)
def test_refusals_name_the_trust_and_the_token_by_fingerprint_only(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    door = Door(tmp_path)
    token = github_token(**changes)
    refusal = door.refused(UsernamePassword("github-actions", token.encode()))
    assert reason in refusal.message
    assert (refusal.trust, refusal.jwt) == ("github-actions", fingerprint(token))
    assert token not in refusal.message and token.split(".")[1] not in refusal.message


def test_a_token_no_trust_takes_is_refused_by_its_issuer_and_audience(tmp_path: Path) -> None:
    door = Door(tmp_path)
    for claims in (
        github_claims(aud="https://other.example"),
        github_claims(iss="https://evil.example"),
        github_claims(aud=[AUDIENCE, "https://other.example"], iss=None),
    ):
        refusal = door.refused(FederatedToken(GITHUB_KEY.sign(claims)))
        assert "no trust takes this issuer and audience" in refusal.message
        assert refusal.trust is None
    assert door.keys.asked == 0, "no key fetched for an issuer no trust names"
    assert "no such trust" in door.refused(FederatedToken(github_token(), "gone")).message
