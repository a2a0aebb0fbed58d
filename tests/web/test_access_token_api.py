"""The access token API under the realm's listener (#26): /api/v1/tokens, through a real realm
(tests/realms.py) over a real SQLite store and users.json with bcrypt hashes.

An owner manages their own tokens, an admin (a groups.json group with ``"admin": true``)
everyone's; the caller logs in with a password through the realm's door (throttle included),
never with an access token; bad input is a 400 with the registry's JSON error body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from realms import Realm, Response, basic_auth, throttle
from support import hash_password, settled
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from tokend.access_tokens.cap import parse_cap
from tokend.access_tokens.secrets import PREFIX, new_secret, parse
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import ACCESS_TOKEN_SOURCE, EntryGate, Identity, Login, TokenUse
from tokend.login.in_flight import InFlight
from tokend.login.logins import Logins
from tokend.login.passwords import PasswordChecker
from tokend.login.throttle import LoginThrottle
from tokend.metrics.instruments import Metrics
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import Policy
from tokend.store.database import connect, locate
from tokend.store.migrating import upgrade
from tokend.store.queries import AccessTokens, secret_hash
from tokend.store.runner import Store
from tokend.threads import InlineRunner
from tokend.web.access_token_api import AccessTokenAPI

NOW = 1_800_000_000
JSON = {b"Content-Type": [b"application/json"]}
BODY = {"name": "ci-deploy", "expires_in": "30d", "cap": {"team/*": ["pull", "push"]}}


def write_config(config: Path) -> Path:
    """alice and bob own tokens; root is in the admin group ops; dev is a group of no power."""
    config.mkdir(parents=True)
    users = {
        "alice": {"pass_hash": hash_password("alice"), "groups": ["dev"]},
        "bob": {"pass_hash": hash_password("bob"), "repositories": {"*": ["pull"]}},
        "root": {"pass_hash": hash_password("root"), "groups": ["ops"]},
    }
    groups = {
        "ops": {"admin": True, "repositories": {"**": ["*"]}},
        "dev": {"admin": False, "repositories": {"team/*": ["pull", "push"]}},
    }
    (config / "users.json").write_text(json.dumps(users))
    (config / "groups.json").write_text(json.dumps(groups))
    (config / "repositories.json").write_text(json.dumps({"repositories": []}))
    return config


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real SQLite store at the schema's head, its queries run inline (the daemon's run on
    the store's thread pool)."""
    location = locate(str(tmp_path / "tokens.db"))
    upgrade(location)
    engine = connect(location)
    yield Store(AccessTokens(engine, location), InlineRunner())
    engine.dispose()


def realm(tmp_path: Path, store: Store, **kwargs: Any) -> Realm:
    return Realm(tmp_path, config=write_config(tmp_path / "config"), token_store=store, **kwargs)


def call(
    realm: Realm, method: str, path: str, user: str | None = None, body: Any = None, **kwargs: Any
) -> Response:
    """``method`` on ``path`` as ``user`` (whose password is their name), ``body`` sent as
    JSON."""
    password = kwargs.pop("password", user)
    if body is not None:
        kwargs.setdefault("headers", JSON)
        kwargs["data"] = body if isinstance(body, bytes) else json.dumps(body).encode()
    return realm.call(method, path, user=user, password=password, **kwargs)


def created(realm: Realm, user: str, body: dict[str, Any] = BODY) -> dict[str, Any]:
    code, headers, answer = call(realm, "POST", "/api/v1/tokens", user, body)
    assert code == 201, answer
    assert headers[b"Location"] == [f"/api/v1/tokens/{answer['id']}".encode()]
    return answer


def error(response: Response, status: int) -> str:
    code, headers, body = response
    assert code == status, body
    assert headers[b"Cache-Control"] == [b"no-store"]
    [only] = body["errors"]
    assert set(only) == {"code", "message", "detail"}
    return str(only["message"])


def test_an_owner_creates_lists_shows_and_revokes_a_token_whose_secret_is_shown_once(
    tmp_path: Path, store: Store
) -> None:
    api = realm(tmp_path, store)
    answer = created(api, "alice")
    secret = answer.pop("secret")
    assert secret.startswith(PREFIX) and parse(secret) is not None
    assert answer == {
        "id": answer["id"],
        "owner": "alice",
        "name": "ci-deploy",
        "state": "active",
        "cap": {"team/*": ["pull", "push"]},
        "scopes": ["team/*:pull,push"],
        "created_at": "2027-01-15T08:00:00Z",
        "expires_at": "2027-02-14T08:00:00Z",
        "revoked_at": None,
        "last_used_at": None,
        "last_used_from": None,
    }
    stored = settled(store.find_by_hash(secret_hash(secret)))
    assert stored is not None and stored.id == answer["id"]  # the secret shown is the one kept

    code, _, listed = call(api, "GET", "/api/v1/tokens", "alice")
    assert code == 200 and listed == {"tokens": [answer]}
    code, _, shown = call(api, "GET", f"/api/v1/tokens/{answer['id']}", "alice")
    assert code == 200 and shown == answer
    assert secret not in json.dumps([listed, shown])

    api.clock.advance(60)
    code, _, revoked = call(api, "DELETE", f"/api/v1/tokens/{answer['id']}", "alice")
    assert code == 200, revoked
    assert revoked == {**answer, "state": "revoked", "revoked_at": "2027-01-15T08:01:00Z"}
    assert api.revoked == [answer["id"]]
    api.clock.advance(60)
    code, _, again = call(api, "DELETE", f"/api/v1/tokens/{answer['id']}", "alice")
    assert code == 200 and again == revoked  # the first revocation's time is kept
    assert call(api, "GET", f"/api/v1/tokens/{answer['id']}", "alice")[2] == revoked


def test_scopes_instead_of_a_cap_and_an_expiry_in_seconds(tmp_path: Path, store: Store) -> None:
    api = realm(tmp_path, store)
    body = {"name": "nightly", "expires_in": 3600, "scopes": ["team/app:pull", "base/*:pull"]}
    answer = created(api, "alice", body)
    assert answer["cap"] == {"team/app": ["pull"], "base/*": ["pull"]}
    assert answer["expires_at"] == "2027-01-15T09:00:00Z"


def test_another_owners_token_is_not_found_and_their_list_is_forbidden(
    tmp_path: Path, store: Store
) -> None:
    api = realm(tmp_path, store)
    alices = created(api, "alice")["id"]
    bobs = created(api, "bob")["id"]
    for method in ("GET", "DELETE"):
        theirs = error(call(api, method, f"/api/v1/tokens/{alices}", "bob"), 404)
        nobodys = error(call(api, method, "/api/v1/tokens/0123456789abcdef", "bob"), 404)
        assert theirs == nobodys  # never says it exists
    assert api.revoked == []
    assert settled(store.get(alices)).revoked_at is None
    code, _, listed = call(api, "GET", "/api/v1/tokens", "bob")
    assert code == 200 and [t["id"] for t in listed["tokens"]] == [bobs]
    assert "admin" in error(call(api, "GET", "/api/v1/tokens?owner=alice", "bob"), 403)
    code, _, own = call(api, "GET", "/api/v1/tokens?owner=bob", "bob")
    assert code == 200 and own == listed
    refused = call(api, "POST", "/api/v1/tokens", "bob", {**BODY, "owner": "alice"})
    assert "admin" in error(refused, 403)
    assert sorted(t.owner for t in settled(store.list())) == ["alice", "bob"]


def test_an_admin_sees_and_manages_everyones_tokens(tmp_path: Path, store: Store) -> None:
    api = realm(tmp_path, store)
    alices = created(api, "alice")["id"]
    api.clock.advance(1)
    bobs = created(api, "root", {**BODY, "owner": "bob", "name": "for-bob"})
    assert bobs["owner"] == "bob" and bobs["name"] == "for-bob"
    code, _, everyone = call(api, "GET", "/api/v1/tokens", "root")
    assert code == 200 and [t["id"] for t in everyone["tokens"]] == [alices, bobs["id"]]
    code, _, only = call(api, "GET", "/api/v1/tokens?owner=alice", "root")
    assert [t["id"] for t in only["tokens"]] == [alices]
    assert call(api, "GET", f"/api/v1/tokens/{alices}", "root")[0] == 200
    code, _, revoked = call(api, "DELETE", f"/api/v1/tokens/{alices}", "root")
    assert code == 200 and revoked["state"] == "revoked" and api.revoked == [alices]
    nobody = call(api, "POST", "/api/v1/tokens", "root", {**BODY, "owner": "nobody"})
    assert "no account 'nobody'" in error(nobody, 400)
    assert len(settled(store.list())) == 2


def test_no_credentials_or_another_scheme_is_401_with_a_basic_challenge(
    tmp_path: Path, store: Store
) -> None:
    api = realm(tmp_path, store)
    for headers in ({}, {b"Authorization": [b"Bearer " + new_secret().encode()]}):
        response = call(api, "GET", "/api/v1/tokens", headers=headers)
        error(response, 401)
        assert response[1][b"WWW-Authenticate"] == [b'Basic realm="tokend-test"']
    assert "Basic" in error(call(api, "GET", "/api/v1/tokens", headers=basic_auth("", "")), 401)
    garbled = {b"Authorization": [b"Basic !!!"]}
    assert "base64" in error(call(api, "GET", "/api/v1/tokens", headers=garbled), 400)


def test_a_wrong_password_is_401_and_counts_in_the_realms_throttle(
    tmp_path: Path, store: Store
) -> None:
    api = realm(tmp_path, store, throttle=throttle(per_account=2))
    for _ in range(2):
        response = call(api, "GET", "/api/v1/tokens", "alice", password="wrong")
        assert "invalid user name or password" in error(response, 401)
    code, headers, body = call(api, "GET", "/api/v1/tokens", "alice")  # the right one, too late
    assert code == 429, body
    assert headers[b"Retry-After"] and "too many failed logins" in body["errors"][0]["message"]
    code, _, body = api.get("alice", "alice")  # the token endpoint shares the throttle
    assert code == 429, body


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"{", "not JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b'{"name": "a", "name": "b", "cap": {}}', "more than once"),
        (b'{"name": "a", "expires_in": NaN, "cap": {}}', "not JSON"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b"[]", "expected a JSON object"),
        ({**BODY, "colour": "red"}, "unknown field 'colour'"),
        ({"name": "x", "expires_in": "30d"}, "cap"),
        ({**BODY, "name": ""}, "name"),
        ({**BODY, "name": 7}, "name"),
        ({**BODY, "expires_in": "2000d"}, "at most"),
        ({**BODY, "expires_in": 0}, "at least"),
        ({**BODY, "expires_in": "soon"}, "soon"),
        ({**BODY, "expires_in": True}, "whole seconds"),
        ({**BODY, "cap": {"team/*": ["pusj"]}}, "pusj"),
        ({**BODY, "cap": ["team/*"]}, "cap"),
        ({**BODY, "owner": 5}, "owner"),
    ],
)
def test_bad_bodies_are_400_with_the_json_error_body_and_store_nothing(
    tmp_path: Path, store: Store, body: Any, said: str
) -> None:
    api = realm(tmp_path, store)
    message = error(call(api, "POST", "/api/v1/tokens", "alice", body), 400)
    assert said in message
    assert settled(store.list()) == []


def test_a_body_that_is_not_json_or_too_large_is_refused_before_it_is_read(
    tmp_path: Path, store: Store
) -> None:
    api = realm(tmp_path, store)
    form = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
    assert "application/json" in error(
        call(api, "POST", "/api/v1/tokens", "alice", b"name=x", headers=form), 415
    )
    large = json.dumps({**BODY, "name": "x" * 20000}).encode()
    assert "16384" in error(call(api, "POST", "/api/v1/tokens", "alice", large), 413)
    assert settled(store.list()) == []


def test_paths_methods_and_query_parameters_the_api_does_not_know(
    tmp_path: Path, store: Store
) -> None:
    api = realm(tmp_path, store)
    assert "/api/v1/tokens" in error(call(api, "GET", "/api/v1/nothing", "alice"), 404)
    response = call(api, "PUT", "/api/v1/tokens", "alice", BODY)
    error(response, 405)
    assert response[1][b"Allow"] == [b"GET, HEAD, POST"]
    assert "'colour'" in error(call(api, "GET", "/api/v1/tokens?colour=red", "alice"), 400)
    twice = call(api, "GET", "/api/v1/tokens?owner=alice&owner=bob", "root")
    assert "once" in error(twice, 400)
    long_id = "/api/v1/tokens/" + "a" * 500
    assert error(call(api, "GET", long_id, "alice"), 404) == error(
        call(api, "GET", "/api/v1/tokens/0123456789abcdef", "alice"), 404
    )


def test_creations_and_revocations_are_counted_and_logged_without_the_secret(
    tmp_path: Path, store: Store
) -> None:
    registry = CollectorRegistry()
    api = realm(tmp_path, store, token_metrics=Metrics(registry))
    with capturedLogs() as events:
        answer = created(api, "root", {**BODY, "owner": "alice"})
        call(api, "DELETE", f"/api/v1/tokens/{answer['id']}", "root")
        call(api, "DELETE", f"/api/v1/tokens/{answer['id']}", "root")
    assert registry.get_sample_value("tokend_access_tokens_created_total") == 1
    assert registry.get_sample_value("tokend_access_tokens_revoked_total") == 1
    lines = [formatEvent(e) for e in events]
    made = [e for e in events if e.get("action") == "create"]
    gone = [e for e in events if e.get("action") == "revoke"]
    assert len(made) == 1 and len(gone) == 2
    for event in (made[0], gone[0]):
        assert event["token_id"] == answer["id"] and event["name"] == "ci-deploy"
        assert event["owner"] == "alice" and event["actor"] == "root"
    assert "already" in formatEvent(gone[1])
    assert answer["secret"] not in "\n".join(lines) + repr(events)
    assert answer["secret"][len(PREFIX) :][:12] not in "\n".join(lines)


class Unavailable:
    """A store whose database does not answer: each query fails as the real one does."""

    def __init__(self) -> None:
        nowhere = locate("postgresql://tokend@/tokend?host=/nonexistent")
        self.tokens = AccessTokens(connect(nowhere), nowhere)


def test_a_database_that_does_not_answer_is_503_with_retry_after(tmp_path: Path) -> None:
    unreachable = Store(Unavailable().tokens, InlineRunner())
    api = realm(tmp_path, unreachable)
    for method, path, body in (
        ("GET", "/api/v1/tokens", None),
        ("POST", "/api/v1/tokens", BODY),
        ("GET", "/api/v1/tokens/0123456789abcdef", None),
        ("DELETE", "/api/v1/tokens/0123456789abcdef", None),
    ):
        response = call(api, method, path, "alice", body)
        message = error(response, 503)
        assert response[1][b"Retry-After"] == [b"5"]
        assert "nonexistent" not in message  # where the database is stays in the log


class TokenStandIn:
    """Until the door lands: an authenticator that takes any ``tkd_at_`` password as one of
    the owner's access tokens, as the door's will take a good one."""

    credential_types: tuple[type, ...] = (UsernamePassword,)
    source = ACCESS_TOKEN_SOURCE
    refusals_cost_a_bcrypt = False
    checks_take_a_place = True

    def __init__(self, current: PolicyHolder) -> None:
        self._holder = current

    def answers(self, credentials: object, policy: Policy) -> object | None:
        assert isinstance(credentials, UsernamePassword)
        return credentials if credentials.password.startswith(PREFIX.encode()) else None

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        use = TokenUse("0123456789abcdef", "ci", parse_cap(["**:*"]))
        identity = Identity(credentials.account, ACCESS_TOKEN_SOURCE, access_token=use)
        return Login(identity, self._holder.current)

    async def authenticate(self, credentials: object, gate: EntryGate) -> Login | None:
        return None


def test_a_login_with_an_access_token_is_forbidden_even_an_admins(
    tmp_path: Path, store: Store
) -> None:
    config = write_config(tmp_path / "config")
    clock = Clock()
    holder = PolicyHolder(load_policy(config).policy, clock.seconds())
    logins = Logins(
        current=lambda: holder.current,
        authenticators=[TokenStandIn(holder)],
        passwords=PasswordChecker(InlineRunner()),
        clock=clock.seconds,
        throttle=LoginThrottle(per_account=0, per_address=0, window=1),
        in_flight=InFlight(0),
    )
    api = AccessTokenAPI(policy=holder, logins=logins, store=store, clock=clock.seconds)
    http = StubTreq(api.resource())
    headers = basic_auth("root", new_secret())
    for method, url in (("GET", "/api/v1/tokens"), ("POST", "/api/v1/tokens")):
        response = settled(
            http.request(method, "http://tokend" + url, headers={**headers, **JSON}, data=b"{}")
        )
        body = json.loads(settled(http.content(response)))
        assert response.code == 403, body
        assert "with your password, not a token" in body["errors"][0]["message"]
    assert settled(store.list()) == []


def test_without_a_store_the_realm_has_no_api(tmp_path: Path) -> None:
    api = Realm(tmp_path, config=write_config(tmp_path / "config"))
    code, _, body = call(api, "GET", "/api/v1/tokens", "alice")
    assert code == 404 and "/v2/token" in body["errors"][0]["message"]


def test_a_token_made_here_logs_in_at_the_realm_within_its_cap_until_revoked_here(
    tmp_path: Path, store: Store
) -> None:
    """The whole round in one process, as the daemon wires it: the API's secret is a password
    at /v2/token (the owner's rights within the cap, the token named in the log), never at the
    API, and a revocation through the API is seen by the next login at once."""
    api = realm(tmp_path, store)
    made = created(api, "alice", {**BODY, "cap": {"team/app": ["pull"]}})
    with capturedLogs() as events:
        access = api.access(
            "repository:team/app:pull,push",
            "repository:team/other:pull",
            user="alice",
            password=made["secret"],
        )
    assert access == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    issued = [formatEvent(e) for e in events if e.get("outcome") == "issued"]
    assert len(issued) == 1 and f"access token {made['id']} (ci-deploy)" in issued[0], issued
    assert made["secret"] not in "".join(formatEvent(e) for e in events)
    assert "not a token" in error(
        call(api, "GET", "/api/v1/tokens", "alice", password=made["secret"]), 403
    )
    code, _, revoked = call(api, "DELETE", f"/api/v1/tokens/{made['id']}", "alice")
    assert code == 200 and revoked["state"] == "revoked"
    code, _, body = api.get("alice", made["secret"], scope="team/app:pull")
    assert code == 401, body
