"""The one realm fixture: ``realm_api`` builds a TokenAPI as the daemon does, and ``Realm`` calls
it in memory (StubTreq) over a config directory of its own, for every test of the web layer, the
door and the throttle that goes through HTTP.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from support import load_certificate, settled, verify_jwt, write_key_pair, write_policy
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from twisted.web.resource import Resource

    from tokend.client_address import TrustedProxies
    from tokend.issuing import Issuing
    from tokend.login.credential_cache import CredentialCache
    from tokend.login.federated import IssuersKeys
    from tokend.login.in_flight import InFlight
    from tokend.login.ldap.client import Directory
    from tokend.login.logins import AccountDirectory, Logins
    from tokend.login.refresh_tokens import RefreshTokens
    from tokend.login.throttle import LoginThrottle
    from tokend.metrics.instruments import AccessTokenMetrics, RequestMetrics
    from tokend.policy.holder import PolicyHolder
    from tokend.signing.keys import SigningKey
    from tokend.signing.tokens import TokenIssuer
    from tokend.store.runner import Store
    from tokend.threads import ThreadRunner
    from tokend.web.access_token_api import AccessTokenAPI
    from tokend.web.realm import TokenAPI

NOW = 1_800_000_000
SERVICE = "registry.test"
USERS = {
    "foo": ("foo", {"*": ["pull"]}),
    "bar": ("bar", {"*": ["pull", "push"]}),
}
TEAM_USERS = {
    **USERS,
    "team": ("s3cret", {"team/app": ["pull", "push"], "*": ["pull"], "secret/x": []}),
}
"""The accounts of the tests that ask for each user's rights and their intersection."""
PUBLIC = {"repositories": ["public/hello"]}
Response = tuple[int, dict[bytes, list[bytes]], Any]


class HandFiredWorkers:
    """A thread pool stand-in that holds every call until the test fires it, so checks and
    loads stay in flight (``calls`` counts what was asked)."""

    def __init__(self) -> None:
        self.calls = 0
        self.pending: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls += 1
        deferred: Deferred[Any] = Deferred()
        self.pending.append((deferred, function, args))
        return deferred

    def fire_one(self) -> None:
        """Runs the oldest held call; its exception fails its Deferred."""
        deferred, function, args = self.pending.pop(0)
        try:
            result = function(*args)
        except Exception:
            deferred.errback(Failure())
        else:
            deferred.callback(result)

    def fire_all(self) -> None:
        while self.pending:
            self.fire_one()


@dataclass(frozen=True)
class RealmParts:
    """A TokenAPI built as the daemon builds one, with the handles tests read or drive."""

    api: TokenAPI
    holder: PolicyHolder
    clock: Any
    logins: Logins
    issuing: Issuing
    tokens: TokenIssuer
    throttle: LoginThrottle | None
    metrics: RequestMetrics
    access_tokens: AccessTokenAPI | None = None
    """The access token API under /api/v1/, when the realm was given a store."""

    def resource(self) -> Resource:
        return self.api.resource()


def realm_api(
    policy: Path | PolicyHolder,
    key: SigningKey | tuple[Path, Path],
    *,
    clock: Any = None,
    workers: ThreadRunner | None = None,
    issuer: str = "tokend-test",
    services: Sequence[str] = ("registry.test",),
    throttle: LoginThrottle | None = None,
    credential_cache: CredentialCache | None = None,
    trusted_proxies: TrustedProxies | None = None,
    in_flight: InFlight | None = None,
    refresh_tokens: RefreshTokens | None = None,
    directory: AccountDirectory | None = None,
    metrics: RequestMetrics | None = None,
    issuer_keys: IssuersKeys | None = None,
    token_store: Store | None = None,
    token_metrics: AccessTokenMetrics | None = None,
    revoked: Callable[[str], object] | None = None,
) -> RealmParts:
    """The one realm fixture: a TokenAPI over ``policy`` (a config directory, loaded now, or a
    ready holder), signing with ``key`` (loaded, or its key and certificate paths) for 300 s.

    Defaults: a ``task.Clock`` at 0, bcrypt run inline (``workers``), no throttle, cache,
    per-address share, directory, refresh tokens or metrics, as in ``logins_for``; with
    ``issuer_keys``, the policy's issuers.json trusts log in with their platforms' JWTs; with
    ``token_store``, access tokens log in (asked first, as in the daemon) and the access token
    API answers under /api/v1/ (each revocation told to the door, which forgets the token at
    once as the daemon's does, and to ``revoked``).
    """
    from twisted.internet.task import Clock

    from tokend.issuing import Issuing
    from tokend.login.access_tokens import AccessTokenAccounts
    from tokend.login.assembly import logins_for
    from tokend.login.federated import FederatedAccounts
    from tokend.login.passwords import PasswordChecker
    from tokend.metrics.instruments import NO_METRICS
    from tokend.policy.files import load_policy
    from tokend.policy.holder import PolicyHolder
    from tokend.signing.keys import load_signing_key
    from tokend.signing.tokens import TokenIssuer
    from tokend.threads import InlineRunner
    from tokend.web.access_token_api import AccessTokenAPI
    from tokend.web.realm import TokenAPI

    clock = Clock() if clock is None else clock
    metrics = NO_METRICS if metrics is None else metrics
    if isinstance(policy, Path):
        policy = PolicyHolder(load_policy(policy).policy, clock.seconds())
    if isinstance(key, tuple):
        key = load_signing_key(*key)
    holder = policy
    federation = None
    if issuer_keys is not None:
        federation = FederatedAccounts(issuer_keys, lambda: holder.current, clock.seconds)
    door = None
    if token_store is not None:
        door = AccessTokenAccounts(
            token_store,
            lambda: holder.current,
            clock.seconds,
            **({} if token_metrics is None else {"events": token_metrics}),
        )
    logins = logins_for(
        policy=policy,
        passwords=PasswordChecker(InlineRunner() if workers is None else workers),
        clock=clock.seconds,
        throttle=throttle,
        credential_cache=credential_cache,
        in_flight=in_flight,
        directory=directory,
        refresh_tokens=refresh_tokens,
        federation=federation,
        access_tokens=door,
        metrics=metrics,
    )
    tokens = TokenIssuer(key, issuer, 300)
    issuing = Issuing(policy=policy, tokens=tokens, logins=logins, clock=clock.seconds)
    access_tokens = None
    if token_store is not None:
        access_tokens = AccessTokenAPI(
            policy=policy,
            logins=logins,
            store=token_store,
            clock=clock.seconds,
            realm=issuer,
            trusted_proxies=trusted_proxies,
            revoked=lambda token_id: _told(token_id, door, revoked),
            **({} if token_metrics is None else {"metrics": token_metrics}),
        )
    api = TokenAPI(
        policy=policy,
        logins=logins,
        issuing=issuing,
        services=services,
        trusted_proxies=trusted_proxies,
        metrics=metrics,
        api=None if access_tokens is None else access_tokens.resource(),
    )
    return RealmParts(api, policy, clock, logins, issuing, tokens, throttle, metrics, access_tokens)


def _told(token_id: str, door: Any, revoked: Callable[[str], object] | None) -> None:
    door.forget(token_id)
    if revoked is not None:
        revoked(token_id)


class CountingWorkers:
    """Real bcrypt, inline, counted."""

    def __init__(self) -> None:
        from tokend.threads import InlineRunner

        self.calls = 0
        self._inline = InlineRunner()

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls += 1
        return self._inline.run(function, *args)


class Realm:
    """A TokenAPI over the policy files in ``tmp_path``/config (``users`` and ``anonymous``
    written there unless ``config`` is a directory written already), signing with a new key
    pair, and the ways a test calls it.

    By default: a ``task.Clock`` at NOW, bcrypt inline and counted (``bcrypt_runs``), one
    service, no throttle, cache, proxies, in-flight limit, refresh tokens, directory or issuer
    keys (federated logins); each is a keyword. A ``directory`` client's accounts read the
    realm's policy and ``cache`` (then required) and ask clients to come back in 2 s when it
    cannot answer. With ``token_store`` the access token API answers under /api/v1/ and each
    revocation's id is appended to ``revoked``.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        users: dict[str, tuple[str, dict[str, list[str]]]] = USERS,
        anonymous: dict[str, Any] | None = None,
        config: Path | None = None,
        services: Sequence[str] = (SERVICE,),
        clock: Any = None,
        workers: ThreadRunner | None = None,
        throttle: LoginThrottle | None = None,
        cache: CredentialCache | None = None,
        proxies: TrustedProxies | None = None,
        in_flight: InFlight | None = None,
        refresh_ttl: int | None = None,
        directory: Directory | None = None,
        issuer_keys: IssuersKeys | None = None,
        token_store: Store | None = None,
        token_metrics: AccessTokenMetrics | None = None,
    ) -> None:
        from treq.testing import StubTreq
        from twisted.internet.task import Clock

        from tokend.login.ldap.accounts import DirectoryAccounts
        from tokend.login.refresh_tokens import RefreshTokens
        from tokend.policy.files import load_policy
        from tokend.policy.holder import PolicyHolder
        from tokend.signing.keys import load_signing_key

        self.anonymous = anonymous or PUBLIC
        if config is None:
            config = tmp_path / "config"
            write_policy(config, users, self.anonymous)
        self.config = config
        key_path, cert_path = write_key_pair(tmp_path)
        self.certificate = load_certificate(cert_path)
        if clock is None:
            clock = Clock()
            clock.advance(NOW)
        self.clock = clock
        self.counting = CountingWorkers()
        self.holder = PolicyHolder(load_policy(config).policy, clock.seconds())
        self.signing_key = load_signing_key(key_path, cert_path)
        self.refresh_tokens = (
            None
            if refresh_ttl is None
            else RefreshTokens(self.signing_key, "tokend-test", refresh_ttl)
        )
        self.throttle = throttle
        self.cache = cache
        self.directory = directory
        self.revoked: list[str] = []
        """The ids the access token API said it revoked (the daemon tells the door)."""
        accounts = None
        if directory is not None:
            assert cache is not None, "directory accounts go through the credential cache"
            holder = self.holder
            accounts = DirectoryAccounts(
                directory, lambda: holder.current, cache, clock.seconds, retry_after=2.0
            )
        self.parts = realm_api(
            self.holder,
            self.signing_key,
            clock=clock,
            workers=workers or self.counting,
            services=services,
            throttle=throttle,
            credential_cache=cache,
            trusted_proxies=proxies,
            in_flight=in_flight,
            refresh_tokens=self.refresh_tokens,
            directory=accounts,
            issuer_keys=issuer_keys,
            token_store=token_store,
            token_metrics=token_metrics,
            revoked=self.revoked.append,
        )
        self.api = self.parts.api
        self.http = StubTreq(self.api.resource())
        self.closing: list[Callable[[], object]] = []
        """What ``close()`` stops: a directory client, a thread pool."""

    def close(self) -> None:
        for stop in self.closing:
            stop()

    @property
    def bcrypt_runs(self) -> int:
        return self.counting.calls

    def start(
        self,
        user: str | None,
        password: str | None = None,
        real_ip: str | None = None,
        query: str = "",
        headers: dict[bytes, list[bytes]] | None = None,
        scope: str = "public/hello:pull",
    ) -> Deferred[Any]:
        """A GET of a token for ``scope`` with Basic credentials, not yet answered."""
        headers = {**(headers or {}), **basic_auth(user, password)}
        if real_ip is not None:
            headers[b"X-Real-IP"] = [real_ip.encode()]
        url = f"http://tokend/v2/token?service={SERVICE}&scope=repository:{scope}{query}"
        return self.http.get(url, headers=headers)

    def start_post(
        self,
        form: dict[str, str] | list[tuple[str, str]],
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> Deferred[Any]:
        """A POST of ``form`` to the token endpoint, not yet answered."""
        headers = {b"Content-Type": [b"application/x-www-form-urlencoded"], **(headers or {})}
        return self.http.post(
            "http://tokend/v2/token", data=urlencode(form).encode(), headers=headers
        )

    def finish(self, request: Deferred[Any]) -> Response:
        """The answer to a request started on a ``task.Clock``; always JSON."""
        self.http.flush()
        response = settled(request)
        body = settled(self.http.content(response))
        headers = dict(response.headers.getAllRawHeaders())
        assert headers[b"Content-Type"] == [b"application/json"], body
        return response.code, headers, json.loads(body)

    async def answer(self, request: Deferred[Any]) -> Response:
        """The answer to a request started on the real reactor (a directory answers there):
        StubTreq moves bytes only when flushed."""
        response = await self._flushed(request)
        body = await self._flushed(self.http.content(response))
        return response.code, dict(response.headers.getAllRawHeaders()), json.loads(body)

    async def _flushed(self, waiting: Deferred[Any]) -> Any:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        done: list[Any] = []
        waiting.addBoth(lambda result: done.append(result) or result)
        for _ in range(2000):
            self.http.flush()
            if done:
                break
            await deferLater(reactor, 0.005, lambda: None)
        return await waiting

    def get(self, user: str | None, password: str | None = None, **kwargs: Any) -> Response:
        return self.finish(self.start(user, password, **kwargs))

    def post(self, user: str, password: str, real_ip: str | None = None) -> Response:
        """A password grant from a containerd-style client."""
        form = {
            "grant_type": "password",
            "username": user,
            "password": password,
            "service": SERVICE,
            "client_id": "containerd-client",
        }
        headers = None if real_ip is None else {b"X-Real-IP": [real_ip.encode()]}
        return self.finish(self.start_post(form, headers))

    def login(self, user: str, password: str, **kwargs: Any) -> dict[str, Any]:
        """A successful login's verified claims."""
        code, _, body = self.get(user, password, **kwargs)
        assert code == 200, body
        _, claims = verify_jwt(body["token"], self.certificate)
        assert claims["sub"] == user
        return claims

    def reload(self, users: dict[str, tuple[str, dict[str, list[str]]]]) -> None:
        from tokend.policy.files import load_policy

        write_policy(self.config, users, self.anonymous)
        self.holder.replace(load_policy(self.config).policy, self.clock.seconds())

    def call(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        password: str | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
        **kwargs: Any,
    ) -> Response:
        """Any request at all; the answer is JSON."""
        all_headers = {**(headers or {}), **basic_auth(user, password)}
        return self.finish(
            self.http.request(method, "http://tokend" + path, headers=all_headers, **kwargs)
        )

    def token(self, params: list[tuple[str, str]], **kwargs: Any) -> tuple[dict[str, Any], Any]:
        """A token's verified claims and the whole answer."""
        code, headers, body = self.call("GET", "/v2/token?" + urlencode(params), **kwargs)
        assert code == 200, body
        assert headers[b"Cache-Control"] == [b"no-store"]
        _, claims = verify_jwt(body["token"], self.certificate)
        return claims, body

    def access(self, *scopes: str, **kwargs: Any) -> list[dict[str, Any]]:
        """What a token for ``scopes`` grants."""
        params = [("service", SERVICE)] + [("scope", s) for s in scopes]
        claims, _ = self.token(params, **kwargs)
        return list(claims["access"])


def basic_auth(user: str | None, password: str | None) -> dict[bytes, list[bytes]]:
    """The Authorization header for ``user`` (none for None: anonymous)."""
    if user is None:
        return {}
    raw = f"{user}:{password}".encode()
    return {b"Authorization": [b"Basic " + base64.b64encode(raw)]}


def throttle(per_account: int = 10, per_address: int = 30, **kwargs: Any) -> LoginThrottle:
    from tokend.login.throttle import LoginThrottle

    return LoginThrottle(per_account=per_account, per_address=per_address, window=300, **kwargs)


def assert_throttled(response: Response, retry_after: int, reason: str) -> None:
    code, headers, body = response
    assert code == 429, body
    assert headers[b"Retry-After"] == [str(retry_after).encode()]
    assert b"WWW-Authenticate" not in headers
    error = body["errors"][0]
    assert error["code"] == "TOOMANYREQUESTS"
    assert f"too many failed logins for this {reason}" in error["message"]


def offline_login(realm: Realm, user: str = "bar") -> dict[str, Any]:
    """A login that asks for a refresh token; the password is the user name in USERS."""
    code, _, body = realm.get(user, user, query="&client_id=docker&offline_token=true")
    assert code == 200, body
    return body


def post(realm: Realm, form: dict[str, str] | list[tuple[str, str]]) -> Response:
    return realm.finish(realm.start_post(form))


def refresh(realm: Realm, token: str, *scopes: str, client_id: str = "docker") -> Response:
    """A refresh_token grant for ``scopes``."""
    form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("service", SERVICE),
        ("client_id", client_id),
    ]
    return post(realm, form + [("scope", scope) for scope in scopes])
