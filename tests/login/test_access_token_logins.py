"""Access tokens as a way in (#26), through the real door (:func:`logins_for`) and a real store:
SQLite in the test's temp dir, real queries (run inline, or on a real thread pool), real bcrypt
counted, a fake clock for the lookup cache only."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from policies import NOW, policy_in
from realms import CountingWorkers
from support import settled, write_key_pair
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import capturedLogs

from tokend.access_tokens.cap import parse_cap
from tokend.access_tokens.record import AccessToken, rfc3339
from tokend.access_tokens.secrets import new_secret
from tokend.login.access_tokens import CACHE_TTL, REASONS, AccessTokenAccounts
from tokend.login.assembly import logins_for
from tokend.login.credentials import RefreshToken, UsernamePassword
from tokend.login.identity import (
    ACCESS_TOKEN_SOURCE,
    BackendUnavailable,
    Identity,
    Login,
    LoginRefused,
    LoginThrottled,
)
from tokend.login.in_flight import InFlight
from tokend.login.logins import Logins
from tokend.login.passwords import PasswordChecker
from tokend.login.refresh_tokens import RefreshTokens
from tokend.login.throttle import LoginThrottle
from tokend.metrics.instruments import TOKEN_LOGIN_RESULTS
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import DIRECTORY_GROUPS, OWN_ENTRY
from tokend.signing.keys import load_signing_key
from tokend.store.database import DatabaseUnavailable, connect, locate
from tokend.store.migrating import upgrade
from tokend.store.queries import AccessTokens, secret_hash
from tokend.store.runner import Store
from tokend.threads import InlineRunner, ThreadPoolService

HERE = "192.0.2.10"
ALICE = {"team/*": ["pull", "push"], "alice/*": ["pull", "push", "delete"]}
CAP = {"team/*": ("pull", "push")}
DAY = 86_400


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Counted:
    """The real store, its calls counted (what reached the database)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[str] = []

    def find_by_hash(self, hashed: str) -> Deferred[AccessToken | None]:
        self.calls.append("find_by_hash")
        return self.store.find_by_hash(hashed)

    def list(self, owner: str | None = None) -> Deferred[list[AccessToken]]:
        self.calls.append("list")
        return self.store.list(owner)

    def touch(self, token_id: str, now: int, address: str | None) -> Deferred[bool]:
        self.calls.append("touch")
        return self.store.touch(token_id, now, address)


class Held:
    """The store's pool with every answer held until :meth:`release` (the database is real
    and read when asked): what arrives while a query is under way."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[Any], Deferred[Any]]] = []

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.waiting.append((maybeDeferred(function, *args), answer))
        return answer

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for done, answer in waiting:
            done.chainDeferred(answer)


class Events:
    def __init__(self) -> None:
        self.results: list[str] = []

    def token_login(self, result: str) -> None:
        self.results.append(result)


class Directory:
    """The directory's lookup as DirectoryAccounts answers it: the accounts in ``accounts``
    with their groups, None for the others; ``down`` raises as an unreachable directory."""

    def __init__(self, accounts: dict[str, frozenset[str]]) -> None:
        self.accounts = accounts
        self.asked: list[str] = []

    async def lookup(self, account: str) -> Identity | None:
        self.asked.append(account)
        groups = self.accounts.get(account)
        if groups is None:
            return None
        return Identity(account, "ldap", groups, rights_from=DIRECTORY_GROUPS)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[AccessTokens]:
    location = locate(str(tmp_path / "tokens.db"))
    upgrade(location)
    engine = connect(location)
    yield AccessTokens(engine, location)
    engine.dispose()


class Door:
    """The door as the daemon assembles it, with access tokens asked first."""

    def __init__(
        self,
        tmp_path: Path,
        database: AccessTokens,
        *,
        users: dict[str, dict[str, Any]] | None = None,
        directory: Directory | None = None,
        per_account: int = 100,
        lookup: Any = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self.config = tmp_path / "config"
        self.clock = Clock()
        self.database = database
        self.store = Counted(Store(database, InlineRunner()))
        self.events = Events()
        self.workers = CountingWorkers()
        self.holder = PolicyHolder(self.policy(users), NOW)
        self.accounts = AccessTokenAccounts(
            lookup or self.store,
            lambda: self.holder.current,
            self.clock,
            directory=directory,
            events=self.events,
        )
        key = load_signing_key(*write_key_pair(tmp_path))
        self.refresh_tokens = RefreshTokens(key, "tokend-test")
        self.logins: Logins = logins_for(
            policy=self.holder,
            passwords=PasswordChecker(self.workers),
            clock=self.clock,
            throttle=LoginThrottle(per_account=per_account, per_address=100, window=300),
            in_flight=in_flight,
            refresh_tokens=self.refresh_tokens,
            access_tokens=self.accounts,
        )

    def policy(self, users: dict[str, dict[str, Any]] | None) -> Any:
        written = users if users is not None else {"alice": ALICE, "bob": ALICE}
        return policy_in(self.config, {name: (name, rules) for name, rules in written.items()})

    def reload(self, users: dict[str, dict[str, Any]]) -> None:
        self.holder.replace(self.policy(users), self.clock())

    def edit_user(self, account: str, **entry: Any) -> None:
        users = self.config / "users.json"
        written = json.loads(users.read_text())
        written[account].update(entry)
        users.write_text(json.dumps(written))
        self.holder.replace(load_policy(self.config).policy, self.clock())

    def token(
        self,
        owner: str = "alice",
        name: str = "ci",
        cap: dict[str, tuple[str, ...]] | None = None,
        lifetime: int = 30 * DAY,
    ) -> tuple[AccessToken, str]:
        secret = new_secret()
        made = self.database.create(
            owner,
            name,
            secret_hash(secret),
            CAP if cap is None else cap,
            int(self.clock()),
            int(self.clock()) + lifetime,
        )
        return made, secret

    def attempt(self, account: str, password: str | bytes) -> Login | Deferred[Login]:
        given = password.encode() if isinstance(password, str) else password
        return self.logins.login(UsernamePassword(account, given), HERE)

    def login(self, account: str, password: str | bytes) -> Login:
        login = settled(self.attempt(account, password))
        assert isinstance(login, Login)
        return login

    def refused(self, account: str, password: str | bytes) -> LoginRefused:
        with pytest.raises(LoginRefused) as refused:
            settled(self.attempt(account, password))
        return refused.value

    def later(self, seconds: float) -> None:
        self.clock.now += seconds


def test_a_token_logs_its_owner_in_with_its_cap_and_no_bcrypt(
    tmp_path: Path, database: AccessTokens
) -> None:
    door = Door(tmp_path, database)
    made, secret = door.token()
    first = door.attempt("alice", secret)
    assert isinstance(first, Deferred), "the first use asks the database"
    login = settled(first)
    identity = login.identity
    assert (identity.account, identity.source, identity.rights_from) == (
        "alice",
        ACCESS_TOKEN_SOURCE,
        OWN_ENTRY,
    )
    assert identity.binding == made.id.encode()
    assert identity.access_token is not None
    assert (identity.access_token.id, identity.access_token.name) == (made.id, "ci")
    assert identity.access_token.cap == parse_cap(["team/*:pull,push"])
    assert login.policy is door.holder.current
    again = door.attempt("alice", secret)
    assert isinstance(again, Login), "a cached token login is answered at once"
    assert door.store.calls.count("find_by_hash") == 1
    assert door.workers.calls == 0, "no bcrypt for a token login"
    assert door.events.results == ["accepted", "accepted"]


def test_another_owners_token_is_refused_as_an_unknown_one_and_logged(
    tmp_path: Path, database: AccessTokens
) -> None:
    door = Door(tmp_path, database)
    made, secret = door.token(owner="bob", name="bobs")
    with capturedLogs() as events:
        other = door.refused("alice", secret)
    unknown = door.refused("alice", new_secret())
    assert other.message == unknown.message
    logged = [e for e in events if e.get("token_id") == made.id]
    assert logged and logged[0]["token_name"] == "bobs" and logged[0]["owner"] == "bob"
    assert all(secret not in repr(e) for e in events), "the secret is never logged"
    assert door.events.results == ["wrong_owner", "unknown"]
    assert door.workers.calls == 0


def test_malformed_and_oversized_secrets_are_refused_without_a_lookup_or_bcrypt(
    tmp_path: Path, database: AccessTokens
) -> None:
    door = Door(tmp_path, database)
    _, secret = door.token()
    for given in (
        secret[:-1] + ("A" if secret[-1] != "A" else "B"),  # the checksum fails
        "tkd_at_" + "x" * 1_000_000,
        b"tkd_at_\xff\xfe",
    ):
        refused = door.refused("alice", given)
        assert refused.account == "alice"
    assert door.store.calls == [], "no lookup"
    assert door.workers.calls == 0, "no bcrypt"
    assert door.events.results == ["malformed"] * 3


def test_a_wrong_token_counts_as_a_failed_login_of_its_name(
    tmp_path: Path, database: AccessTokens
) -> None:
    door = Door(tmp_path, database, per_account=2)
    _, secret = door.token()
    door.refused("alice", new_secret())
    door.refused("alice", "tkd_at_not-even-a-token")
    with pytest.raises(LoginThrottled):
        door.attempt("alice", secret)
    with pytest.raises(LoginThrottled):
        door.attempt("alice", "alice")  # the password too: the name is throttled


def test_expired_revoked_and_tokens_valid_after_end_a_token(
    tmp_path: Path, database: AccessTokens
) -> None:
    door = Door(tmp_path, database)
    _, short_secret = door.token(name="short", lifetime=120)
    kept, kept_secret = door.token(name="kept")
    door.login("alice", short_secret)
    door.login("alice", kept_secret)
    door.later(120)
    assert "expired" in door.refused("alice", short_secret).message
    door.login("alice", kept_secret)
    database.revoke(kept.id, int(door.clock()))
    assert isinstance(door.attempt("alice", kept_secret), Login), "cached: within CACHE_TTL"
    door.later(CACHE_TTL)
    assert "revoked" in door.refused("alice", kept_secret).message
    _, fresh = door.token(name="fresh")
    door.login("alice", fresh)
    door.edit_user("alice", tokens_valid_after=rfc3339(door.clock() + 1))
    assert "owner" in door.refused("alice", fresh).message
    assert door.events.results == [
        "accepted",
        "accepted",
        "expired",
        "accepted",
        "accepted",
        "revoked",
        "accepted",
        "tokens_valid_after",
    ]


def test_a_robot_logs_in_with_its_tokens_only(tmp_path: Path, database: AccessTokens) -> None:
    door = Door(tmp_path, database)
    door.edit_user("bob", pass_hash=None)
    _, secret = door.token(owner="bob")
    login = door.login("bob", secret)
    assert login.identity.account == "bob" and login.identity.access_token is not None
    assert door.workers.calls == 0
    assert door.refused("bob", "bob").message == "invalid user name or password"
    assert door.workers.calls == 1, "the usual dummy bcrypt"


def test_a_revocation_made_here_is_seen_at_once(tmp_path: Path, database: AccessTokens) -> None:
    door = Door(tmp_path, database)
    made, secret = door.token()
    door.login("alice", secret)
    database.revoke(made.id, int(door.clock()))
    door.accounts.forget(made.id)
    assert "revoked" in door.refused("alice", secret).message


def test_the_token_ends_with_its_owner(tmp_path: Path, database: AccessTokens) -> None:
    door = Door(tmp_path, database)
    made, secret = door.token()
    door.login("alice", secret)
    door.reload({"bob": ALICE})
    with capturedLogs() as events:
        refused = door.refused("alice", secret)
    assert "owner" in refused.message
    assert [e["reason"] for e in events if e.get("token_id") == made.id] == ["owner_gone"]


def test_a_directory_owner_is_looked_up_and_gets_its_groups(
    tmp_path: Path, database: AccessTokens
) -> None:
    groups = frozenset({"cn=ci,dc=example"})
    directory = Directory({"mozart": groups})
    door = Door(tmp_path, database, directory=directory)
    _, secret = door.token(owner="mozart")
    login = door.login("mozart", secret)
    assert login.identity.rights_from == DIRECTORY_GROUPS
    assert login.identity.directory_groups == groups
    assert isinstance(door.attempt("mozart", secret), Login), "owner and token cached"
    assert directory.asked == ["mozart"]
    del directory.accounts["mozart"]
    door.later(CACHE_TTL)
    assert "owner" in door.refused("mozart", secret).message


def test_without_a_directory_a_name_users_json_does_not_hold_is_gone(
    tmp_path: Path, database: AccessTokens
) -> None:
    door = Door(tmp_path, database)
    _, secret = door.token(owner="mozart")
    assert "owner" in door.refused("mozart", secret).message


class Outage:
    """The real store, or (``down``) a real store on a database nobody serves."""

    def __init__(self, store: Store) -> None:
        self.store = store
        nowhere = locate("postgresql://tokend@/tokend?host=/nonexistent")
        self.nowhere = Store(AccessTokens(connect(nowhere), nowhere), InlineRunner())
        self.down = True

    def _now(self) -> Store:
        return self.nowhere if self.down else self.store

    def find_by_hash(self, hashed: str) -> Deferred[AccessToken | None]:
        return self._now().find_by_hash(hashed)

    def list(self, owner: str | None = None) -> Deferred[list[AccessToken]]:
        return self._now().list(owner)

    def touch(self, token_id: str, now: int, address: str | None) -> Deferred[bool]:
        return self._now().touch(token_id, now, address)


def test_a_database_that_does_not_answer_is_a_503_logged_once_and_recovers(
    tmp_path: Path, database: AccessTokens
) -> None:
    outage = Outage(Store(database, InlineRunner()))
    door = Door(tmp_path, database, lookup=outage, per_account=2)
    _, secret = door.token()
    with capturedLogs() as events:
        for _ in range(3):
            with pytest.raises(BackendUnavailable) as raised:
                settled(door.attempt("alice", secret))
            assert raised.value.retry_after > 0
            door.later(CACHE_TTL)
        outage.down = False
        door.login("alice", secret)
        door.later(CACHE_TTL)
        door.login("alice", secret)
    said = [e["log_format"] for e in events if e.get("log_namespace", "").endswith("Accounts")]
    assert len([s for s in said if "unavailable" in s]) == 1, said
    assert len([s for s in said if "again" in s]) == 1, said
    assert door.workers.calls == 0
    assert DatabaseUnavailable  # the store's own error never reaches the door


def test_a_refresh_token_is_bound_to_the_access_token(
    tmp_path: Path, database: AccessTokens
) -> None:
    door = Door(tmp_path, database)
    made, secret = door.token()
    login = door.login("alice", secret)
    refresh = door.logins.refresh_token_for(login, door.clock())
    assert refresh is not None
    refreshed = settled(door.logins.login(RefreshToken(refresh), HERE))
    assert refreshed.identity.access_token == login.identity.access_token, "keeps the cap"
    assert door.store.calls.count("list") == 1
    again = door.logins.login(RefreshToken(refresh), HERE)
    assert isinstance(again, Login), "the owner's tokens are remembered for CACHE_TTL"
    database.revoke(made.id, int(door.clock()))
    door.later(CACHE_TTL)
    with pytest.raises(LoginRefused) as refused:
        settled(door.logins.login(RefreshToken(refresh), HERE))
    assert "revoked" in refused.value.message


def test_a_refresh_token_of_a_password_login_is_not_a_tokens(
    tmp_path: Path, database: AccessTokens
) -> None:
    door = Door(tmp_path, database)
    login = door.login("alice", "alice")
    assert login.identity.access_token is None
    refresh = door.logins.refresh_token_for(login, door.clock())
    assert refresh is not None
    refreshed = door.logins.login(RefreshToken(refresh), HERE)
    assert isinstance(refreshed, Login), "users.json vouches at once"
    assert refreshed.identity.access_token is None


def test_last_use_is_written_at_most_once_a_minute(tmp_path: Path, database: AccessTokens) -> None:
    door = Door(tmp_path, database)
    made, secret = door.token()
    for _ in range(5):
        door.login("alice", secret)
        door.later(10)
    assert door.store.calls.count("touch") == 1
    stored = database.get(made.id)
    assert stored is not None
    assert (stored.last_used_at, stored.last_used_from) == (int(NOW), HERE)
    door.later(20)
    door.login("alice", secret)
    assert door.store.calls.count("touch") == 2
    stored = database.get(made.id)
    assert stored is not None and stored.last_used_at == int(NOW) + 70
    door.login("alice", "alice")
    assert door.store.calls.count("touch") == 2, "a password login touches no token"


def test_a_touch_that_fails_is_logged_never_raised(tmp_path: Path, database: AccessTokens) -> None:
    outage = Outage(Store(database, InlineRunner()))
    outage.down = False
    door = Door(tmp_path, database, lookup=outage)
    made, secret = door.token()
    door.login("alice", secret)
    door.later(59.5)
    door.login("alice", secret)
    door.later(0.6)
    outage.down = True
    with capturedLogs() as events:
        login = door.attempt("alice", secret)
    assert isinstance(login, Login), "cached: the token was looked up a moment ago"
    assert [e for e in events if e.get("token_id") == made.id], "the failed touch is logged"


@pytest_twisted.ensureDeferred
async def test_every_lookup_runs_on_the_stores_threads(
    tmp_path: Path, database: AccessTokens
) -> None:
    pool = ThreadPoolService(reactor, 2, "tokend-store")
    pool.startService()
    try:
        door = Door(tmp_path, database, lookup=Store(database, pool))
        _, secret = door.token()
        waiting = door.attempt("alice", secret)
        assert isinstance(waiting, Deferred)
        login = await waiting
        assert login.identity.access_token is not None
    finally:
        pool.stopService()


def test_every_result_the_door_reports_is_a_metrics_label() -> None:
    """The metrics refuse a label they do not know: a reason the door reports must be one."""
    assert {"accepted", *REASONS} == set(TOKEN_LOGIN_RESULTS)


def test_a_burst_of_logins_with_one_token_shares_one_lookup_and_takes_no_places(
    tmp_path: Path, database: AccessTokens
) -> None:
    """A CI's parallel pulls after a quiet spell: eight logins from one address while the
    lookup runs. One query answers them all, and none is refused for the address's share of
    the checks in flight (two here), which a lookup on the store's own pool does not take."""
    held = Held()
    door = Door(tmp_path, database, lookup=Counted(Store(database, held)), in_flight=InFlight(2))
    _, secret = door.token()
    burst = [door.attempt("alice", secret) for _ in range(8)]
    assert len(held.waiting) == 1
    held.release()
    logins = [settled(each) for each in burst]
    assert {login.identity.account for login in logins} == {"alice"}
    assert door.workers.calls == 0


def test_a_token_in_steady_use_is_looked_up_ahead_and_never_waits(
    tmp_path: Path, database: AccessTokens
) -> None:
    """Past half the cache's time a login is still answered at once, and asks the database
    again in the background (once), so the next second's logins find a fresh answer; a
    revocation is still seen within the cache's time."""
    door = Door(tmp_path, database)
    made, secret = door.token()
    door.login("alice", secret)
    asked = door.store.calls.count("find_by_hash")
    for _ in range(6):
        door.later(CACHE_TTL / 3)
        assert isinstance(door.attempt("alice", secret), Login)
    assert door.store.calls.count("find_by_hash") - asked >= 2
    database.revoke(made.id, int(door.clock()))
    door.later(CACHE_TTL)
    assert "revoked" in door.refused("alice", secret).message


def test_a_lookup_asked_before_a_revocation_made_here_is_not_remembered(
    tmp_path: Path, database: AccessTokens
) -> None:
    held = Held()
    door = Door(tmp_path, database, lookup=Counted(Store(database, held)))
    made, secret = door.token()
    first = door.attempt("alice", secret)
    database.revoke(made.id, int(door.clock()))
    door.accounts.forget(made.id)
    held.release()  # the answer read before the revocation arrives after it
    settled(first)
    later = door.attempt("alice", secret)
    assert not isinstance(later, Login)  # asked again, not answered from the stale lookup
    held.release()
    with pytest.raises(LoginRefused):
        settled(later)
