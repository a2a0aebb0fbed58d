"""The metrics as Prometheus sees them: a real ``prometheus`` scraping a real ``twistd -n
registry-token --metrics ...`` (one process, and ``--workers 2`` whose parent serves the union
of its workers' metrics), ``promtool check metrics`` on what it serves, and the shipped alert
rules and dashboard checked against the series tokend exports.

Needs Debian's ``prometheus`` (it ships ``promtool``); skipped without it unless CI is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import (
    REPO,
    UnixHTTPConnection,
    free_port,
    start_twistd,
    stop_process,
    write_key_pair,
    write_policy,
)

from tokend.login.credential_cache import CredentialCache
from tokend.metrics.collectors import (
    RedisState,
    ServiceState,
    SupervisorState,
    process_collectors,
)
from tokend.metrics.instruments import Metrics
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.signing.holder import KeyHolder
from tokend.signing.key_set import single_key_set
from tokend.threads import BoundedThreadQueue, InlineRunner

RULES = REPO / "deploy" / "prometheus" / "tokend-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tokend-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tokend-dashboard.json"
SERIES = re.compile(r"\b(?:tokend|process)_[a-z_]+\b")
EXPECTED = (
    "tokend_token_requests_total",
    "tokend_request_duration_seconds_bucket",
    "tokend_password_checks_total",
    "tokend_password_check_seconds_bucket",
    "tokend_credential_cache_hits_total",
    "tokend_credential_cache_misses_total",
    "tokend_credential_cache_entries",
    "tokend_password_check_queue_depth",
    "tokend_password_check_queue_limit",
    "tokend_throttled_total",
    "tokend_policy_generation",
    "tokend_policy_reloads_total",
    "tokend_policy_last_reload_success_timestamp_seconds",
    "tokend_policy_files_valid",
    "tokend_policy_users",
    "tokend_policy_groups",
    "tokend_signing_certificate_expiry_timestamp_seconds",
    "tokend_signing_certificate_expires_in_seconds",
    "tokend_signing_keys_reloads_total",
    "tokend_signing_keys_files_valid",
    "tokend_build_info",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
)


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is missing; CI installs Debian's prometheus")
        pytest.skip(f"{binary} is not installed (Debian package prometheus)")
    return path


def exported_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def service_exposition(tmp_path: Path) -> str:
    """What a service with metrics on exports, composed as makeService composes it."""
    config = tmp_path / "config"
    write_policy(config, {"a": ("pw", {"*": ["pull"]})})
    key_path, cert_path = write_key_pair(tmp_path)
    registry = CollectorRegistry()
    Metrics(registry)
    process_collectors(registry)
    registry.register(
        ServiceState(
            PolicyHolder(load_policy(config).policy, 0.0),
            credential_cache=CredentialCache(),
            queue=BoundedThreadQueue(InlineRunner(), limit=1, queue=4),
            keys=KeyHolder(single_key_set(key_path, cert_path), 0.0),
        )
    )
    return generate_latest(registry).decode()


class _Workers:
    """What SupervisorState reads of the parent's supervisor."""

    count = serving = 2
    restarts = scrape_failures = {0: 0, 1: 0}

    def scrape(self) -> Any:
        raise NotImplementedError

    def unreadable(self, worker: int) -> None:
        pass


def supervisor_exposition() -> str:
    """What the parent of --workers N adds to its workers' series."""
    registry = CollectorRegistry()
    registry.register(SupervisorState(_Workers()))
    return generate_latest(registry).decode()


class _Redis:
    """What RedisState reads of the Redis store."""

    available = True
    rejected = {"unauthenticated": 0, "stale": 0, "unreadable": 0}


def redis_exposition() -> str:
    """What a daemon with --redis adds (the parent's, with --workers N)."""
    registry = CollectorRegistry()
    registry.register(RedisState(_Redis()))
    return generate_latest(registry).decode()


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = need("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 13 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.MULTILINE))
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert len(alerts) == 13
    assert alerts == tested


def test_rules_and_dashboard_name_only_series_tokend_exports(tmp_path: Path) -> None:
    exported = exported_names(service_exposition(tmp_path))
    assert set(EXPECTED) <= exported
    exported |= exported_names(supervisor_exposition()) | exported_names(redis_exposition())
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(expressions) > 20
    used = set(SERIES.findall(RULES.read_text())) | {
        name for expr in expressions for name in SERIES.findall(expr)
    }
    assert used - exported == set(), "series that tokend does not export"
    assert {"tokend_token_requests_total", "tokend_policy_files_valid"} <= used


def test_the_dashboard_is_one_grafana_document() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tokend"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = json.loads(get(url))
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def wait_until(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def ask_token(sock: Path, user: str | None, password: str = "") -> int:
    connection = UnixHTTPConnection(sock)
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + b64encode(f"{user}:{password}".encode()).decode()
    try:
        connection.request(
            "GET", "/v2/token?service=svc&scope=repository:pub/x:pull", headers=headers
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_prometheus_scrapes_the_daemon_and_counts_the_tokens_it_issued(
    tmp_path: Path, workers: str
) -> None:
    prometheus, promtool = need("prometheus"), need("promtool")
    config = tmp_path / "config"
    write_policy(config, {"bar": ("bar", {"*": ["pull"]})}, {"repositories": ["pub/x"]})
    key_path, cert_path = write_key_pair(tmp_path)
    (tmp_path / "run").mkdir()
    sock = tmp_path / "run" / "tokend.sock"
    metrics_port, prometheus_port = free_port(), free_port()
    daemon = start_twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
        "--cert", str(cert_path), "--service", "svc",
        "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1", "--workers", workers,
        log=tmp_path / "tokend.log",
    )  # fmt: skip
    prometheus_config = tmp_path / "prometheus.yml"
    prometheus_config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: tokend\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    with (tmp_path / "prometheus.out").open("wb") as output:
        server = subprocess.Popen(
            [
                prometheus,
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> bool:
            if daemon.poll() is not None:
                output = daemon.stdout.read().decode() if daemon.stdout else ""
                pytest.fail(f"twistd exited with {daemon.returncode}: {output}")
            return "tokend listening on" in (tmp_path / "tokend.log").read_text()

        wait_until("every worker serving", listening)
        issued = 0
        for user, password in [(None, ""), ("bar", "bar"), (None, ""), ("bar", "bar")] * 2:
            assert ask_token(sock, user, password) == 200
            issued += 1
        assert ask_token(sock, "bar", "wrong") == 401

        text = get(f"http://127.0.0.1:{metrics_port}/metrics").decode()
        for name in EXPECTED:
            assert name in exported_names(text), name
        password_issued = [
            s
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "tokend_token_requests_total"
            and s.labels["grant"] == "password"
            and s.labels["outcome"] == "issued"
        ]
        assert sum(s.value for s in password_issued) == 4
        expected_workers = {"0", "1"} if workers == "2" else {None}
        assert {s.labels.get("worker") for s in password_issued} == expected_workers
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr

        issued_query = 'sum(tokend_token_requests_total{outcome="issued"})'

        def counted() -> bool:
            result = query(prometheus_port, issued_query)
            return bool(result) and float(result[0]["value"][1]) == issued

        wait_until(f"Prometheus to count {issued} tokens", counted)
        refused = query(
            prometheus_port, 'sum by (grant) (tokend_token_requests_total{outcome="unauthorized"})'
        )
        assert {r["metric"]["grant"]: r["value"][1] for r in refused}["password"] == "1"
        assert query(prometheus_port, 'up{job="tokend"}')[0]["value"][1] == "1"
        valid = query(prometheus_port, "min without (worker) (tokend_policy_files_valid)")
        assert [r["value"][1] for r in valid] == ["1"]
        dashboard = json.loads(DASHBOARD.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                promql = (
                    target["expr"]
                    .replace("$__rate_interval", "1m")
                    .replace('=~"$instance"', '=~".*"')
                )
                query(prometheus_port, promql)  # valid PromQL, or the query fails
        rules = json.loads(get(f"http://127.0.0.1:{prometheus_port}/api/v1/rules"))
        loaded = [rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]]
        assert len(loaded) == 13
        if workers == "2":
            running = query(prometheus_port, "tokend_workers_running")
            assert [r["value"][1] for r in running] == ["2"]
    finally:
        stop_process(server)
        stop_process(daemon)
