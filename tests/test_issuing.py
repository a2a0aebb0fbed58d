"""Issuing, alone and in memory: what is asked ∩ what the identity's policy allows, signed,
plus a refresh token only when asked for by a login (never anonymously), or the one presented
when the refresh_token grant was used."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support import (
    load_certificate,
    settled,
    verify_jwt,
    write_key_pair,
    write_policy,
    write_script,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from tokend.access_tokens.cap import parse_cap
from tokend.client_address import ClientAddress
from tokend.issuing import Issued, Issuing
from tokend.login.assembly import logins_for
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import ACCESS_TOKEN_SOURCE, Login, TokenUse
from tokend.login.logins import Logins
from tokend.login.passwords import PasswordChecker
from tokend.login.refresh_tokens import RefreshTokens
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.programs.authorization import AuthorizationProgram, AuthorizationUnavailable
from tokend.programs.runner import Program, ProgramRunner, ProgramSlots
from tokend.scope import parse_scopes
from tokend.signing.keys import load_signing_key
from tokend.signing.tokens import TokenIssuer
from tokend.threads import InlineRunner

NOW = 1_800_000_000.0
ASKED = parse_scopes(["repository:public/hello:pull,push", "repository:private/x:pull"])


class Desk:
    def __init__(
        self,
        tmp_path: Path,
        *,
        refresh_ttl: int | None = 3600,
        authorization: AuthorizationProgram | None = None,
    ) -> None:
        config = tmp_path / "config"
        write_policy(
            config,
            {"bar": ("bar", {"public/*": ["pull", "push"]})},
            {"repositories": ["public/hello"]},
        )
        key_path, cert_path = write_key_pair(tmp_path)
        self.certificate = load_certificate(cert_path)
        key = load_signing_key(key_path, cert_path)
        holder = PolicyHolder(load_policy(config).policy, NOW)
        self.refresh_tokens = (
            None if refresh_ttl is None else RefreshTokens(key, "tokend-test", refresh_ttl)
        )
        self.logins: Logins = logins_for(
            policy=holder,
            passwords=PasswordChecker(InlineRunner()),
            clock=lambda: NOW,
            refresh_tokens=self.refresh_tokens,
        )
        self.issuing = Issuing(
            policy=holder,
            tokens=TokenIssuer(key, "tokend-test", 300),
            logins=self.logins,
            clock=lambda: NOW,
            authorization=authorization,
        )

    def login(self, user: str) -> Login:
        login = settled(self.logins.login(UsernamePassword(user, user.encode()), "127.0.0.1"))
        assert isinstance(login, Login)
        return login

    def claims(self, token: str) -> dict[str, object]:
        return verify_jwt(token, self.certificate)[1]


def test_anonymous_gets_what_anonymous_may_pull_and_never_a_refresh_token(
    tmp_path: Path,
) -> None:
    desk = Desk(tmp_path)
    issued = desk.issuing.issue(None, "registry.test", ASKED, offline=True)
    assert [str(scope) for scope in issued.granted] == [
        "repository:public/hello:pull",
        "repository:private/x:",
    ]
    assert issued.refresh_token is None
    claims = desk.claims(issued.token.token)
    assert (claims["sub"], claims["aud"], claims["iat"]) == ("", "registry.test", NOW - 10)
    assert claims["access"] == [{"type": "repository", "name": "public/hello", "actions": ["pull"]}]


def test_a_login_gets_its_rights_and_a_refresh_token_only_when_asked(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    login = desk.login("bar")
    issued = desk.issuing.issue(login, "registry.test", ASKED)
    assert [str(scope) for scope in issued.granted] == [
        "repository:public/hello:pull,push",
        "repository:private/x:",
    ]
    assert issued.refresh_token is None
    assert desk.claims(issued.token.token)["sub"] == "bar"
    offline = desk.issuing.issue(login, "registry.test", ASKED, offline=True)
    assert offline.refresh_token is not None
    assert desk.refresh_tokens is not None
    assert desk.refresh_tokens.read(offline.refresh_token, NOW).account == "bar"


def test_a_presented_refresh_token_is_answered_back_not_replaced(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    login = desk.login("bar")
    issued = desk.issuing.issue(login, "registry.test", ASKED, offline=True, presented="the-one")
    assert issued.refresh_token == "the-one"


def test_without_refresh_tokens_an_offline_login_gets_none(tmp_path: Path) -> None:
    desk = Desk(tmp_path, refresh_ttl=None)
    issued = desk.issuing.issue(desk.login("bar"), "registry.test", ASKED, offline=True)
    assert issued.refresh_token is None


def authorizer(tmp_path: Path, grants: str, *, decides: bool = False) -> AuthorizationProgram:
    """A real authorization program that logs each question to ``questions`` and exits 0 when
    the expression ``grants`` (over ``q``, the question) holds, else 1; ``q`` may also make it
    exit 3."""
    log = tmp_path / "questions"
    program = write_script(
        tmp_path,
        "authz.py",
        "import json, sys\n"
        "q = json.load(sys.stdin)\n"
        f"open({str(log)!r}, 'a').write(json.dumps(q) + '\\n')\n"
        f"sys.exit(3 if q['Name'] == 'broken' else 0 if {grants} else 1)\n",
    )
    runner = ProgramRunner(Program(program, (), 5), reactor, ProgramSlots(4))
    return AuthorizationProgram(runner, decides=decides)


def questions(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "questions"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def issued(answer: Issued | Deferred[Issued]) -> Issued:
    assert isinstance(answer, Deferred), "with an authorization program, issuing waits"
    return await answer


@pytest_twisted.ensureDeferred
async def test_the_authorization_program_narrows_what_the_policy_grants(tmp_path: Path) -> None:
    """Asked only about what the policy grants, with docker_auth's fields; its refusal takes
    the scope away, and a scope the policy grants nothing on is never put to it."""
    desk = Desk(tmp_path, authorization=authorizer(tmp_path, "q['Name'] != 'public/hello'"))
    login = desk.login("bar")
    answer = await issued(
        desk.issuing.issue(login, "registry.test", ASKED, client=ClientAddress("192.0.2.7"))
    )
    assert [str(scope) for scope in answer.granted] == [
        "repository:public/hello:",
        "repository:private/x:",
    ]
    assert desk.claims(answer.token.token)["access"] == []
    assert questions(tmp_path) == [
        {
            "Account": "bar",
            "Type": "repository",
            "Name": "public/hello",
            "Service": "registry.test",
            "IP": "192.0.2.7",
            "Actions": ["pull", "push"],
            "Labels": None,
        }
    ]
    (tmp_path / "yes").mkdir()
    desk = Desk(tmp_path / "yes", authorization=authorizer(tmp_path / "yes", "True"))
    answer = await issued(desk.issuing.issue(desk.login("bar"), "registry.test", ASKED))
    assert str(answer.granted[0]) == "repository:public/hello:pull,push"


@pytest_twisted.ensureDeferred
async def test_a_deciding_program_grants_what_a_login_asked_but_anonymous_only_narrows(
    tmp_path: Path,
) -> None:
    program = authorizer(tmp_path, "True", decides=True)
    desk = Desk(tmp_path, authorization=program)
    answer = await issued(desk.issuing.issue(desk.login("bar"), "registry.test", ASKED))
    assert [str(scope) for scope in answer.granted] == [
        "repository:public/hello:pull,push",
        "repository:private/x:pull",
    ]
    anonymous = await issued(desk.issuing.issue(None, "registry.test", ASKED, offline=True))
    assert [str(scope) for scope in anonymous.granted] == [
        "repository:public/hello:pull",
        "repository:private/x:",
    ]
    assert anonymous.refresh_token is None
    assert [(q["Account"], q["Name"], q["Actions"]) for q in questions(tmp_path)[2:]] == [
        ("", "public/hello", ["pull"])
    ]


@pytest_twisted.ensureDeferred
async def test_an_authorization_program_error_issues_nothing(tmp_path: Path) -> None:
    desk = Desk(tmp_path, authorization=authorizer(tmp_path, "True", decides=True))
    asked = parse_scopes(["repository:public/hello:pull", "repository:broken:pull"])
    with pytest.raises(AuthorizationUnavailable) as raised:
        await issued(desk.issuing.issue(desk.login("bar"), "registry.test", asked))
    assert (raised.value.account, raised.value.retry_after) == ("bar", 5)


def test_no_access_token_outlives_the_identity_it_was_issued_to(tmp_path: Path) -> None:
    """A federated identity ends with its platform JWT: the access token ends no later, in
    whole seconds; an identity that outlasts the configured lifetime gets that lifetime."""
    desk = Desk(tmp_path)
    bar = desk.login("bar")
    for expires_at, lifetime in ((NOW + 45.7, 45), (NOW + 3600, 300), (None, 300)):
        login = Login(replace(bar.identity, expires_at=expires_at), bar.policy)
        issued = desk.issuing.issue(login, "registry.test", ASKED)
        assert isinstance(issued, Issued)
        assert issued.token.expires_in == lifetime
        assert desk.claims(issued.token.token)["exp"] == NOW + lifetime


def with_token(login: Login, *scopes: str) -> Login:
    """``login`` as made with an access token whose cap is ``scopes``."""
    use = TokenUse("0123456789abcdef", "ci", parse_cap(scopes))
    identity = replace(login.identity, source=ACCESS_TOKEN_SOURCE, access_token=use)
    return Login(identity, login.policy)


TOKEN_ASKED = parse_scopes(
    [
        "repository:public/hello:pull,push",
        "repository:public/other:push,pull",
        "repository:private/x:pull",
        "registry:catalog:*",
    ]
)


def test_a_token_login_gets_its_owners_rights_within_the_tokens_cap(tmp_path: Path) -> None:
    """The owner's rights now ∩ the cap ∩ what was asked: a push outside the cap is refused,
    and nothing but repositories is granted (the catalog lists every repository)."""
    desk = Desk(tmp_path)
    login = with_token(desk.login("bar"), "public/hello:pull,push", "public/*:pull", "*:*")
    issued = desk.issuing.issue(login, "registry.test", TOKEN_ASKED)
    assert isinstance(issued, Issued)
    assert [str(scope) for scope in issued.granted] == [
        "repository:public/hello:pull,push",
        "repository:public/other:pull",
        "repository:private/x:",
        "registry:catalog:",
    ]
    assert desk.claims(issued.token.token)["access"] == [
        {"type": "repository", "name": "public/hello", "actions": ["pull", "push"]},
        {"type": "repository", "name": "public/other", "actions": ["pull"]},
    ]
    plain = desk.issuing.issue(desk.login("bar"), "registry.test", TOKEN_ASKED)
    assert isinstance(plain, Issued)
    assert str(plain.granted[3]) == "registry:catalog:*", "a password login lists the catalog"


def test_a_token_shrinks_with_its_owners_rights(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    rights = {"public/*": ["pull"], "private/*": ["pull"]}
    write_policy(tmp_path / "config", {"bar": ("bar", rights)})
    reduced = load_policy(tmp_path / "config").policy
    bar = with_token(desk.login("bar"), "public/hello:pull,push")
    login = Login(bar.identity, reduced)
    issued = desk.issuing.issue(login, "registry.test", ASKED)
    assert isinstance(issued, Issued)
    assert [str(scope) for scope in issued.granted] == [
        "repository:public/hello:pull",
        "repository:private/x:",
    ]


@pytest_twisted.ensureDeferred
async def test_a_deciding_program_never_grants_a_token_more_than_its_cap(tmp_path: Path) -> None:
    program = authorizer(tmp_path, "True", decides=True)
    desk = Desk(tmp_path, authorization=program)
    login = with_token(desk.login("bar"), "public/hello:pull", "private/x:pull")
    answer = await issued(desk.issuing.issue(login, "registry.test", TOKEN_ASKED))
    assert [str(scope) for scope in answer.granted] == [
        "repository:public/hello:pull",
        "repository:public/other:",
        "repository:private/x:pull",
        "registry:catalog:",
    ]
    # The program is asked about every scope at once: in whatever order its runs end.
    assert sorted((q["Name"], q["Actions"]) for q in questions(tmp_path)) == [
        ("private/x", ["pull"]),
        ("public/hello", ["pull"]),
    ]
