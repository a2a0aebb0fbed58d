"""Metrics read directly from the injected registry: counters, scrape-time state, options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry, generate_latest
from support import (
    load_certificate,
    new_private_key,
    parsed_options,
    parsed_settings,
    self_signed,
    settled,
    write_key_pair,
    write_policy,
)
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.python import usage

from tokend.login.credential_cache import CredentialCache
from tokend.metrics.collectors import ServiceState, certificate_expiry, process_collectors
from tokend.metrics.exposition import metrics_resource
from tokend.metrics.instruments import (
    GRANTS,
    NO_METRICS,
    NO_TOKEN_METRICS,
    OUTCOMES,
    TOKEN_LOGIN_RESULTS,
    Metrics,
    tokend_version,
)
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.signing.holder import KeyHolder
from tokend.signing.key_set import CURRENT, PREVIOUS, KeySet, SetKey, single_key_set
from tokend.signing.keys import load_signing_key
from tokend.threads import BoundedThreadQueue


class Timer:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def timed() -> tuple[CollectorRegistry, Metrics, Timer]:
    registry, timer = CollectorRegistry(), Timer()
    return registry, Metrics(registry, timer), timer


def test_every_grant_and_outcome_is_exported_from_the_start(
    timed: tuple[CollectorRegistry, Metrics, Timer],
) -> None:
    registry, _, _ = timed
    for grant in GRANTS:
        assert value(registry, "tokend_request_duration_seconds_count", grant=grant) == 0
        for outcome in OUTCOMES:
            assert value(registry, "tokend_token_requests_total", grant=grant, outcome=outcome) == 0
    for result in ("accepted", "rejected"):
        assert value(registry, "tokend_password_checks_total", result=result) == 0
    for by in ("account", "address"):
        assert value(registry, "tokend_throttled_total", by=by) == 0
    assert value(registry, "tokend_build_info", version=tokend_version()) == 1
    assert tokend_version() not in ("", "unknown")


def test_an_answer_counts_once_under_its_grant_and_outcome_with_its_duration(
    timed: tuple[CollectorRegistry, Metrics, Timer],
) -> None:
    registry, metrics, timer = timed
    started = metrics.now()
    timer.now += 0.003
    metrics.answered("password", "unauthorized", started)
    assert value(registry, "tokend_token_requests_total", grant="password", outcome="unauthorized")
    assert value(registry, "tokend_token_requests_total", grant="password", outcome="issued") == 0
    assert value(registry, "tokend_request_duration_seconds_count", grant="password") == 1
    assert value(registry, "tokend_request_duration_seconds_sum", grant="password") == (
        pytest.approx(0.003)
    )
    bucket = "tokend_request_duration_seconds_bucket"
    assert value(registry, bucket, grant="password", le="0.0025") == 0
    assert value(registry, bucket, grant="password", le="0.005") == 1
    assert value(registry, "tokend_request_duration_seconds_count", grant="anonymous") == 0


def test_unknown_labels_are_refused_rather_than_exported(
    timed: tuple[CollectorRegistry, Metrics, Timer],
) -> None:
    _, metrics, _ = timed
    with pytest.raises(KeyError):
        metrics.answered("alice", "issued", 0.0)  # an account is never a label
    with pytest.raises(KeyError):
        metrics.throttled("10.0.0.1")


def test_password_checks_cache_lookups_and_throttling_count(
    timed: tuple[CollectorRegistry, Metrics, Timer],
) -> None:
    registry, metrics, timer = timed
    started = metrics.now()
    timer.now += 0.2
    metrics.password_checked(True, started)
    metrics.password_checked(False, started)
    metrics.password_checked(False, started)
    metrics.cache_lookup(True)
    metrics.cache_lookup(False)
    metrics.cache_lookup(False)
    metrics.throttled("address")
    assert value(registry, "tokend_password_checks_total", result="accepted") == 1
    assert value(registry, "tokend_password_checks_total", result="rejected") == 2
    assert value(registry, "tokend_password_check_seconds_count") == 3
    assert value(registry, "tokend_password_check_seconds_sum") == pytest.approx(0.6)
    assert value(registry, "tokend_credential_cache_hits_total") == 1
    assert value(registry, "tokend_credential_cache_misses_total") == 2
    assert value(registry, "tokend_throttled_total", by="address") == 1
    assert value(registry, "tokend_throttled_total", by="account") == 0


def test_no_metrics_accepts_every_report_and_keeps_nothing() -> None:
    NO_METRICS.answered("anonymous", "issued", NO_METRICS.now())
    NO_METRICS.password_checked(True, 0.0)
    NO_METRICS.cache_lookup(True)
    NO_METRICS.throttled("account")


def test_access_tokens_made_revoked_and_logged_in_with_are_counted_by_bounded_results(
    timed: tuple[CollectorRegistry, Metrics, Timer],
) -> None:
    registry, metrics, _ = timed
    for result in TOKEN_LOGIN_RESULTS:
        assert value(registry, "tokend_access_token_logins_total", result=result) == 0
    assert value(registry, "tokend_access_tokens_created_total") == 0
    metrics.token_created()
    metrics.token_created()
    metrics.token_revoked()
    metrics.token_login("accepted")
    metrics.token_login("revoked")
    metrics.token_login("revoked")
    assert value(registry, "tokend_access_tokens_created_total") == 2
    assert value(registry, "tokend_access_tokens_revoked_total") == 1
    assert value(registry, "tokend_access_token_logins_total", result="accepted") == 1
    assert value(registry, "tokend_access_token_logins_total", result="revoked") == 2
    assert value(registry, "tokend_access_token_logins_total", result="expired") == 0
    with pytest.raises(KeyError):
        metrics.token_login("tkd_at_secret")  # never a secret, a name or an id as a label
    NO_TOKEN_METRICS.token_created()
    NO_TOKEN_METRICS.token_revoked()
    NO_TOKEN_METRICS.token_login("accepted")


def write_groups(config: Path) -> None:
    users = json.loads((config / "users.json").read_text())
    users["a"]["groups"] = ["staff"]
    (config / "users.json").write_text(json.dumps(users))
    (config / "groups.json").write_text(json.dumps({"staff": {"repositories": {"*": ["pull"]}}}))


class Stuck:
    """Workers whose calls never finish: the bounded queue fills up."""

    def run(self, function: Any, *args: Any) -> Deferred[Any]:
        return Deferred()


def test_service_state_is_read_from_the_holder_cache_and_queue_at_scrape_time(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config"
    write_policy(config, {"a": ("pw", {"*": ["pull"]}), "b": ("pw", {})})
    write_groups(config)
    holder = PolicyHolder(load_policy(config).policy, 1000.0)
    cache = CredentialCache(ttl=60)
    queue = BoundedThreadQueue(Stuck(), limit=1, queue=3)
    registry = CollectorRegistry()
    registry.register(ServiceState(holder, credential_cache=cache, queue=queue))

    assert value(registry, "tokend_policy_generation") == 1
    assert value(registry, "tokend_policy_users") == 2
    assert value(registry, "tokend_policy_groups") == 1
    assert value(registry, "tokend_policy_files_valid") == 1
    assert value(registry, "tokend_policy_last_reload_success_timestamp_seconds") == 1000
    assert value(registry, "tokend_policy_reloads_total", result="ok") == 0
    assert value(registry, "tokend_policy_reloads_total", result="failed") == 0
    assert value(registry, "tokend_credential_cache_entries") == 0
    assert value(registry, "tokend_password_check_queue_depth") == 0
    assert value(registry, "tokend_password_check_queue_limit") == 3
    assert value(registry, "tokend_signing_certificate_expiry_timestamp_seconds") is None

    holder.record_failure("users.json: broken", 1010.0)
    assert value(registry, "tokend_policy_files_valid") == 0
    assert value(registry, "tokend_policy_reloads_total", result="failed") == 1
    assert value(registry, "tokend_policy_last_reload_success_timestamp_seconds") == 1000
    write_policy(config, {"a": ("pw", {"*": ["pull"]})})
    (config / "groups.json").unlink()
    holder.replace(load_policy(config).policy, 1020.0)
    assert value(registry, "tokend_policy_generation") == 2
    assert value(registry, "tokend_policy_files_valid") == 1
    assert value(registry, "tokend_policy_reloads_total", result="ok") == 1
    assert value(registry, "tokend_policy_last_reload_success_timestamp_seconds") == 1020
    assert value(registry, "tokend_policy_users") == 1
    assert value(registry, "tokend_policy_groups") == 0

    cache.add("a", b"pw", b"hash", 1020.0)
    assert value(registry, "tokend_credential_cache_entries") == 1
    for _ in range(3):
        queue.run(print)
    assert value(registry, "tokend_password_checks_running") == 1
    assert value(registry, "tokend_password_check_queue_depth") == 2


def test_certificate_expiry_is_the_x5c_leafs_not_after(tmp_path: Path) -> None:
    key_path, cert_path = write_key_pair(tmp_path)
    expected = load_certificate(cert_path).not_valid_after_utc.timestamp()
    assert certificate_expiry(load_signing_key(key_path, cert_path)) == expected
    assert certificate_expiry(load_signing_key(key_path, None)) is None
    config = tmp_path / "config"
    write_policy(config, {})
    registry = CollectorRegistry()
    holder = PolicyHolder(load_policy(config).policy, 0.0)
    keys = KeyHolder(single_key_set(key_path, cert_path), 0.0)
    registry.register(ServiceState(holder, keys=keys))
    assert value(registry, "tokend_signing_certificate_expiry_timestamp_seconds") == expected


def test_every_certificate_of_every_trusted_key_counts_down_and_reloads_are_counted(
    tmp_path: Path,
) -> None:
    """The current key's chain (leaf and CA) and a previous key's leaf, read at scrape time
    from the set in force: a swap changes the series, a failed reload shows."""
    key_a, cert_a = write_key_pair(tmp_path, "p256")
    key_b, cert_b = write_key_pair(tmp_path, "ed25519")
    ca = self_signed(new_private_key("p256"), days=400)
    chain_a = tmp_path / "chain-a.crt"
    chain_a.write_bytes(cert_a.read_bytes() + ca.public_bytes(serialization.Encoding.PEM))
    a = single_key_set(key_a, chain_a).current
    b = single_key_set(key_b, cert_b).current
    previous_b = SetKey("b", PREVIOUS, b.signing, key_b, cert_b)
    current_a = SetKey("a", CURRENT, a.signing, key_a, chain_a)
    keys = KeyHolder(KeySet(current_a, (previous_b,)), 0.0)
    now = 1_900_000_000.0
    config = tmp_path / "config"
    write_policy(config, {})
    registry = CollectorRegistry()
    registry.register(
        ServiceState(PolicyHolder(load_policy(config).policy, 0.0), keys=keys, wall=lambda: now)
    )
    name = "tokend_signing_certificate_expires_in_seconds"
    subject = "CN=tokend test"
    leaf_a = load_certificate(cert_a).not_valid_after_utc.timestamp()
    leaf_b = load_certificate(cert_b).not_valid_after_utc.timestamp()
    labels = {"key": "a", "state": "current", "subject": subject}
    assert value(registry, name, position="0", **labels) == leaf_a - now
    assert value(registry, name, position="1", **labels) == (
        ca.not_valid_after_utc.timestamp() - now
    )
    assert value(registry, name, key="b", state="previous", position="0", subject=subject) == (
        leaf_b - now
    )
    assert value(registry, "tokend_signing_certificate_expiry_timestamp_seconds") == leaf_a
    assert value(registry, "tokend_signing_keys_files_valid") == 1

    keys.record_failure("certificate x.crt does not match the key", 5.0)
    assert value(registry, "tokend_signing_keys_files_valid") == 0
    assert value(registry, "tokend_signing_keys_reloads_total", result="failed") == 1
    keys.replace(KeySet(current_a), 6.0)
    assert value(registry, name, key="b", state="previous", position="0", subject=subject) is None
    assert value(registry, "tokend_signing_keys_files_valid") == 1
    assert value(registry, "tokend_signing_keys_reloads_total", result="ok") == 1


def test_process_metrics_come_from_the_client_library() -> None:
    registry = CollectorRegistry()
    process_collectors(registry)
    text = generate_latest(registry).decode()
    assert "process_resident_memory_bytes" in text
    assert "python_info" in text


def test_metrics_is_off_by_default_and_takes_an_endpoint(tmp_path: Path) -> None:
    assert parsed_settings(tmp_path).metrics is None
    settings = parsed_settings(tmp_path, "--metrics", "tcp:9102:interface=127.0.0.1")
    assert settings.metrics == "tcp:9102:interface=127.0.0.1"
    (tmp_path / "run").mkdir()
    settings = parsed_settings(tmp_path, "--metrics", f"unix:{tmp_path}/run/metrics.sock")
    assert settings.metrics == f"unix:{tmp_path}/run/metrics.sock:mode=660:lockfile=1"
    environ = {"TOKEND_METRICS": "tcp:9103"}
    assert parsed_settings(tmp_path, environ=environ).metrics == "tcp:9103"


def test_a_bad_metrics_endpoint_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="--metrics 'http:9102' is not an endpoint"):
        parsed_options(tmp_path, "--metrics", "http:9102")
    with pytest.raises(usage.UsageError, match="TOKEND_METRICS 'tcp:x' is not an endpoint"):
        parsed_options(tmp_path, environ={"TOKEND_METRICS": "tcp:x"})


def test_metrics_are_accepted_with_several_worker_processes(tmp_path: Path) -> None:
    """The parent serves the union of the workers' metrics (test_workers_metrics.py)."""
    assert parsed_settings(tmp_path, "--metrics", "tcp:9102", "--workers", "2").metrics
    assert parsed_settings(tmp_path, "--metrics", "tcp:9102", "--workers", "1").metrics


def test_log_format_is_text_or_json(tmp_path: Path) -> None:
    assert parsed_settings(tmp_path).logs.format == "text"
    assert parsed_settings(tmp_path, "--log-format", "JSON").logs.format == "json"
    environ = {"TOKEND_LOG_FORMAT": "json"}
    assert parsed_settings(tmp_path, environ=environ).logs.format == "json"
    with pytest.raises(usage.UsageError, match="--log-format must be text or json"):
        parsed_options(tmp_path, "--log-format", "logfmt")


def test_the_metrics_listener_serves_the_registry_at_slash_metrics() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.answered("anonymous", "issued", metrics.now())
    http = StubTreq(metrics_resource(registry))
    response = settled(http.get("http://tokend/metrics"))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [
        b"text/plain; version=0.0.4; charset=utf-8"
    ]
    text = settled(http.text_content(response))
    assert 'tokend_token_requests_total{grant="anonymous",outcome="issued"} 1.0' in text
    openmetrics = settled(
        http.get(
            "http://tokend/metrics",
            headers={b"Accept": [b"application/openmetrics-text; version=1.0.0"]},
        )
    )
    assert settled(http.text_content(openmetrics)).endswith("# EOF\n")
    assert settled(http.get("http://tokend/v2/token")).code == 404
