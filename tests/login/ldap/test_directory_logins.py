"""Directory accounts through the realm: the authenticator seam, the policy's ldap_groups, the
throttle and the credential cache, against a real slapd (tests/ldap_server.py).

The token endpoint runs in memory (StubTreq) on the real reactor, since the directory client
talks to a real server; every token is verified with the certificate and its claims compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_twisted
from ldap_server import BASE, PASSWORD, SERVICE_DN, SUFFIX, Slapd, dn, group_dn, start_slapd
from realms import CountingWorkers, Realm, Response, basic_auth
from stand_ins import DirectoryStandIn
from support import hash_password, settled, verify_jwt
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import LogLevel, globalLogPublisher

from tokend.daemon.control import Unlocking, single_process
from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import (
    DIRECTORY,
    Identity,
    Login,
    LoginRefused,
    LoginThrottled,
    entry_name,
)
from tokend.login.in_flight import InFlight
from tokend.login.ldap.accounts import EntryNames
from tokend.login.ldap.client import Directory
from tokend.login.ldap.config import DirectoryConfig
from tokend.login.logins import Logins
from tokend.login.passwords import PasswordChecker
from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.keys import SharedKeys
from tokend.login.shared_limits.news import Seen
from tokend.login.throttle import LoginThrottle
from tokend.policy.documents import users_from_document
from tokend.policy.files import load_policy
from tokend.policy.model import Policy
from tokend.threads import BoundedThreadQueue, InlineRunner, ThreadPoolService

SERVICE = "registry.test"
GROUPS = {
    "composers": {
        "ldap_groups": [group_dn("composers").upper().replace(",", ", ")],
        "repositories": {"music/*": ["pull"], "composers/${account}/*": ["pull", "push"]},
    },
    "salzburg": {
        "ldap_groups": [group_dn("salzburg")],
        "repositories": {"salzburg/*": ["pull", "push"]},
    },
    "everyone": {"ldap_groups": ["*"], "repositories": {"lobby/*": ["pull"]}},
    "staff": {"repositories": {"music/*": ["pull", "push"]}},
}


def directory_realm(tmp_path: Path, slapd: Slapd, **config: Any) -> Realm:
    """A realm with directory accounts beside users.json, on the real reactor (the directory
    client talks to a real server), bcrypt on a real pool; ``config`` is DirectoryConfig's, and
    ``cache_ttl`` and ``throttle``. ``close()`` closes the client and stops the pool."""
    config_dir = tmp_path / "config"
    config_dir.mkdir(parents=True)
    users = {
        "alice": {"pass_hash": hash_password("alice-pw"), "groups": ["staff"]},
        # bach is in the directory too: users.json decides for him.
        "bach": {"pass_hash": hash_password("file-pw"), "repositories": {"bach/*": ["pull"]}},
    }
    (config_dir / "users.json").write_text(json.dumps(users))
    (config_dir / "groups.json").write_text(json.dumps(GROUPS))
    (config_dir / "repositories.json").write_text(json.dumps({"repositories": ["public/*"]}))
    pool = ThreadPoolService(reactor, 2, "test-bcrypt")
    pool.startService()
    cache = CredentialCache(ttl=config.pop("cache_ttl", 60))
    throttle = config.pop("throttle", None) or LoginThrottle(
        per_account=3, per_address=100, window=300
    )
    settings: dict[str, Any] = {
        "urls": (slapd.url,),
        "base": BASE,
        "bind_dn": SERVICE_DN,
        "bind_password": slapd.bind_password,
        "timeout": 2.0,
    }
    settings.update(config)
    client = Directory(DirectoryConfig(**settings), reactor)
    realm = Realm(
        tmp_path,
        config=config_dir,
        clock=reactor,
        workers=BoundedThreadQueue(pool, limit=2, queue=16),
        throttle=throttle,
        cache=cache,
        refresh_ttl=3600,
        directory=client,
    )
    realm.closing += [client.close, pool.stopService]
    return realm


async def get(
    realm: Realm, user: str | None, password: str = PASSWORD, scope: str = "music/piano:pull,push"
) -> Response:
    """A GET that asks for ``scope`` and a refresh token."""
    query = urlencode({"service": SERVICE, "scope": f"repository:{scope}", "offline_token": "true"})
    url = f"http://tokend/v2/token?{query}"
    return await realm.answer(realm.http.get(url, headers=basic_auth(user, password)))


async def refresh(realm: Realm, token: str, scope: str) -> Response:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": token,
        "client_id": "test",
        "service": SERVICE,
        "scope": f"repository:{scope}",
    }
    return await realm.answer(realm.start_post(form))


def granted(realm: Realm, body: Any) -> tuple[str, list[dict[str, Any]]]:
    """The subject and access of the token in an answer."""
    _, claims = verify_jwt(
        body["token"] if "token" in body else body["access_token"], realm.certificate
    )
    return claims["sub"], claims["access"]


@pytest.fixture
def realm(tmp_path: Path, slapd: Slapd) -> Any:
    made = directory_realm(tmp_path, slapd)
    yield made
    made.close()


def actions(access: list[dict[str, Any]], name: str) -> list[str]:
    return next((entry["actions"] for entry in access if entry["name"] == name), [])


@pytest_twisted.ensureDeferred
async def test_a_directory_account_gets_its_groups_rights(realm: Realm) -> None:
    status, _, body = await get(realm, "mozart", scope="music/piano:pull,push")
    assert status == 200, body
    subject, access = granted(realm, body)
    assert subject == "mozart"
    assert actions(access, "music/piano") == ["pull"]  # composers: pull only
    status, _, body = await get(realm, "mozart", scope="salzburg/opera:pull,push")
    assert actions(granted(realm, body)[1], "salzburg/opera") == ["pull", "push"]
    status, _, body = await get(realm, "mozart", scope="lobby/news:pull,push")
    assert actions(granted(realm, body)[1], "lobby/news") == ["pull"]  # "*": every account


@pytest_twisted.ensureDeferred
async def test_account_placeholder_is_bound_to_the_directory_name(realm: Realm) -> None:
    _, _, body = await get(realm, "mozart", scope="composers/mozart/requiem:pull,push")
    assert actions(granted(realm, body)[1], "composers/mozart/requiem") == ["pull", "push"]
    _, _, body = await get(realm, "mozart", scope="composers/bach/mass:pull,push")
    assert actions(granted(realm, body)[1], "composers/bach/mass") == []


@pytest_twisted.ensureDeferred
async def test_wrong_and_empty_passwords_are_refused(realm: Realm, slapd: Slapd) -> None:
    status, headers, body = await get(realm, "mozart", password="wrong")
    assert status == 401, body
    assert b"WWW-Authenticate" in headers
    binds_before = slapd.log_text().count('BIND dn="uid=mozart')
    status, _, body = await get(realm, "mozart", password="")
    assert status == 401, body
    # slapd here accepts an unauthenticated bind (allow bind_anon_dn): the realm never asked.
    assert slapd.log_text().count('BIND dn="uid=mozart') == binds_before


@pytest.mark.parametrize("name", ["*", "mozart)(uid=*", "*)(|(uid=*", "moz*", "mozart\\", "*\\2a"])
@pytest_twisted.ensureDeferred
async def test_filter_injection_matches_nobody(realm: Realm, name: str) -> None:
    status, _, body = await get(realm, name)
    assert status == 401, body
    status, _, body = await get(realm, "m\x00ozart")
    assert status == 400, body  # control characters never reach the directory


@pytest_twisted.ensureDeferred
async def test_accounts_outside_the_base_and_ambiguous_names_are_refused(realm: Realm) -> None:
    status, _, _ = await get(realm, "kant")
    assert status == 401
    status, _, _ = await get(realm, "twin")
    assert status == 401


@pytest_twisted.ensureDeferred
async def test_users_json_decides_for_its_names(realm: Realm) -> None:
    status, _, body = await get(realm, "bach", password=PASSWORD)  # his directory password
    assert status == 401, body
    status, _, body = await get(realm, "bach", password="file-pw", scope="bach/fugue:pull")
    assert status == 200, body
    assert actions(granted(realm, body)[1], "bach/fugue") == ["pull"]
    status, _, body = await get(realm, "alice", password="alice-pw", scope="music/x:pull,push")
    assert actions(granted(realm, body)[1], "music/x") == ["pull", "push"]


@pytest_twisted.ensureDeferred
async def test_failed_directory_logins_are_throttled(realm: Realm) -> None:
    for _ in range(3):
        status, _, _ = await get(realm, "mozart", password="wrong")
        assert status == 401
    status, headers, body = await get(realm, "mozart")
    assert status == 429, body
    assert b"Retry-After" in headers


@pytest_twisted.ensureDeferred
async def test_refresh_tokens_of_directory_accounts(realm: Realm, slapd: Slapd) -> None:
    haydn = dn("haydn")
    slapd.modify(
        f"dn: {haydn}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: haydn\ncn: Joseph Haydn\n"
        f"sn: Haydn\nuserPassword: {PASSWORD}\n"
    )
    try:
        status, _, body = await get(realm, "haydn", scope="lobby/a:pull")
        assert status == 200, body
        refresh_token = body["refresh_token"]
        status, _, body = await refresh(realm, refresh_token, "lobby/a:pull")
        assert status == 200, body
        assert granted(realm, body) == (
            "haydn",
            [{"type": "repository", "name": "lobby/a", "actions": ["pull"]}],
        )
    finally:
        slapd.modify(f"dn: {haydn}\nchangetype: delete\n")
    realm.cache.forget_users({"haydn"})  # the lookup is remembered for the cache's ttl
    status, _, body = await refresh(realm, refresh_token, "lobby/a:pull")
    assert status == 400, body
    assert body["error"] == "invalid_grant"


@pytest_twisted.ensureDeferred
async def test_logins_over_ldaps_and_starttls_with_the_test_ca(
    tmp_path: Path, slapd: Slapd
) -> None:
    for name, config in {
        "ldaps": {"urls": (slapd.ldaps_url,), "ca_cert": str(slapd.ca_cert_path)},
        "starttls": {"urls": (slapd.url,), "starttls": True, "ca_cert": str(slapd.ca_cert_path)},
    }.items():
        made = directory_realm(tmp_path / name, slapd, **config)
        try:
            status, _, body = await get(made, "mozart", scope="salzburg/x:push")
            assert status == 200, (name, body)
            assert actions(granted(made, body)[1], "salzburg/x") == ["push"]
        finally:
            made.close()


@pytest_twisted.ensureDeferred
async def test_directory_outage_is_a_503_and_recovers(tmp_path: Path) -> None:
    own = start_slapd(tmp_path / "slapd")
    made = directory_realm(tmp_path / "realm", own)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        status, _, _ = await get(made, "bach", password="file-pw", scope="bach/x:pull")
        assert status == 200
        status, _, body = await get(made, "mozart", scope="salzburg/x:pull")
        assert status == 200, body  # now in the credential cache
        own.stop()
        for _ in range(3):
            status, _, body = await get(made, "alice", password="alice-pw", scope="music/x:push")
            assert status == 200, body  # users.json accounts keep working
            status, headers, body = await get(made, "salzburg-less", password="pw")
            assert status == 503, body
            assert headers[b"Retry-After"] == [b"2"]
            assert body["errors"][0]["code"] == "UNAVAILABLE"
        status, _, body = await get(made, "mozart", scope="salzburg/x:pull")
        assert status == 200, body  # cached logins need no directory
        status, _, body = await get(made, None, scope="public/x:pull")
        assert status == 200 and actions(granted(made, body)[1], "public/x") == ["pull"]
        warnings = [
            e
            for e in events
            if e.get("log_level") == LogLevel.warn
            and "directory" in str(e.get("log_format", "")).lower()
        ]
        assert len(warnings) == 1, warnings
        own.start()
        status, _, body = await get(made, "bach", password=PASSWORD, scope="x:pull")
        assert status == 401  # users.json still decides for bach
        status, _, body = await get(made, "schubert-unknown", password=PASSWORD)
        assert status == 401, body  # the directory answers again: an unknown name
        status, _, body = await get(made, "mozart", password=PASSWORD, scope="music/x:pull")
        assert status == 200, body
    finally:
        globalLogPublisher.removeObserver(events.append)
        made.close()
        own.stop()


def test_policy_refuses_malformed_ldap_groups(tmp_path: Path) -> None:
    from tokend.policy.documents import groups_from_document
    from tokend.policy.model import PolicyError

    with pytest.raises(PolicyError, match="not a DN"):
        groups_from_document({"g": {"ldap_groups": ["musicians"]}}, "groups.json")
    with pytest.raises(PolicyError, match="stands alone"):
        groups_from_document({"g": {"ldap_groups": ["*", group_dn("composers")]}}, "groups.json")
    with pytest.raises(PolicyError, match="list of group DNs"):
        groups_from_document({"g": {"ldap_groups": group_dn("composers")}}, "groups.json")
    groups = groups_from_document(
        {"g": {"ldap_groups": [f"CN=Composers, OU=Groups, {SUFFIX.upper()}"]}}, "groups.json"
    )
    assert groups["g"].holds(frozenset({group_dn("composers")}))
    assert not groups["g"].holds(frozenset({group_dn("salzburg")}))


@pytest_twisted.ensureDeferred
async def test_a_name_in_another_case_is_one_account(realm: Realm) -> None:
    for spelling in ("Mozart", "mOzart", "moZart"):
        status, _, _ = await get(realm, spelling, password="wrong")
        assert status == 401
    status, _, body = await get(realm, "mozarT")
    assert status == 429, body  # three failures of three spellings: one account's budget


@pytest_twisted.ensureDeferred
async def test_a_name_in_another_case_gets_the_directory_spelling(realm: Realm) -> None:
    status, _, body = await get(realm, "MOZART", scope="composers/mozart/x:push")
    assert status == 200, body
    subject, access = granted(realm, body)
    assert subject == "mozart"  # one spelling: the same ${account} and cache entry
    assert actions(access, "composers/mozart/x") == ["push"]


@pytest_twisted.ensureDeferred
async def test_users_json_decides_for_its_names_in_any_case(realm: Realm) -> None:
    status, _, body = await get(realm, "BACH", password=PASSWORD)  # bach's directory password
    assert status == 401, body  # not the directory's bach: users.json holds bach


@pytest_twisted.ensureDeferred
async def test_a_refresh_token_ends_once_users_json_holds_the_name_in_any_case(
    realm: Realm,
) -> None:
    status, _, body = await get(realm, "mozart", scope="lobby/a:pull")
    assert status == 200, body
    refresh_token = body["refresh_token"]
    users = json.loads((realm.config / "users.json").read_text())
    users["Mozart"] = {"pass_hash": hash_password("file-pw")}
    (realm.config / "users.json").write_text(json.dumps(users))
    realm.holder.replace(load_policy(realm.config).policy, reactor.seconds())
    status, _, body = await refresh(realm, refresh_token, "lobby/a:pull")
    assert status == 400, body
    assert "account now in users.json" in body["error_description"]


LOOK_ALIKES = ("\uff4dozart", "\U0001d426ozart", "\u24dcozart", "\uff4d\U0001d428zart")
"""mozart with a fullwidth m, a mathematical bold m, a circled m, and a fullwidth m with a
mathematical bold o: slapd finds uid=mozart for each (test_directory.py)."""


def searches(slapd: Slapd) -> int:
    return slapd.log_text().count(" SRCH base=")


@pytest_twisted.ensureDeferred
async def test_look_alike_spellings_are_refused_without_traffic_and_counted(
    tmp_path: Path, slapd: Slapd
) -> None:
    throttle = LoginThrottle(per_account=3, per_address=len(LOOK_ALIKES), window=300)
    made = directory_realm(tmp_path, slapd, throttle=throttle)
    try:
        before = searches(slapd)
        for name in LOOK_ALIKES:
            status, _, body = await get(made, name, scope="composers/mozart/x:push")
            assert status == 401, (name, body)
        assert searches(slapd) == before, "the directory was never asked"
        status, _, body = await get(made, "mozart")
        assert status == 429, body  # each refusal was a failure of the address
        assert "address" in body["errors"][0]["message"]
    finally:
        made.close()


@pytest_twisted.ensureDeferred
async def test_look_alikes_get_no_guess_once_the_real_name_is_locked(
    realm: Realm, slapd: Slapd
) -> None:
    for _ in range(3):
        assert (await get(realm, "mozart", password="wrong"))[0] == 401
    assert (await get(realm, "mozart"))[0] == 429
    binds = slapd.log_text().count('BIND dn="uid=mozart')
    for name in LOOK_ALIKES:
        status, _, body = await get(realm, name, scope="composers/mozart/x:push")
        assert status == 401, (name, body)  # the right password, and no token
    assert slapd.log_text().count('BIND dn="uid=mozart') == binds


@pytest_twisted.ensureDeferred
async def test_a_look_alike_of_a_users_json_name_never_reaches_the_directory(
    realm: Realm, slapd: Slapd
) -> None:
    """users.json holds alice; the directory has an alice too (added here)."""
    alice = dn("alice")
    slapd.modify(
        f"dn: {alice}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: alice\ncn: Alice\n"
        f"sn: Alice\nuserPassword: {PASSWORD}\n"
    )
    try:
        before = searches(slapd)
        for name in ("\uff41lice", "\uff21LICE", "\U0001d41alice"):
            status, _, body = await get(realm, name, scope="lobby/x:pull")
            assert status == 401, (name, body)
        assert searches(slapd) == before
        status, _, body = await get(realm, "alice", scope="lobby/x:pull")
        assert status == 401, body  # users.json decides for alice: not her directory password
    finally:
        slapd.modify(f"dn: {alice}\nchangetype: delete\n")


@pytest_twisted.ensureDeferred
async def test_names_that_reach_one_entry_share_its_budget(tmp_path: Path, slapd: Slapd) -> None:
    """A filter taking the uid or the cn: two names, one entry, one throttle budget."""
    made = directory_realm(
        tmp_path, slapd, filter="(&(objectClass=person)(|(uid={account})(cn={account})))"
    )
    try:
        for _ in range(3):
            assert (await get(made, "mozart", password="wrong"))[0] == 401
        binds = slapd.log_text().count('BIND dn="uid=mozart')
        status, headers, body = await get(made, "Wolfgang Amadeus Mozart", scope="lobby/x:pull")
        assert status == 429, body  # the entry is locked, whichever name reaches it
        assert b"Retry-After" in headers
        assert slapd.log_text().count('BIND dn="uid=mozart') == binds, "no password tried"
    finally:
        made.close()
    made = directory_realm(
        tmp_path / "again", slapd, filter="(&(objectClass=person)(|(uid={account})(cn={account})))"
    )
    try:
        status, _, body = await get(made, "Wolfgang Amadeus Mozart", scope="lobby/x:pull")
        assert status == 200, body  # the cn reaches mozart, and is the name the token gets
        assert granted(made, body)[0] == "wolfgang amadeus mozart"
    finally:
        made.close()


DN = "uid=mozart,ou=musicians,dc=example,dc=com"


class RememberingDirectory(DirectoryStandIn):
    """An in-memory directory backend: one entry, reached by two names, whose right password
    the credential cache remembers once it was checked."""

    refusals_cost_a_bcrypt = True  # none here: the door need not pay one for it
    checks_take_a_place = True

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.remembered: set[tuple[str, bytes]] = set()

    def _login(self, account: str) -> Login:
        return Login(Identity(account, DIRECTORY, entry=DN), self.policy)

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        account, password = credentials.account, credentials.password
        return self._login(account) if (account, password) in self.remembered else None

    async def authenticate(self, credentials: object, gate: Any) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        account, password = credentials.account, credentials.password
        await gate.admit(DN)
        if password != b"right":
            return None
        self.remembered.add((account, password))
        return self._login(account)

    async def lookup(self, account: str) -> Identity | None:
        return None


def test_a_remembered_login_is_refused_while_its_entry_is_locked() -> None:
    """Else the right password (remembered) would answer 200 and a wrong one 429: a way to
    go on guessing through a second name while the entry is locked."""
    policy = Policy(users_from_document({}, "users.json"))
    directory = RememberingDirectory(policy)
    logins = Logins(
        current=lambda: policy,
        authenticators=[directory],
        passwords=PasswordChecker(InlineRunner()),
        clock=lambda: 1000.0,
        throttle=LoginThrottle(per_account=3, per_address=100, window=300),
        in_flight=InFlight(0),
    )
    owner, attacker = "192.0.2.1", "198.51.100.7"
    assert (
        settled(logins.login(UsernamePassword("wolfgang", b"right"), owner)).identity.account
        == "wolfgang"
    )
    for _ in range(3):
        with pytest.raises(LoginRefused):
            settled(logins.login(UsernamePassword("mozart", b"wrong"), attacker))
    with pytest.raises(LoginThrottled):
        logins.login(UsernamePassword("wolfgang", b"right"), attacker)
    assert (
        logins.login(UsernamePassword("wolfgang", b"right"), owner).identity.account == "wolfgang"
    )


def door(directory: RememberingDirectory, throttle: LoginThrottle) -> Logins:
    return Logins(
        current=lambda: directory.policy,
        authenticators=[directory],
        passwords=PasswordChecker(InlineRunner()),
        clock=lambda: 1000.0,
        throttle=throttle,
        in_flight=InFlight(0),
    )


def test_an_entry_locked_in_redis_is_asked_about_before_its_first_try_here() -> None:
    """A daemon that joined after the entry was locked (through another name, elsewhere)
    asks the shared store about the entry, as about a name, before letting it try."""
    entry = entry_name(DN)
    asked: list[list[tuple[str, str]]] = []

    def ask(pairs: list[tuple[str, str]]) -> Deferred[list[Seen]]:
        asked.append(pairs)
        held = [Seen("account", key, (990.0, 991.0, 992.0)) for table, key in pairs if key == entry]
        return succeed(held)

    directory = RememberingDirectory(Policy(users_from_document({}, "users.json")))
    logins = door(
        directory,
        LoginThrottle(per_account=3, per_address=100, window=300, news=NewsBus(lookup=ask)),
    )
    with pytest.raises(LoginThrottled):
        settled(logins.login(UsernamePassword("wolfgang", b"right"), "192.0.2.1"))
    assert ("account", entry) in [pair for pairs in asked for pair in pairs]
    assert not directory.remembered, "no password was tried"


@pytest_twisted.ensureDeferred
async def test_unlocking_a_name_ends_its_entrys_lockout_too(tmp_path: Path, slapd: Slapd) -> None:
    """tokend unlock NAME looks the entry up and clears it as well: else a directory account
    locked through its entry stayed locked after an operator unlocked it."""
    keys = SharedKeys(b"test")  # as in the daemon: names hashed
    made = directory_realm(
        tmp_path,
        slapd,
        filter="(&(objectClass=person)(|(uid={account})(cn={account})))",
        throttle=LoginThrottle(per_account=3, per_address=100, window=300, keys=keys.name),
    )
    try:
        for _ in range(3):
            assert (await get(made, "mozart", password="wrong"))[0] == 401
        assert (await get(made, "Wolfgang Amadeus Mozart"))[0] == 429  # the entry is locked
        unlocking = Unlocking(
            keys,
            single_process(made.throttle.unlock),
            entries=EntryNames(made.directory),
        )
        answer = await unlocking.unlock("account", "mozart")
        assert answer["cleared"] == 3  # the name's three failures (the entry's are the same)
        status, _, body = await get(made, "Wolfgang Amadeus Mozart", scope="lobby/x:pull")
        assert status == 200, body
    finally:
        made.close()


def test_a_look_alike_is_refused_after_one_bcrypt_as_a_wrong_password_is() -> None:
    """Its form must not answer sooner than a wrong password would; the address is charged,
    no account (the name is none), and the directory is never asked."""
    policy = Policy(users_from_document({}, "users.json"))
    directory = RememberingDirectory(policy)
    workers = CountingWorkers()
    throttle = LoginThrottle(per_account=3, per_address=2, window=300)
    logins = Logins(
        current=lambda: policy,
        authenticators=[directory],
        passwords=PasswordChecker(workers),
        clock=lambda: 1000.0,
        throttle=throttle,
        in_flight=InFlight(0),
    )
    for name in LOOK_ALIKES[:2]:
        with pytest.raises(LoginRefused):
            settled(logins.login(UsernamePassword(name, b"right"), "192.0.2.1"))
    assert workers.calls == 2 and not directory.remembered
    assert len(throttle.accounts) == 0
    with pytest.raises(LoginThrottled) as refused:
        logins.login(UsernamePassword("mozart", b"right"), "192.0.2.1")
    assert refused.value.by == "address"


def test_a_failure_on_an_entry_is_told_once_with_the_address_once() -> None:
    """Other workers and daemons hear the entry's failure, the address counted once."""
    heard: list[Any] = []
    throttle = LoginThrottle(per_account=2, per_address=10, window=300, news=NewsBus(heard.append))
    other = LoginThrottle(per_account=2, per_address=10, window=300)
    entry = "\0dn:uid=mozart,ou=musicians,dc=example,dc=com"
    for name, at in (("mozart", 1.0), ("wolfgang", 2.0)):
        assert throttle.admit(name, "192.0.2.1", at) is None
        assert throttle.admit_entry(entry, "192.0.2.1", at) is None
        throttle.failed(name, "192.0.2.1", at, entry=entry)
    assert [(n.account, n.address) for n in heard] == [(entry, "192.0.2.1")] * 2
    for news in heard:
        other.learn(news, 3.0)
    for table in (throttle, other):
        refusal = table.admit_entry(entry, "192.0.2.1", 3.0)
        assert refusal is not None and refusal.reason == "account"
        assert table.admit_address("192.0.2.1", 3.0) is None  # 2 of 10: counted once each
