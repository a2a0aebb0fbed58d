"""Prometheus metrics: what operators watch next to the registry's own.

Two kinds. Events the realm sees (a token answered, a password checked, a cache lookup, a
throttled attempt) are counted by :class:`Metrics` as they happen, with label children bound
once so the request path pays a dictionary lookup and a lock. State that already exists
(the policy holder, the credential cache, the bcrypt queue, the certificate) is read by
:class:`ServiceState` only when Prometheus scrapes, so those modules know nothing of metrics.

Everything lives on a ``CollectorRegistry`` that ``makeService`` creates and injects: no
module-level registry, so tests read their own and two services never collide. Labels are
bounded sets; never an account, an address or a repository name.

With ``--workers N`` each worker keeps its own registry and the parent serves ``/metrics``:
per scrape it asks every worker for its exposition (:class:`WorkerScrapes`) and answers with
the union (:func:`union_of`), each worker's series labelled ``worker="<index>"``, plus its own
process metrics and :class:`SupervisorState`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol, cast

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.samples import Sample
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from tokend.policy.holder import PolicyHolder
from tokend.signing.keys import SigningKey

GRANTS = ("anonymous", "password", "refresh_token")
OUTCOMES = ("issued", "unauthorized", "bad_request", "throttled", "overloaded", "unavailable")
THROTTLED_BY = ("account", "address")
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


NO_METRICS: RequestMetrics = _NoMetrics()


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


class Queue(Protocol):
    """The bcrypt queue as :class:`tokend.threads.BoundedWorkers` shows it."""

    @property
    def waiting(self) -> int: ...

    @property
    def running(self) -> int: ...

    queue: int


@dataclass(frozen=True, slots=True, eq=False)
class ServiceState:
    """Gauges and counters read from the service's own state at scrape time.

    Keeps the request path free of them: the holder already counts reloads, the cache knows
    its size and the queue its depth. A scrape may run on a thread other than the reactor's;
    it only reads integers and lengths.
    """

    holder: PolicyHolder
    credential_cache: Sized | None = None
    queue: Queue | None = None
    certificate_expiry: float | None = None

    def collect(self) -> Iterator[Metric]:
        status = self.holder.status()
        policy = self.holder.current
        yield _gauge(
            "tokend_policy_generation",
            "Generation of the policy serving; each good reload adds one.",
            status.generation,
        )
        reloads = CounterMetricFamily(
            "tokend_policy_reloads",
            "Policy reloads since start, by result (a failed one keeps the policy serving).",
            labels=["result"],
        )
        reloads.add_metric(["ok"], status.reloads_ok)
        reloads.add_metric(["failed"], status.reloads_failed)
        yield reloads
        yield _gauge(
            "tokend_policy_last_reload_success_timestamp_seconds",
            "When the policy files last loaded (start-up counts), Unix time.",
            status.loaded_at,
        )
        yield _gauge(
            "tokend_policy_files_valid",
            "1 when the policy files on disk loaded at the last attempt, 0 when the last "
            "good policy serves in spite of them.",
            1 if status.files_valid else 0,
        )
        yield _gauge("tokend_policy_users", "Users in the policy serving.", len(policy.users))
        yield _gauge("tokend_policy_groups", "Groups in the policy serving.", len(policy.groups))
        if self.credential_cache is not None:
            yield _gauge(
                "tokend_credential_cache_entries",
                "Passwords remembered by the credential cache.",
                len(self.credential_cache),
            )
        if self.queue is not None:
            yield _gauge(
                "tokend_password_check_queue_depth",
                "Password checks waiting for a bcrypt thread.",
                self.queue.waiting,
            )
            yield _gauge(
                "tokend_password_check_queue_limit",
                "Password checks that may wait (--bcrypt-queue); more get 503.",
                self.queue.queue,
            )
            yield _gauge(
                "tokend_password_checks_running",
                "Password checks running on a bcrypt thread.",
                self.queue.running,
            )
        if self.certificate_expiry is not None:
            yield _gauge(
                "tokend_signing_certificate_expiry_timestamp_seconds",
                "When the signing certificate (the x5c leaf) expires, Unix time.",
                self.certificate_expiry,
            )


class SharedLimits(Protocol):
    """The Redis store (:class:`tokend.login.shared_limits.redis_store.RedisFailures`) as
    metrics see it."""

    @property
    def available(self) -> bool: ...

    @property
    def rejected(self) -> Mapping[str, int]: ...


@dataclass(frozen=True, slots=True, eq=False)
class RedisState:
    """Whether login limits are shared through Redis (``--redis``), read at scrape time; with
    ``--workers N`` the parent's, which talks to Redis for every worker."""

    store: SharedLimits

    def collect(self) -> Iterator[Metric]:
        yield _gauge(
            "tokend_redis_shared_limits",
            "1 while the login limits are shared through Redis (--redis, both connections "
            "up); 0 while each process falls back to its own limits.",
            1 if self.store.available else 0,
        )
        rejected = CounterMetricFamily(
            "tokend_redis_news_rejected",
            "News from Redis (messages on the channel, failures stored) dropped, by reason: "
            "unauthenticated (its MAC does not verify: another signing key, or someone else "
            "writing), stale (its time a minute or more away from ours), unreadable.",
            labels=["reason"],
        )
        for reason, count in sorted(self.store.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def certificate_expiry(key: SigningKey) -> float | None:
    """When the certificate sent as ``x5c`` (its leaf) stops being valid, or None without one."""
    chain: Any = key.header.get("x5c")
    if not chain:
        return None
    leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
    return leaf.not_valid_after_utc.timestamp()


def process_collectors(registry: CollectorRegistry) -> None:
    """The client library's own process, Python and garbage-collector metrics."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class _Exposition(Resource):
    """``GET /metrics``: the registry in the format the scraper asks for (Prometheus text, or
    OpenMetrics), encoded by prometheus_client on the reactor thread."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Any) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        body: bytes = encoder(self._registry)
        return body


def metrics_resource(registry: CollectorRegistry) -> Resource:
    """The metrics listener's resource tree: ``/metrics`` and nothing else.

    Not ``prometheus_client.twisted.MetricsResource``: it encodes on the reactor's thread pool
    (WSGI), and under load that thread's contention for the GIL with the reactor thread cost
    10-20 % of anonymous throughput with a scrape per second (bench/metrics_cost.py). One
    exposition takes a millisecond or two of the reactor's time instead.
    """
    root = _Root()
    root.putChild(b"metrics", cast(IResource, _Exposition(registry)))
    return root


class _Root(Resource):
    def getChild(self, path: bytes, request: Any) -> Any:
        return notFound()


class WorkerScrapes(Protocol):
    """The parent's side of ``--workers N`` as the metrics listener sees it."""

    @property
    def count(self) -> int: ...

    @property
    def serving(self) -> int: ...

    @property
    def restarts(self) -> dict[int, int]: ...

    @property
    def scrape_failures(self) -> dict[int, int]: ...

    def scrape(self) -> Deferred[list[tuple[int, bytes]]]:
        """Each serving worker's text exposition, by worker index; those that did not answer
        in time are left out (and counted)."""
        ...

    def unreadable(self, worker: int) -> None:
        """Count a worker's answer that could not be parsed as a failed scrape."""
        ...


@dataclass(frozen=True, slots=True, eq=False)
class SupervisorState:
    """The parent's own gauges and counters with ``--workers N``, read at scrape time."""

    workers: WorkerScrapes

    def collect(self) -> Iterator[Metric]:
        yield _gauge(
            "tokend_workers", "Worker processes configured (--workers).", self.workers.count
        )
        yield _gauge(
            "tokend_workers_running",
            "Worker processes started and serving now.",
            self.workers.serving,
        )
        restarts = CounterMetricFamily(
            "tokend_worker_restarts",
            "Workers started again after one ended, by worker index; the new worker's own "
            "counters start from 0.",
            labels=["worker"],
        )
        for index, count in sorted(self.workers.restarts.items()):
            restarts.add_metric([str(index)], count)
        yield restarts
        failures = CounterMetricFamily(
            "tokend_worker_scrape_failures",
            "Scrapes a worker did not answer in time (or answered unreadably), by worker "
            "index; its series were left out of that scrape.",
            labels=["worker"],
        )
        for index, count in sorted(self.workers.scrape_failures.items()):
            failures.add_metric([str(index)], count)
        yield failures


WORKER_LABEL = "worker"


class _Union:
    """A collector yielding families already gathered, once each."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def union_of(
    parent: CollectorRegistry,
    answers: Sequence[tuple[int, bytes]],
    unreadable: Callable[[int], None] = lambda worker: None,
) -> CollectorRegistry:
    """One registry holding the parent's families and every worker's, each worker's samples
    labelled ``worker="<index>"``, merged by family so each family's HELP and TYPE appear once.

    A worker's answer that does not parse is left out and reported to ``unreadable``. The text
    format carries a counter's ``_created`` samples as a gauge family of their own; they are
    put back into their counter (or histogram) so the OpenMetrics encoder writes them right.
    """
    families: dict[str, Metric] = {}
    for family in parent.collect():
        _merge(families, family, family.samples)
    for index, body in answers:
        try:
            parsed = list(text_string_to_metric_families(body.decode("utf-8")))
        except (ValueError, UnicodeDecodeError, IndexError, KeyError):
            unreadable(index)
            continue
        label = str(index)
        for family in parsed:
            samples = [
                Sample(s.name, {**s.labels, WORKER_LABEL: label}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            ]
            _merge(families, family, samples)
    for family in families.values():
        if family.type in ("counter", "histogram", "summary"):
            family.samples[:] = _grouped(family.samples)
    union = CollectorRegistry(auto_describe=False)
    union.register(_Union(families.values()))
    return union


def _grouped(samples: list[Sample]) -> list[Sample]:
    """One label set's samples together (``_total`` then ``_created``; buckets, ``_count``,
    ``_sum``, ``_created``), as OpenMetrics demands, in the order the label sets came."""
    groups: dict[tuple[tuple[str, str], ...], list[Sample]] = {}
    for sample in samples:
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("le", "quantile")))
        groups.setdefault(key, []).append(sample)
    return [sample for group in groups.values() for sample in group]


def _merge(families: dict[str, Metric], family: Metric, samples: list[Sample]) -> None:
    name = family.name
    if family.type == "gauge" and name.endswith("_created"):
        base = families.get(name[: -len("_created")])
        if base is not None and base.type in ("counter", "histogram", "summary"):
            base.samples.extend(samples)
            return
    merged = families.get(name)
    if merged is None:
        merged = Metric(name, family.documentation, family.type, family.unit)
        families[name] = merged
    merged.samples.extend(samples)


class _WorkersExposition(Resource):
    """``GET /metrics`` in the parent of ``--workers N``: the union of every worker's metrics
    and its own, gathered per scrape and encoded by prometheus_client."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, workers: WorkerScrapes) -> None:
        super().__init__()
        self._registry = registry
        self._workers = workers

    def render_GET(self, request: Any) -> Any:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        finished = request.notifyFinish()
        finished.addErrback(lambda reason: None)

        def answer(answers: list[tuple[int, bytes]]) -> None:
            if finished.called:
                return  # the scraper gave up
            union = union_of(self._registry, answers, self._workers.unreadable)
            request.setHeader(b"Content-Type", content_type.encode("ascii"))
            request.write(encoder(union))
            request.finish()

        def failed(reason: Failure) -> None:
            if not finished.called:
                request.setResponseCode(500)
                request.finish()

        self._workers.scrape().addCallback(answer).addErrback(failed)
        return NOT_DONE_YET


def workers_metrics_resource(registry: CollectorRegistry, workers: WorkerScrapes) -> Resource:
    """The parent's metrics listener with ``--workers N``: ``/metrics`` and nothing else."""
    root = _Root()
    root.putChild(b"metrics", cast(IResource, _WorkersExposition(registry, workers)))
    return root
