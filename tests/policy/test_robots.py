"""Robots (#26): a users.json account whose ``pass_hash`` is absent or null logs in only with
its access tokens. A password login is refused after the usual dummy bcrypt, the policy's
hash costs ignore it, and the tool shows it as a robot."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from realms import CountingWorkers
from support import hash_password, settled

from tokend.cli import main
from tokend.login.assembly import logins_for
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import LoginRefused
from tokend.login.passwords import PasswordChecker, check_cost
from tokend.policy.documents import users_from_document
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import PolicyError

NOW = 1_800_000_000.0
RULES = {"ci/**": ["pull", "push"]}


def write_config(directory: Path) -> Path:
    config = directory / "config"
    config.mkdir()
    users = {
        "alice": {"pass_hash": hash_password("alice-pw", 5), "repositories": {"a/*": ["pull"]}},
        "bob": {"pass_hash": hash_password("bob-pw", 4)},
        "deployer": {"repositories": RULES},
        "builder": {"pass_hash": None, "repositories": RULES},
    }
    (config / "users.json").write_text(json.dumps(users))
    (config / "repositories.json").write_text(json.dumps({"repositories": []}))
    return config


def test_an_account_without_a_hash_is_a_robot_and_costs_ignore_it(tmp_path: Path) -> None:
    policy = load_policy(write_config(tmp_path)).policy
    assert policy.users["deployer"].pass_hash == b""
    assert policy.users["builder"].pass_hash == b""
    assert policy.users["alice"].pass_hash.startswith(b"$2b$05$")
    assert sorted(policy.hash_costs) == [(4, 1), (5, 1)], "robots hold no bcrypt cost"
    assert check_cost(policy, "deployer") in (4, 5), "a robot's refusal costs a dummy bcrypt"
    assert policy.dummy_cost("deployer") in (4, 5)
    with pytest.raises(PolicyError, match="pass_hash"):
        users_from_document({"carol": {"pass_hash": ""}}, "users.json")


def test_a_robot_password_login_is_refused_after_one_dummy_bcrypt(tmp_path: Path) -> None:
    policy = load_policy(write_config(tmp_path)).policy
    workers = CountingWorkers()
    logins = logins_for(
        policy=PolicyHolder(policy, NOW), passwords=PasswordChecker(workers), clock=lambda: NOW
    )
    for password in (b"", b"anything", b"x" * 100):
        with pytest.raises(LoginRefused):
            settled(logins.login(UsernamePassword("deployer", password), "192.0.2.1"))
    assert workers.calls == 3, "each refusal costs what a wrong password costs"
    login = settled(logins.login(UsernamePassword("bob", b"bob-pw"), "192.0.2.1"))
    assert login.identity.account == "bob"


def tool(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdin=io.StringIO(), stdout=out), out.getvalue()


def test_the_tool_shows_robots_as_robots(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    code, listed = tool("user", "list", "--config-dir", config)
    assert code == 0
    lines = {line.split()[0]: line for line in listed.splitlines()}
    assert "robot" in lines["deployer"] and "robot" in lines["builder"]
    assert "robot" not in lines["alice"]
    code, checked = tool("check-config", "--config-dir", config)
    assert code == 0, checked
    assert "4 users (2 robots: access tokens only)" in checked
    code, explained = tool(
        "explain", "--config-dir", config, "deployer", "repository:ci/x:pull,push"
    )
    assert code == 0, explained
    assert "deployer gets pull,push" in explained.replace("'", "")
    assert "robot" in explained and "access tokens" in explained
