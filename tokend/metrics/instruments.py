"""Prometheus instruments: what operators watch next to the registry's own.

Events the realm sees (a token answered, a password checked, a cache lookup, a throttled
attempt) are counted by :class:`Metrics` as they happen, with label children bound once so the
request path pays a dictionary lookup and a lock. The core (login, policy, signing) may import
this module: it holds no collector and no exposition (:mod:`tokend.metrics.collectors`,
:mod:`tokend.metrics.exposition`).

Everything lives on a ``CollectorRegistry`` that ``makeService`` creates and injects: no
module-level registry, so tests read their own and two services never collide. Labels are
bounded sets; never an account, an address or a repository name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

GRANTS = ("anonymous", "password", "refresh_token", "token_exchange")
OUTCOMES = ("issued", "unauthorized", "bad_request", "throttled", "overloaded", "unavailable")
THROTTLED_BY = ("account", "address")
KEY_FETCHES = ("fetched", "failed")
"""Outcomes of fetching a trust's issuer keys (discovery and key set, or its jwks_file)."""
TOKEN_LOGIN_RESULTS = (
    "accepted",
    "malformed",
    "unknown",
    "wrong_owner",
    "expired",
    "revoked",
    "owner_gone",
    "tokens_valid_after",
    "unavailable",
)
"""How a login with an access token ended (#26): accepted, or why it was refused (a secret of
the wrong form, no such token, another owner's token, expired, revoked, its owner gone, its
owner's tokens_valid_after past its creation, the database unavailable)."""
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""An anonymous token takes about a millisecond, a bcrypt login tens to hundreds."""
CHECK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RequestMetrics(Protocol):
    """What the realm reports as it answers; :data:`NO_METRICS` when metrics are off."""

    def now(self) -> float: ...

    def answered(self, grant: str, outcome: str, started: float) -> None: ...

    def password_checked(self, accepted: bool, started: float) -> None: ...

    def cache_lookup(self, hit: bool) -> None: ...

    def throttled(self, by: str) -> None: ...

    def key_fetched(self, trust: str, outcome: str) -> None: ...


class _NoMetrics:
    """Metrics off: every report is dropped, and no clock is read."""

    def now(self) -> float:
        return 0.0

    def answered(self, grant: str, outcome: str, started: float) -> None:
        pass

    def password_checked(self, accepted: bool, started: float) -> None:
        pass

    def cache_lookup(self, hit: bool) -> None:
        pass

    def throttled(self, by: str) -> None:
        pass

    def key_fetched(self, trust: str, outcome: str) -> None:
        pass


NO_METRICS: RequestMetrics = _NoMetrics()


class AccessTokenMetrics(Protocol):
    """What the access token API reports (#26); :data:`NO_TOKEN_METRICS` when metrics are off.
    Logins with a token are the door's to report (``token_login``)."""

    def token_created(self) -> None: ...

    def token_revoked(self) -> None: ...


class _NoTokenMetrics:
    def token_created(self) -> None:
        pass

    def token_revoked(self) -> None:
        pass

    def token_login(self, result: str) -> None:
        pass


NO_TOKEN_METRICS = _NoTokenMetrics()


def tokend_version() -> str:
    try:
        return version("tokend")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """The event counters and histograms, registered on ``registry``.

    ``timer`` is a monotonic clock in seconds (durations only; never compared with wall time).
    A label value outside the known sets is a programming error and raises ``KeyError``.
    """

    def __init__(
        self, registry: CollectorRegistry, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        self.registry = registry
        self.now = timer
        requests = Counter(
            "tokend_token_requests",
            "Token requests answered by the realm, by grant asked for and outcome.",
            ["grant", "outcome"],
            registry=registry,
        )
        duration = Histogram(
            "tokend_request_duration_seconds",
            "Time from reading a token request to its answer, by grant.",
            ["grant"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        checks = Counter(
            "tokend_password_checks",
            "Password checks actually run (bcrypt or the directory), by result.",
            ["result"],
            registry=registry,
        )
        self._check_seconds = Histogram(
            "tokend_password_check_seconds",
            "Time a password check took, waiting for a thread included.",
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self._cache_hits = Counter(
            "tokend_credential_cache_hits",
            "Logins answered from the credential cache, without bcrypt.",
            registry=registry,
        )
        self._cache_misses = Counter(
            "tokend_credential_cache_misses",
            "Logins the credential cache could not answer.",
            registry=registry,
        )
        throttled = Counter(
            "tokend_throttled",
            "Login attempts refused by the failure throttle, by what reached its limit.",
            ["by"],
            registry=registry,
        )
        self._key_fetches = Counter(
            "tokend_federation_key_fetches",
            "Fetches of a trust's issuer keys (issuers.json), by trust and outcome.",
            ["trust", "outcome"],
            registry=registry,
        )
        self._tokens_created = Counter(
            "tokend_access_tokens_created",
            "Access tokens created through the HTTP API.",
            registry=registry,
        )
        self._tokens_revoked = Counter(
            "tokend_access_tokens_revoked",
            "Access tokens revoked through the HTTP API (a token already revoked not again).",
            registry=registry,
        )
        token_logins = Counter(
            "tokend_access_token_logins",
            "Logins with an access token, by result: accepted or the reason it was refused.",
            ["result"],
            registry=registry,
        )
        self._token_logins = {result: token_logins.labels(result) for result in TOKEN_LOGIN_RESULTS}
        Info("tokend_build", "The running tokend.", registry=registry).info(
            {"version": tokend_version()}
        )
        self._requests = {
            (grant, outcome): requests.labels(grant, outcome)
            for grant in GRANTS
            for outcome in OUTCOMES
        }
        self._durations = {grant: duration.labels(grant) for grant in GRANTS}
        self._checks = {True: checks.labels("accepted"), False: checks.labels("rejected")}
        self._throttled = {by: throttled.labels(by) for by in THROTTLED_BY}

    def answered(self, grant: str, outcome: str, started: float) -> None:
        """One realm answer; ``started`` is :meth:`now` when the request was read."""
        self._requests[grant, outcome].inc()
        self._durations[grant].observe(self.now() - started)

    def password_checked(self, accepted: bool, started: float) -> None:
        self._checks[accepted].inc()
        self._check_seconds.observe(self.now() - started)

    def cache_lookup(self, hit: bool) -> None:
        (self._cache_hits if hit else self._cache_misses).inc()

    def throttled(self, by: str) -> None:
        self._throttled[by].inc()

    def key_fetched(self, trust: str, outcome: str) -> None:
        """A trust's issuer keys fetched or not; the trust names come from issuers.json, a
        bounded set the operator writes (never from a token)."""
        if outcome not in KEY_FETCHES:
            raise KeyError(outcome)
        self._key_fetches.labels(trust, outcome).inc()

    def token_created(self) -> None:
        self._tokens_created.inc()

    def token_revoked(self) -> None:
        self._tokens_revoked.inc()

    def token_login(self, result: str) -> None:
        """:class:`tokend.login.access_tokens.AccessTokenEvents`: one login with an access token,
        ``result`` one of :data:`TOKEN_LOGIN_RESULTS`."""
        self._token_logins[result].inc()
