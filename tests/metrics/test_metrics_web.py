"""Each realm answer counted once, by grant and outcome, in memory (StubTreq, a Clock, bcrypt at
cost 4): the counters read straight from the injected registry."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from realms import realm_api
from stand_ins import DirectoryStandIn
from support import settled, write_key_pair, write_policy
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import BackendUnavailable, Login
from tokend.login.refresh_tokens import RefreshTokens
from tokend.login.shared_limits.bus import NewsBus
from tokend.login.throttle import LoginThrottle
from tokend.metrics.instruments import GRANTS, OUTCOMES, Metrics
from tokend.policy.model import Policy
from tokend.signing.keys import load_signing_key
from tokend.threads import BoundedThreadQueue, ThreadRunner

NOW = 1_800_000_000
SERVICE = "registry.test"


class DirectoryDown(DirectoryStandIn):
    """A directory that cannot answer: every login it would decide is unavailable."""

    async def authenticate(self, credentials: object, gate: object) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        raise BackendUnavailable("the directory is unavailable", credentials.account, 2)

    def vouch_at_once(self, claims: Any, tokens: Any, policy: Policy) -> Login | None:
        return None

    async def vouch(self, claims: Any, tokens: Any, policy: Policy) -> Login:
        raise BackendUnavailable("the directory is unavailable", claims.account, 2)


class Stuck:
    def run(self, function: Any, *args: Any) -> Deferred[Any]:
        return Deferred()


class Realm:
    def __init__(
        self,
        tmp_path: Path,
        *,
        workers: ThreadRunner | None = None,
        throttle: LoginThrottle | None = None,
        directory: DirectoryDown | None = None,
    ) -> None:
        config = tmp_path / "config"
        write_policy(
            config,
            {"alice": ("alice-pw", {"*": ["pull"]})},
            {"repositories": ["public/hello"]},
        )
        key_path, cert_path = write_key_pair(tmp_path)
        key = load_signing_key(key_path, cert_path)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.registry = CollectorRegistry()
        self.api = realm_api(
            config,
            key,
            clock=self.clock,
            workers=workers,
            services=[SERVICE],
            throttle=throttle,
            credential_cache=CredentialCache(ttl=60),
            refresh_tokens=RefreshTokens(key, "tokend-test", 3600),
            directory=directory,
            metrics=Metrics(self.registry),
        ).api
        self.http = StubTreq(self.api.resource())

    def answer(self, request: Deferred[Any]) -> tuple[int, Any]:
        self.http.flush()
        response = settled(request)
        return response.code, json.loads(settled(self.http.content(response)))

    def get(
        self,
        user: str | None = None,
        password: str = "",
        query: str = "&scope=repository:public/hello:pull",
    ) -> tuple[int, Any]:
        headers = {}
        if user is not None:
            raw = f"{user}:{password}".encode()
            headers[b"Authorization"] = [b"Basic " + base64.b64encode(raw)]
        url = f"http://tokend/v2/token?service={SERVICE}{query}"
        return self.answer(self.http.get(url, headers=headers))

    def post(self, form: dict[str, str], content_type: bytes = b"") -> tuple[int, Any]:
        request = self.http.post(
            "http://tokend/v2/token",
            data=urlencode({"service": SERVICE, "client_id": "test", **form}).encode(),
            headers={b"Content-Type": [content_type or b"application/x-www-form-urlencoded"]},
        )
        return self.answer(request)

    def counts(self) -> dict[tuple[str, str], float]:
        """Every (grant, outcome) counted so far, zeros left out."""
        found = {}
        for grant in GRANTS:
            for outcome in OUTCOMES:
                labels = {"grant": grant, "outcome": outcome}
                count = self.registry.get_sample_value("tokend_token_requests_total", labels)
                if count:
                    found[grant, outcome] = count
        return found

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def test_anonymous_tokens_and_refusals_are_counted_with_their_duration(tmp_path: Path) -> None:
    realm = Realm(tmp_path)
    assert realm.get()[0] == 200
    assert realm.get()[0] == 200
    assert realm.get(query="&scope=repository:NOT VALID:pull")[0] == 400
    assert realm.answer(realm.http.delete(f"http://tokend/v2/token?service={SERVICE}"))[0] == 405
    assert realm.answer(realm.http.get("http://tokend/elsewhere"))[0] == 404
    assert realm.counts() == {("anonymous", "issued"): 2, ("anonymous", "bad_request"): 3}
    assert realm.value("tokend_request_duration_seconds_count", grant="anonymous") == 5
    assert realm.value("tokend_password_checks_total", result="accepted") == 0
    assert realm.value("tokend_credential_cache_misses_total") == 0


def test_healthz_is_not_a_token_request(tmp_path: Path) -> None:
    realm = Realm(tmp_path)
    assert realm.answer(realm.http.get("http://tokend/healthz"))[0] == 200
    assert realm.answer(realm.http.get("http://tokend/healthz?strict=maybe"))[0] == 400
    assert realm.counts() == {}


def test_password_logins_count_checks_and_cache_lookups(tmp_path: Path) -> None:
    realm = Realm(tmp_path)
    assert realm.get("alice", "alice-pw")[0] == 200  # bcrypt, then remembered
    assert realm.get("alice", "alice-pw")[0] == 200  # the cache answers
    assert realm.get("alice", "wrong")[0] == 401
    assert realm.get("nobody", "x")[0] == 401  # a dummy bcrypt runs: a rejected check
    assert realm.counts() == {("password", "issued"): 2, ("password", "unauthorized"): 2}
    assert realm.value("tokend_password_checks_total", result="accepted") == 1
    assert realm.value("tokend_password_checks_total", result="rejected") == 2
    assert realm.value("tokend_password_check_seconds_count") == 3
    assert realm.value("tokend_credential_cache_hits_total") == 1
    assert realm.value("tokend_credential_cache_misses_total") == 3
    assert realm.value("tokend_request_duration_seconds_count", grant="password") == 4


def test_a_refused_request_keeps_the_grant_it_asked_for(tmp_path: Path) -> None:
    realm = Realm(tmp_path)
    bad_scope = "&scope=repository:NOT VALID:pull"
    assert realm.get("alice", "alice-pw", query=bad_scope)[0] == 400
    assert realm.post({"grant_type": "password"})[0] == 400
    assert realm.post({"grant_type": "password"}, content_type=b"text/plain")[0] == 400
    assert realm.post({"grant_type": "refresh_token", "refresh_token": "x.y.z"})[0] == 400
    assert realm.post({"grant_type": "refresh_token"})[0] == 400
    assert realm.counts() == {
        ("password", "bad_request"): 3,
        ("refresh_token", "unauthorized"): 1,
        ("refresh_token", "bad_request"): 1,
    }
    assert realm.value("tokend_password_checks_total", result="rejected") == 0


def test_the_refresh_grant_is_counted_as_such(tmp_path: Path) -> None:
    realm = Realm(tmp_path)
    code, body = realm.get("alice", "alice-pw", query="&offline_token=true&client_id=docker")
    assert code == 200
    form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    assert realm.post(form)[0] == 200
    assert realm.counts() == {("password", "issued"): 1, ("refresh_token", "issued"): 1}
    assert realm.value("tokend_password_checks_total", result="accepted") == 1


def test_throttled_logins_count_by_what_reached_its_limit(tmp_path: Path) -> None:
    throttle = LoginThrottle(per_account=2, per_address=100, window=300)
    realm = Realm(tmp_path, throttle=throttle)
    for _ in range(2):
        assert realm.get("alice", "wrong")[0] == 401
    assert realm.get("alice", "alice-pw")[0] == 429
    assert realm.counts() == {("password", "unauthorized"): 2, ("password", "throttled"): 1}
    assert realm.value("tokend_throttled_total", by="account") == 1
    assert realm.value("tokend_throttled_total", by="address") == 0
    assert realm.value("tokend_password_checks_total", result="rejected") == 2


def test_a_full_queue_is_overloaded_and_runs_no_check(tmp_path: Path) -> None:
    realm = Realm(tmp_path, workers=BoundedThreadQueue(Stuck(), limit=1, queue=0))
    realm.http.get(  # takes the one thread, and never finishes
        f"http://tokend/v2/token?service={SERVICE}",
        headers={b"Authorization": [b"Basic " + base64.b64encode(b"alice:alice-pw")]},
    )
    assert realm.get("nobody", "x")[0] == 503
    assert realm.counts() == {("password", "overloaded"): 1}
    assert realm.value("tokend_password_checks_total", result="rejected") == 0
    assert realm.value("tokend_password_checks_total", result="accepted") == 0


def test_a_directory_that_cannot_answer_is_unavailable(tmp_path: Path) -> None:
    realm = Realm(tmp_path, directory=DirectoryDown())
    assert realm.get("carol", "pw")[0] == 503
    assert realm.counts() == {("password", "unavailable"): 1}
    assert realm.value("tokend_password_checks_total", result="rejected") == 0


def test_no_account_address_or_repository_becomes_a_label(tmp_path: Path) -> None:
    realm = Realm(tmp_path)
    realm.get("alice", "alice-pw")
    realm.get("mallory", "x", query="&scope=repository:secret/thing:pull")
    text = generate_latest(realm.registry).decode()
    for value in ("alice", "mallory", "secret", "public/hello", "127.0.0.1", "localhost"):
        assert value not in text


@pytest.mark.parametrize("grant", GRANTS)
def test_every_grant_has_a_duration_series(tmp_path: Path, grant: str) -> None:
    realm = Realm(tmp_path)
    assert realm.value("tokend_request_duration_seconds_count", grant=grant) == 0


def test_a_login_refused_after_asking_redis_first_counts_as_throttled(tmp_path: Path) -> None:
    """A process that has not seen alice since it joined Redis asks first; Redis says she is
    locked: 429 (the password is never checked), counted like any throttled login."""
    from tokend.login.shared_limits.news import Seen

    asked: list[list[tuple[str, str]]] = []

    def ask(pairs: list[tuple[str, str]]) -> Deferred[list[Seen]]:
        asked.append(pairs)
        locked = Seen("account", "alice", tuple(NOW - 10.0 - t for t in range(10)))
        answer: Deferred[list[Seen]] = Deferred()
        realm.clock.callLater(0.5, answer.callback, [locked])
        return answer

    throttle = LoginThrottle(per_account=10, per_address=100, window=300, news=NewsBus(lookup=ask))
    realm = Realm(tmp_path, throttle=throttle)
    request = realm.http.get(
        f"http://tokend/v2/token?service={SERVICE}",
        headers={b"Authorization": [b"Basic " + base64.b64encode(b"alice:alice-pw")]},
    )
    realm.clock.advance(0.5)
    code, body = realm.answer(request)
    assert code == 429 and body["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert asked == [[("account", "alice"), ("address", "127.0.0.1")]]
    assert realm.value("tokend_throttled_total", by="account") == 1
    assert realm.value("tokend_password_checks_total", result="accepted") == 0
    assert realm.get("alice", "alice-pw")[0] == 429, "asked once: the answer is kept"
    assert len(asked) == 1
