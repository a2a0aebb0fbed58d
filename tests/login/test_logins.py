"""The door (:class:`tokend.login.logins.Logins`) in memory, with authenticators written here:
which one decides, and what the door does around it whichever it is (throttle once, the
cache's answer, the share of checks in flight, one bcrypt per refusal, the metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from policies import NOW, policy_in
from support import settled
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from tokend.login.credentials import RefreshToken, UsernamePassword
from tokend.login.identity import (
    EntryGate,
    Identity,
    Login,
    LoginRefused,
    LoginThrottled,
    NotMine,
    UnfitName,
)
from tokend.login.in_flight import InFlight
from tokend.login.logins import Logins, ShareExceeded
from tokend.login.passwords import PasswordChecker
from tokend.login.throttle import LoginThrottle
from tokend.policy.model import Policy
from tokend.threads import InlineRunner

HERE = "192.0.2.10"
ELSEWHERE = "198.51.100.5"


class CountingWorkers:
    """Real bcrypt, inline; remembers the cost of every hash it was asked to check."""

    def __init__(self) -> None:
        self.costs: list[int] = []
        self._inline = InlineRunner()

    def run(self, function: Any, *args: Any) -> Deferred[Any]:
        self.costs.append(int(args[1][4:6]))
        return self._inline.run(function, *args)


class Accounts:
    """An authenticator of the names in ``passwords`` (lower-cased, as some directories
    spell them), checked against a dict; ``remembered`` logins are answered at once, and
    ``held`` makes every check wait until the test fires it."""

    credential_types: tuple[type, ...] = (UsernamePassword,)

    def __init__(
        self,
        source: str,
        passwords: dict[str, bytes],
        *,
        costs_a_bcrypt: bool = False,
        unfit: str = "",
        takes_a_place: bool = True,
    ) -> None:
        self.source = source
        self.refusals_cost_a_bcrypt = costs_a_bcrypt
        self.checks_take_a_place = takes_a_place
        self.passwords = passwords
        self.unfit = unfit
        self.remembered: set[tuple[str, bytes]] = set()
        self.asked: list[str] = []
        self.held: list[Deferred[None]] | None = None
        self.policy = Policy()

    def answers(self, credentials: object, policy: Policy) -> object | None:
        assert isinstance(credentials, UsernamePassword)
        if self.unfit and self.unfit in credentials.account:
            raise UnfitName("a name no one may use")
        spelled = credentials.account.lower()
        if spelled not in self.passwords:
            return None
        return UsernamePassword(spelled, credentials.password)

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        if (credentials.account, credentials.password) in self.remembered:
            return Login(Identity(credentials.account, self.source), policy)
        return None

    async def authenticate(self, credentials: object, gate: EntryGate) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        self.asked.append(credentials.account)
        if self.held is not None:
            waiting: Deferred[None] = Deferred()
            self.held.append(waiting)
            await waiting
        if self.passwords[credentials.account] != credentials.password:
            return None
        return Login(Identity(credentials.account, self.source), self.policy)


class Passing(Accounts):
    """An authenticator that answers every name but, once asked, says ``mine`` are the only
    ones it decides (an external program's exit status 2 for the others)."""

    def __init__(self, mine: dict[str, bytes]) -> None:
        super().__init__("passing", mine)

    def answers(self, credentials: object, policy: Policy) -> object | None:
        return credentials

    async def authenticate(self, credentials: object, gate: EntryGate) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        self.asked.append(credentials.account)
        if credentials.account not in self.passwords:
            raise NotMine(credentials.account)
        if self.passwords[credentials.account] != credentials.password:
            return None
        return Login(Identity(credentials.account, self.source), self.policy)


class Recorded:
    """Metrics kept as lists, for the door's counts."""

    def __init__(self) -> None:
        self.lookups: list[bool] = []
        self.checks: list[bool] = []

    def now(self) -> float:
        return 0.0

    def answered(self, grant: str, outcome: str, started: float) -> None:
        pass

    def password_checked(self, accepted: bool, started: float) -> None:
        self.checks.append(accepted)

    def cache_lookup(self, hit: bool) -> None:
        self.lookups.append(hit)

    def throttled(self, by: str) -> None:
        pass


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    """One users.json account at bcrypt cost 4: every name's padding then costs 4."""
    return policy_in(tmp_path, {"someone": ("pw", {})})


def door(
    policy: Policy,
    *authenticators: Any,
    workers: Any = None,
    throttle: LoginThrottle | None = None,
    in_flight: int = 0,
    metrics: Any = None,
    on_success: Any = (),
) -> Logins:
    extra: dict[str, Any] = {"on_success": on_success}
    if metrics is not None:
        extra["metrics"] = metrics
    return Logins(
        current=lambda: policy,
        authenticators=authenticators,
        passwords=PasswordChecker(workers or InlineRunner()),
        clock=lambda: NOW,
        throttle=throttle or LoginThrottle(per_account=0, per_address=0, window=1),
        in_flight=InFlight(in_flight),
        **extra,
    )


def test_the_first_authenticator_that_answers_a_name_decides(policy: Policy) -> None:
    first = Accounts("first", {"alice": b"a"})
    second = Accounts("second", {"alice": b"b", "bob": b"b"})
    logins = door(policy, first, second)
    assert settled(logins.login(UsernamePassword("alice", b"a"), HERE)).identity.source == "first"
    with pytest.raises(LoginRefused):
        settled(logins.login(UsernamePassword("alice", b"b"), HERE))
    assert settled(logins.login(UsernamePassword("bob", b"b"), HERE)).identity.source == "second"
    assert (first.asked, second.asked) == (["alice", "alice"], ["bob"])


def test_a_failure_is_counted_once_for_the_name_as_its_authenticator_spells_it(
    policy: Policy,
) -> None:
    """Two failures lock the name ``bob`` however it was typed; the throttled attempt asks
    no one, and an address ``bob`` logged in from is spared (it knows the password)."""
    accounts = Accounts("one", {"bob": b"right"})
    throttle = LoginThrottle(per_account=2, per_address=100, window=300)
    logins = door(policy, Accounts("other", {}), accounts, throttle=throttle)
    assert settled(logins.login(UsernamePassword("Bob", b"right"), ELSEWHERE))
    with pytest.raises(LoginRefused):
        settled(logins.login(UsernamePassword("BOB", b"wrong"), HERE))
    with pytest.raises(LoginRefused):
        settled(logins.login(UsernamePassword("bOb", b"wrong"), HERE))
    with pytest.raises(LoginThrottled) as refused:
        logins.login(UsernamePassword("bob", b"right"), "203.0.113.9")
    assert refused.value.by == "account"
    assert accounts.asked == ["bob"] * 3
    assert settled(logins.login(UsernamePassword("BOB", b"right"), ELSEWHERE))


def test_a_remembered_login_is_answered_at_once_and_counted_as_a_hit(policy: Policy) -> None:
    accounts = Accounts("one", {"bob": b"right"})
    accounts.remembered.add(("bob", b"right"))
    metrics = Recorded()
    workers = CountingWorkers()
    logins = door(policy, accounts, workers=workers, metrics=metrics)
    login = logins.login(UsernamePassword("Bob", b"right"), HERE)
    assert isinstance(login, Login) and login.identity.account == "bob"
    assert (accounts.asked, workers.costs, metrics.lookups, metrics.checks) == ([], [], [True], [])
    settled(logins.login(UsernamePassword("bob", b"right!"), HERE).addErrback(lambda _: None))
    assert (metrics.lookups, metrics.checks) == ([True, False], [False])


def test_a_client_holds_its_share_of_checks_until_they_end(policy: Policy) -> None:
    accounts = Accounts("one", {"bob": b"right"})
    accounts.held = []
    logins = door(policy, accounts, in_flight=1)
    waiting = logins.login(UsernamePassword("bob", b"right"), HERE)
    assert isinstance(waiting, Deferred)
    with pytest.raises(ShareExceeded):
        logins.login(UsernamePassword("bob", b"right"), HERE)
    other = logins.login(UsernamePassword("bob", b"right"), ELSEWHERE)
    held, accounts.held = accounts.held, None
    for check in held:
        check.callback(None)
    assert settled(waiting).identity.account == settled(other).identity.account == "bob"
    assert isinstance(settled(logins.login(UsernamePassword("bob", b"right"), HERE)), Login)


@pytest.mark.parametrize(
    ("costs_a_bcrypt", "password", "asked", "padded"),
    [
        (False, b"wrong", True, 1),  # a directory's refusal: the door pays one
        (True, b"wrong", True, 0),  # a password file's: its own check paid
        (False, b"", False, 1),  # empty: an unauthenticated bind must not "succeed"
        (True, b"", False, 1),
        (True, b"x" * 73, False, 1),  # longer than bcrypt reads
        (False, b"x" * 73, True, 1),  # a directory reads it
    ],
)
def test_every_refused_password_costs_one_bcrypt(
    policy: Policy, costs_a_bcrypt: bool, password: bytes, asked: bool, padded: int
) -> None:
    accounts = Accounts("one", {"bob": b"right"}, costs_a_bcrypt=costs_a_bcrypt)
    workers = CountingWorkers()
    logins = door(policy, accounts, workers=workers)
    with pytest.raises(LoginRefused, match="invalid user name or password"):
        settled(logins.login(UsernamePassword("bob", password), HERE))
    assert accounts.asked == (["bob"] if asked else [])
    assert workers.costs == [4] * padded


def test_a_name_no_authenticator_answers_is_refused_after_one_bcrypt(policy: Policy) -> None:
    workers = CountingWorkers()
    throttle = LoginThrottle(per_account=1, per_address=100, window=300)
    logins = door(policy, Accounts("one", {}), workers=workers, throttle=throttle)
    with pytest.raises(LoginRefused):
        settled(logins.login(UsernamePassword("nobody", b"pw"), HERE))
    assert workers.costs == [policy.dummy_cost("nobody")]
    with pytest.raises(LoginThrottled):
        logins.login(UsernamePassword("nobody", b"pw"), HERE)


def test_an_unfit_name_costs_one_bcrypt_charges_the_address_and_asks_no_one(
    policy: Policy,
) -> None:
    accounts = Accounts("one", {"bob": b"right"}, unfit="\N{FULLWIDTH LATIN SMALL LETTER B}")
    workers = CountingWorkers()
    throttle = LoginThrottle(per_account=1, per_address=1, window=300)
    logins = door(policy, accounts, workers=workers, throttle=throttle)
    with pytest.raises(LoginRefused):
        settled(logins.login(UsernamePassword("\N{FULLWIDTH LATIN SMALL LETTER B}ob", b"x"), HERE))
    assert (accounts.asked, len(workers.costs), len(throttle.accounts)) == ([], 1, 0)
    with pytest.raises(LoginThrottled) as refused:
        logins.login(UsernamePassword("bob", b"right"), HERE)
    assert refused.value.by == "address"


def test_credentials_no_authenticator_takes_are_refused_and_count_for_the_address(
    policy: Policy,
) -> None:
    throttle = LoginThrottle(per_account=5, per_address=1, window=300)
    logins = door(policy, Accounts("one", {"bob": b"right"}), throttle=throttle)
    assert not logins.accepts(RefreshToken)
    with pytest.raises(LoginRefused):
        logins.login(RefreshToken("a.b.c"), HERE)
    with pytest.raises(LoginThrottled):
        logins.login(UsernamePassword("bob", b"right"), HERE)


def test_not_mine_hands_the_credentials_to_the_next_authenticator_that_answers(
    policy: Policy,
) -> None:
    """The passing one decides its own names; the others go on to the next that answers them
    (as it spells them), then to nobody, refused after one bcrypt."""
    passing = Passing({"alice": b"a"})
    skipped = Accounts("skipped", {})
    after = Accounts("after", {"bob": b"b"})
    workers = CountingWorkers()
    metrics = Recorded()
    logins = door(policy, passing, skipped, after, workers=workers, metrics=metrics)
    assert settled(logins.login(UsernamePassword("alice", b"a"), HERE)).identity.source == (
        "passing"
    )
    bob = settled(logins.login(UsernamePassword("BOB", b"b"), HERE))
    assert (bob.identity.source, bob.identity.account) == ("after", "bob")
    with pytest.raises(LoginRefused):
        settled(logins.login(UsernamePassword("bob", b"wrong"), HERE))
    with pytest.raises(LoginRefused):
        settled(logins.login(UsernamePassword("carol", b"c"), HERE))
    assert passing.asked == ["alice", "BOB", "bob", "carol"]
    assert after.asked == ["bob", "bob"]
    assert workers.costs == [4, 4], "one bcrypt for each refusal, whoever refused"
    assert metrics.checks == [True, True, False]


def test_not_mine_asks_the_next_authenticators_memory_first(policy: Policy) -> None:
    passing = Passing({})
    after = Accounts("after", {"bob": b"b"})
    after.remembered.add(("bob", b"b"))
    logins = door(policy, passing, after)
    assert settled(logins.login(UsernamePassword("bob", b"b"), HERE)).identity.source == "after"
    assert (passing.asked, after.asked) == (["bob"], [])


def test_not_mine_then_an_unfit_name_is_refused_after_one_bcrypt(policy: Policy) -> None:
    passing = Passing({})
    after = Accounts("after", {"bob": b"b"}, unfit="!")
    workers = CountingWorkers()
    logins = door(policy, passing, after, workers=workers)
    with pytest.raises(LoginRefused):
        settled(logins.login(UsernamePassword("bob!", b"b"), HERE))
    assert (after.asked, workers.costs) == ([], [4])


class Refusing(Accounts):
    """Refuses by raising, with its own reason (as access tokens do): at once for a name it
    remembers refusing, else once asked."""

    def __init__(self) -> None:
        super().__init__("refusing", {"carol": b"c"})
        self.known_bad: set[str] = set()

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        if credentials.account in self.known_bad:
            raise LoginRefused("remembered: no", credentials.account)
        return None

    async def authenticate(self, credentials: object, gate: EntryGate) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        self.known_bad.add(credentials.account)
        raise LoginRefused("its own reason", credentials.account)


def test_a_refusal_an_authenticator_raises_is_a_failure_with_no_bcrypt(policy: Policy) -> None:
    workers = CountingWorkers()
    throttle = LoginThrottle(per_account=2, per_address=100, window=300)
    logins = door(policy, Refusing(), workers=workers, throttle=throttle)
    with pytest.raises(LoginRefused, match="its own reason"):
        settled(logins.login(UsernamePassword("carol", b"c"), HERE))
    with pytest.raises(LoginRefused, match="remembered"):
        logins.login(UsernamePassword("carol", b"c"), HERE)
    with pytest.raises(LoginThrottled):
        logins.login(UsernamePassword("carol", b"c"), HERE)
    assert workers.costs == [], "its form told it was no password: nothing to pad"


def test_every_successful_login_is_told_to_the_hooks(policy: Policy) -> None:
    told: list[tuple[str, str, float]] = []

    def hook(login: Login, client: str, now: float) -> None:
        told.append((login.identity.account, client, now))

    def broken(login: Login, client: str, now: float) -> None:
        raise RuntimeError("a hook that fails")

    accounts = Accounts("one", {"bob": b"right"})
    logins = door(policy, accounts, on_success=(broken, hook))
    with capturedLogs() as events:
        assert settled(logins.login(UsernamePassword("bob", b"right"), HERE))
    accounts.remembered.add(("bob", b"right"))
    assert isinstance(logins.login(UsernamePassword("bob", b"right"), ELSEWHERE), Login)
    with pytest.raises(LoginRefused):
        settled(logins.login(UsernamePassword("bob", b"wrong"), HERE))
    assert told == [("bob", HERE, NOW), ("bob", ELSEWHERE, NOW)]
    assert [e for e in events if e.get("log_failure") is not None], "the failing hook is logged"
