"""Collectors that read state at scrape time: the policy holder, the credential cache, the
bcrypt queue, the signing keys and their certificates, Redis, the supervisor's workers, the
process itself. Those modules know nothing of metrics; the collectors are registered by
``makeService`` (edges only).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import Deferred

from tokend.policy.holder import PolicyHolder
from tokend.signing.holder import KeyHolder
from tokend.signing.keys import SigningKey


class Queue(Protocol):
    """The bcrypt queue as :class:`tokend.threads.BoundedThreadQueue` shows it."""

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
    keys: KeyHolder | None = None
    """The signing keys in force: certificate expiry figures and key reloads."""
    wall: Callable[[], float] = time.time

    def collect(self) -> Iterator[Metric]:
        status = self.holder.status()
        policy = self.holder.current
        yield _gauge(
            "tokend_policy_generation",
            "Generation of the policy serving; each good reload adds one.",
            status.generation,
        )
        yield _reloads(
            "tokend_policy_reloads",
            "Policy reloads since start, by result (a failed one keeps the policy serving).",
            status.reloads_ok,
            status.reloads_failed,
        )
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
        if self.keys is not None:
            yield from signing_state(self.keys, self.wall())


def signing_state(holder: KeyHolder, now: float) -> Iterator[Metric]:
    """The key set in force as a scrape finds it: every certificate's remaining life, the
    current leaf's end, and how the key files' reloads went."""
    keys = holder.current
    expiry = certificate_expiry(keys.signing)
    if expiry is not None:
        yield _gauge(
            "tokend_signing_certificate_expiry_timestamp_seconds",
            "When the signing certificate (the x5c leaf) expires, Unix time.",
            expiry,
        )
    remaining = GaugeMetricFamily(
        "tokend_signing_certificate_expires_in_seconds",
        "Seconds until each certificate of each trusted key's chain expires (position 0: the "
        "leaf); negative once expired.",
        labels=["key", "state", "position", "subject"],
    )
    for key in keys.keys:
        for position, (subject, not_after) in enumerate(key.expiries()):
            remaining.add_metric([key.name, key.state, str(position), subject], not_after - now)
    yield remaining
    yield _reloads(
        "tokend_signing_keys_reloads",
        "Signing key reloads since start, by result (a failed one keeps the keys in force).",
        holder.reloads_ok,
        holder.reloads_failed,
    )
    yield _gauge(
        "tokend_signing_keys_files_valid",
        "1 when the key files on disk loaded at the last attempt, 0 when the last good keys "
        "sign in spite of them.",
        1 if holder.files_valid else 0,
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


def _reloads(name: str, documentation: str, ok: int, failed: int) -> CounterMetricFamily:
    """A reload counter by result: the policy's and the signing keys' read the same way."""
    reloads = CounterMetricFamily(name, documentation, labels=["result"])
    reloads.add_metric(["ok"], ok)
    reloads.add_metric(["failed"], failed)
    return reloads


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
