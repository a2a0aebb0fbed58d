"""Stored bcrypt hashes: what an unknown name costs, which hashes load, and logins never crash.

Hashes at high costs are made by changing the cost digits of a cost-4 hash: loading never runs
bcrypt, and these tests never check a password against them, so they cost nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import bcrypt
import pytest
from support import settled
from twisted.internet.defer import Deferred, succeed
from twisted.logger import LogEvent, capturedLogs

from tokend.login.passwords import PasswordChecker, dummy_hash
from tokend.policy.documents import users_from_document
from tokend.policy.files import load_policy
from tokend.policy.model import Policy, PolicyError, UserPolicy
from tokend.threads import InlineRunner

ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
BASE = "$2b$04$abcdefghijklmnopqrstuu" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ01234"
"""A well-formed hash (the salt's 22nd character ``u`` is one bcrypt accepts)."""
BROKEN = "$2b$04$" + "z" * 53
"""Matches the old pattern; bcrypt raises "Invalid salt" on it."""


def crafted(prefix: str, cost: int, index: int) -> str:
    """A distinct well-formed hash at ``cost``; only its form matters here."""
    tail = ALPHABET[index // 64 % 64] + ALPHABET[index % 64]
    return f"{prefix}{cost:02d}{BASE[6:-2]}{tail}"


def users_document(*mix: tuple[str, int, int]) -> dict[str, dict[str, Any]]:
    """(prefix, cost, how many users) -> a users.json document."""
    document: dict[str, dict[str, Any]] = {}
    for prefix, cost, count in mix:
        for _ in range(count):
            index = len(document)
            document[f"user{index}"] = {
                "pass_hash": crafted(prefix, cost, index),
                "repositories": {"*": ["pull"]},
            }
    return document


def policy_of(document: dict[str, dict[str, Any]]) -> Policy:
    return Policy(users_from_document(document, "users.json"))


def names(count: int) -> list[str]:
    return [f"ghost-{n}" for n in range(count)]


def cost_of(pass_hash: bytes) -> int:
    return int(pass_hash[4:6])


class RecordingWorkers:
    """Records which hash each check would run against; no bcrypt runs."""

    def __init__(self) -> None:
        self.checked: list[bytes] = []

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.checked.append(args[1])
        return succeed(False)


def test_an_unknown_name_costs_what_the_only_cost_in_use_costs() -> None:
    policy = policy_of(users_document(("$2y$", 10, 3)))
    workers = RecordingWorkers()
    checker = PasswordChecker(workers)
    known = policy.users["user0"].pass_hash
    settled(Deferred.fromCoroutine(checker.verify(known, b"guess", policy.dummy_cost("user0"))))
    for name in names(50):
        assert policy.dummy_cost(name) == 10
        settled(Deferred.fromCoroutine(checker.verify(None, b"guess", policy.dummy_cost(name))))
    assert {cost_of(h) for h in workers.checked} == {10}


def test_dummy_costs_follow_the_mix_of_costs_weighted_by_users() -> None:
    policy = policy_of(users_document(("$2b$", 5, 40), ("$2y$", 10, 3)))
    costs = Counter(policy.dummy_cost(name) for name in names(8600))
    assert set(costs) == {5, 10}
    # 3 of 43 users have cost 10: 600 of 8,600 names expected.
    assert 450 <= costs[10] <= 750, costs


def test_the_issue_s_mix_checks_unknown_names_at_both_costs() -> None:
    """One cheap user and one ``$2y$10`` user: the old code checked every unknown name at one
    cost, so the other kind of known name stood out."""
    policy = policy_of(users_document(("$2b$", 4, 1), ("$2y$", 10, 1)))
    costs = Counter(policy.dummy_cost(name) for name in names(400))
    assert set(costs) == {4, 10} and min(costs.values()) >= 120, costs


def test_a_name_always_gets_the_same_dummy_cost_also_after_a_reload() -> None:
    document = users_document(("$2b$", 5, 6), ("$2b$", 7, 4), ("$2a$", 9, 2))
    first = policy_of(document)
    probes = names(300)
    costs = [first.dummy_cost(name) for name in probes]
    assert [first.dummy_cost(name) for name in probes] == costs
    assert set(costs) == {5, 7, 9}
    for entry in document.values():
        entry["repositories"] = {"other/*": ["pull", "push"]}
    reloaded = policy_of(dict(reversed(document.items())))
    assert [reloaded.dummy_cost(name) for name in probes] == costs


class UsersThatMustNotBeWalked(Mapping[str, UserPolicy]):
    """Lookups work; walking every user fails the test."""

    def __init__(self, users: Mapping[str, UserPolicy]) -> None:
        self._users = users

    def __getitem__(self, name: str) -> UserPolicy:
        return self._users[name]

    def __len__(self) -> int:
        return len(self._users)

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("a login walked every user")

    def values(self) -> Any:
        raise AssertionError("a login walked every user")

    def items(self) -> Any:
        raise AssertionError("a login walked every user")


def test_per_login_cost_choice_does_no_per_user_work() -> None:
    policy = policy_of(users_document(("$2b$", 5, 3000), ("$2b$", 6, 1000)))
    expected = {name: policy.dummy_cost(name) for name in names(20)}
    object.__setattr__(policy, "users", UsersThatMustNotBeWalked(policy.users))
    assert {name: policy.dummy_cost(name) for name in names(20)} == expected
    assert policy.hash_costs[0][0] == 5, "the commonest cost first"


def test_an_empty_policy_checks_unknown_names_at_the_default_cost() -> None:
    assert Policy().dummy_cost("anyone") == 12
    assert Policy(MappingProxyType({})).hash_costs == ()


def write_config(config: Path, users: dict[str, dict[str, Any]]) -> None:
    config.mkdir()
    (config / "users.json").write_text(json.dumps(users, indent=2))
    (config / "repositories.json").write_text(json.dumps({"repositories": []}))


def test_a_hash_bcrypt_refuses_is_refused_at_load_with_file_path_and_user(
    tmp_path: Path,
) -> None:
    users = users_document(("$2b$", 4, 2))
    users["alice"] = {"pass_hash": BROKEN}
    write_config(tmp_path / "config", users)
    with pytest.raises(PolicyError) as raised:
        load_policy(tmp_path / "config")
    error = raised.value
    assert error.file == str(tmp_path / "config" / "users.json")
    assert error.path == "alice.pass_hash"
    assert "salt" in error.reason
    assert str(error).startswith(f"{tmp_path / 'config' / 'users.json'}: alice.pass_hash: ")


def loads(pass_hash: str) -> bool:
    try:
        users_from_document({"u": {"pass_hash": pass_hash}}, "users.json")
    except PolicyError:
        return False
    return True


def bcrypt_accepts(pass_hash: str) -> bool:
    try:
        bcrypt.checkpw(b"pw", pass_hash.encode())
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("position", [7, 20, 28, 29, 45, 59])
def test_the_loader_accepts_exactly_what_bcrypt_accepts_at_each_character(position: int) -> None:
    """Every character of bcrypt's alphabet at salt and hash positions, the salt's last (28)
    among them, against the installed bcrypt at cost 4. Outside the alphabet the loader refuses
    all (in the hash part bcrypt would only never match)."""
    real = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    for char in ALPHABET:
        candidate = real[:position] + char + real[position + 1 :]
        assert loads(candidate) == bcrypt_accepts(candidate), candidate
    for char in "$!é":
        candidate = real[:position] + char + real[position + 1 :]
        assert not loads(candidate)
        # A "$" right after the cost is, for about one salt in twenty, read by bcrypt as one
        # more separator and the salt taken from what follows: bcrypt then accepts the text
        # (and never matches). The loader refuses it always; only the other two are claimed.
        if char != "$" or position != 7:
            assert position > 28 or not bcrypt_accepts(candidate), candidate


def test_costs_outside_4_to_31_and_unknown_prefixes_are_refused() -> None:
    real = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    for cost in ("00", "03", "32", "99"):
        candidate = real[:4] + cost + real[6:]
        assert not bcrypt_accepts(candidate)
        assert not loads(candidate)
    for prefix in ("$2a$", "$2b$", "$2y$"):
        assert loads(prefix + real[4:]) and bcrypt_accepts(prefix + real[4:])
    assert loads(BASE) and bcrypt_accepts(BASE) and not loads(BROKEN)


def test_a_dummy_hash_can_be_made_at_every_cost_bcrypt_takes() -> None:
    for cost in range(4, 32):
        assert loads(dummy_hash(cost).decode())
        assert cost_of(dummy_hash(cost)) == cost
    assert bcrypt.checkpw(b"pw", dummy_hash(4)) is False
    for cost in (3, 32):
        with pytest.raises(ValueError):
            dummy_hash(cost)


def test_a_stored_hash_bcrypt_refuses_is_a_wrong_password_not_a_crash() -> None:
    checker = PasswordChecker(InlineRunner())
    events: list[LogEvent]
    with capturedLogs() as events:
        verified = settled(
            Deferred.fromCoroutine(checker.verify(BROKEN.encode(), b"pw", 4)),
        )
    assert verified is False
    assert [e["log_level"].name for e in events] == ["error"]
    assert "Invalid salt" in events[0]["reason"]


def test_mixed_costs_are_warned_about_with_counts(tmp_path: Path) -> None:
    write_config(tmp_path / "mixed", users_document(("$2b$", 12, 40), ("$2y$", 10, 3)))
    warnings = load_policy(tmp_path / "mixed").warnings
    mixed = [w for w in warnings if "bcrypt costs are mixed" in w]
    assert len(mixed) == 1
    assert mixed[0].startswith("users.json: bcrypt costs are mixed (12: 40 users, 10: 3 users): ")
    assert "user1" not in mixed[0]
    write_config(tmp_path / "uniform", users_document(("$2b$", 12, 5), ("$2y$", 12, 5)))
    assert not [w for w in load_policy(tmp_path / "uniform").warnings if "bcrypt" in w]
