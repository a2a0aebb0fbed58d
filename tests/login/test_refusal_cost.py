"""Every refused password costs one bcrypt, wherever its name lives (Hardening III, item 7).

With ``--ldap-url`` set, users.json names took ~165 ms to refuse, directory names ~10 ms and
unknown names ~5 ms, and an empty password was refused at once for all but users.json names:
enough to tell which names exist, and where. Counted here, not timed: the bcrypt calls each
refusal makes through the bcrypt queue's workers (real bcrypt, inline), and at which cost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from ldap_server import BASE, PASSWORD, SERVICE_DN, Slapd
from realms import realm_api
from stand_ins import DirectoryStandIn
from support import hash_password, settled, write_key_pair
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import DIRECTORY, Identity, Login, LoginRefused
from tokend.login.in_flight import InFlight
from tokend.login.ldap.accounts import DirectoryAccounts
from tokend.login.ldap.client import Directory
from tokend.login.ldap.config import DirectoryConfig
from tokend.login.logins import Logins
from tokend.login.password_file import PasswordFile, UnknownNames
from tokend.login.passwords import PasswordChecker
from tokend.login.throttle import LoginThrottle
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import Policy
from tokend.threads import InlineRunner

NOW = 1_800_000_000
CLIENT = "192.0.2.10"


class CountingWorkers:
    """Real bcrypt, inline; remembers the cost of every hash it was asked to check."""

    def __init__(self) -> None:
        self.costs: list[int] = []
        self._inline = InlineRunner()

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.costs.append(int(args[1][4:6]))
        return self._inline.run(function, *args)


class OneAccount(DirectoryStandIn):
    """A directory that knows one account and its password: the door's view of one, in memory."""

    def __init__(self, current: Callable[[], Policy]) -> None:
        self.asked: list[tuple[str, bytes]] = []
        self._current = current

    async def authenticate(self, credentials: object, gate: object) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        account, password = credentials.account, credentials.password
        self.asked.append((account, password))
        if (account, password) != ("mozart", b"right"):
            return None
        return Login(Identity(account, DIRECTORY), self._current())

    async def lookup(self, account: str) -> Identity | None:
        return None


Door = tuple[Logins, CountingWorkers, OneAccount, PolicyHolder]


@pytest.fixture
def door(tmp_path: Path) -> Door:
    config = tmp_path / "config"
    config.mkdir()
    users = {
        "alice": {"pass_hash": hash_password("alice-pw", 5), "repositories": {}},
        "bob": {"pass_hash": hash_password("bob-pw", 4), "repositories": {}},
    }
    (config / "users.json").write_text(json.dumps(users))
    (config / "repositories.json").write_text(json.dumps({"repositories": []}))
    holder = PolicyHolder(load_policy(config).policy, NOW)
    clock = Clock()
    clock.advance(NOW)
    workers = CountingWorkers()
    passwords = PasswordChecker(workers)
    current = lambda: holder.current  # noqa: E731
    directory = OneAccount(current)
    password_file = PasswordFile(current, passwords, CredentialCache(ttl=0), clock.seconds)
    logins = Logins(
        current=current,
        authenticators=[password_file, directory, UnknownNames(password_file)],
        passwords=passwords,
        clock=clock.seconds,
        throttle=LoginThrottle(per_account=0, per_address=0, window=1),
        in_flight=InFlight(0),
    )
    return logins, workers, directory, holder


def refused(logins: Logins, account: str, password: bytes) -> None:
    answer = logins.login(UsernamePassword(account, password), CLIENT)
    assert isinstance(answer, Deferred)
    with pytest.raises(LoginRefused, match="invalid user name or password"):
        settled(answer)


@pytest.mark.parametrize(
    ("account", "password", "cost"),
    [
        ("alice", b"wrong", 5),
        ("alice", b"", 5),
        ("alice", b"x" * 73, 5),
        ("mozart", b"wrong", None),
        ("mozart", b"", None),
        ("nobody", b"wrong", None),
        ("nobody", b"", None),
    ],
)
def test_every_refusal_costs_one_bcrypt_at_the_names_cost(
    door: Door,
    account: str,
    password: bytes,
    cost: int | None,
) -> None:
    """A users.json name's padding costs what its own hash costs; any other name's, the cost
    the policy draws for it (what an unknown name costs without a directory)."""
    logins, workers, directory, holder = door
    refused(logins, account, password)
    assert workers.costs == [cost or holder.current.dummy_cost(account)]
    if not password:
        assert directory.asked == [], "an empty password is never sent to a backend"


def test_a_directory_login_that_succeeds_costs_no_bcrypt(
    door: Door,
) -> None:
    logins, workers, _, _ = door
    login = settled(logins.login(UsernamePassword("mozart", b"right"), CLIENT))
    assert login.identity == Identity("mozart", DIRECTORY)
    assert workers.costs == []


async def answered(http: StubTreq, request: Deferred[Any]) -> int:
    """StubTreq moves bytes only when flushed; the directory answers on the real reactor."""
    done: list[Any] = []
    request.addBoth(lambda result: done.append(result) or result)
    for _ in range(2000):
        http.flush()
        if done:
            break
        await deferLater(reactor, 0.005, lambda: None)
    response = await request
    return int(response.code)


@pytest_twisted.ensureDeferred
async def test_refusals_through_the_realm_each_cost_one_bcrypt(
    tmp_path: Path, slapd: Slapd
) -> None:
    """The same against the real directory: a users.json name, a directory name, a name the
    directory does not hold, a name outside its base, and empty passwords."""
    config = tmp_path / "config"
    config.mkdir()
    users = {"alice": {"pass_hash": hash_password("alice-pw"), "repositories": {"*": ["pull"]}}}
    (config / "users.json").write_text(json.dumps(users))
    (config / "repositories.json").write_text(json.dumps({"repositories": []}))
    key_path, cert_path = write_key_pair(tmp_path)
    holder = PolicyHolder(load_policy(config).policy, reactor.seconds())
    cache = CredentialCache(ttl=0)
    directory = Directory(
        DirectoryConfig(
            urls=(slapd.url,), base=BASE, bind_dn=SERVICE_DN, bind_password=slapd.bind_password
        ),
        reactor,
    )
    counting = CountingWorkers()
    api = realm_api(
        holder,
        (key_path, cert_path),
        clock=reactor,
        workers=counting,
        services=["svc"],
        credential_cache=cache,
        directory=DirectoryAccounts(directory, lambda: holder.current, cache, reactor.seconds, 5),
    )
    http = StubTreq(api.resource())

    async def login(user: str, password: str) -> int:
        request = http.get("http://tokend/v2/token?service=svc", auth=(user, password))
        return await answered(http, request)

    try:
        for user, password in [
            ("alice", "wrong"),
            ("alice", ""),
            ("mozart", "wrong"),
            ("mozart", ""),
            ("nobody", "wrong"),
            ("kant", PASSWORD),  # outside the search base
        ]:
            before = len(counting.costs)
            assert await login(user, password) == 401, user
            assert len(counting.costs) == before + 1, (user, password)
        assert await login("mozart", PASSWORD) == 200
        assert len(counting.costs) == 6, "a directory login that succeeds is not slowed"
    finally:
        directory.close()
