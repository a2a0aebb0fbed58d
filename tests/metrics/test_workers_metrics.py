"""``--metrics`` with ``--workers 2``: the parent serves the union of the workers' metrics.

The union itself is checked without processes (labels, one HELP/TYPE per family, counters'
``_created`` samples, an unreadable answer left out); then the real twistd: tokens issued
through both workers add up in the scrape, ``promtool check metrics`` passes, a SIGKILLed
worker's replacement starts from 0, and a stopped worker is left out and counted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import Daemon, start, worker_pids
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, stop_process, wait_for

from tokend.metrics.exposition import union_of

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def issued_by_worker(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for (name, labels), value in samples(text).items():
        label = dict(labels)
        if name == "tokend_token_requests_total" and label["outcome"] == "issued":
            found[label["worker"]] = found.get(label["worker"], 0) + value
    return found


def worker_exposition(issued: float) -> bytes:
    registry = CollectorRegistry()
    Counter("tokend_token_requests", "Token requests.", ["outcome"], registry=registry).labels(
        "issued"
    ).inc(issued)
    Gauge("tokend_policy_generation", "Generation.", registry=registry).set(1)
    return generate_latest(registry)


def test_the_union_labels_each_workers_series_and_names_each_family_once() -> None:
    parent = CollectorRegistry()
    Gauge("tokend_workers", "Configured.", registry=parent).set(3)
    unreadable: list[int] = []
    union = union_of(
        parent,
        [(0, worker_exposition(3)), (1, worker_exposition(4)), (2, b"not { an exposition")],
        unreadable.append,
    )
    text = generate_latest(union).decode()
    assert unreadable == [2]
    assert text.count("# TYPE tokend_token_requests_total counter") == 1
    assert text.count("# HELP tokend_policy_generation ") == 1
    assert issued_by_worker(text) == {"0": 3.0, "1": 4.0}
    found = samples(text)
    assert found["tokend_workers", ()] == 3
    assert found["tokend_policy_generation", (("worker", "1"),)] == 1
    assert found["tokend_token_requests_created", (("outcome", "issued"), ("worker", "0"))] > 0

    # OpenMetrics (what Prometheus asks for): the _created samples are back in their counter.
    families = {
        f.name: f for f in openmetrics_families(openmetrics.generate_latest(union).decode())
    }
    counter = families["tokend_token_requests"]
    assert counter.type == "counter"
    assert {s.name for s in counter.samples} == {
        "tokend_token_requests_total",
        "tokend_token_requests_created",
    }
    assert "tokend_token_requests_created" not in families


def scrape(port: int, accept: str | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        body: bytes = response.read()
        return body.decode()


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[name, tuple(sorted(labels.items()))]


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    running = start(tmp_path, "--metrics", f"tcp:{port}:interface=127.0.0.1")
    try:
        yield running, port
    finally:
        stop_process(running.process)


def test_the_parent_serves_every_workers_counters(metered: tuple[Daemon, int]) -> None:
    daemon, port = metered
    issued = 0
    for _ in range(40):
        status, _ = daemon.request("/v2/token?service=svc&scope=repository:pub/x:pull")
        assert status == 200
        issued += 1
    assert daemon.login("bob", "bob-pw") == 200
    issued += 1
    assert daemon.login("bob", "wrong") == 401

    text = scrape(port)
    by_worker = issued_by_worker(text)
    assert set(by_worker) == {"0", "1"}, "both workers' series, labelled by index"
    assert sum(by_worker.values()) == issued
    assert len(re.findall(r"^# TYPE tokend_token_requests_total counter$", text, re.M)) == 1
    assert value(text, "tokend_workers") == 2
    assert value(text, "tokend_workers_running") == 2
    assert value(text, "tokend_worker_restarts_total", worker="0") == 0
    assert value(text, "tokend_policy_generation", worker="1") == 1
    assert "process_resident_memory_bytes " in text, "the parent's own, without a label"
    assert not re.search(r'worker="\d{3,}"', text), "an index, never a pid"
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing; CI installs Debian's prometheus")
    else:
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    open_metrics = scrape(port, "application/openmetrics-text; version=1.0.0")
    assert open_metrics.endswith("# EOF\n")
    assert len(list(openmetrics_families(open_metrics))) > 20


def test_a_killed_workers_replacement_starts_from_zero(metered: tuple[Daemon, int]) -> None:
    daemon, port = metered
    for _ in range(30):
        assert daemon.request("/v2/token?service=svc")[0] == 200
    before = issued_by_worker(scrape(port))
    assert sum(before.values()) == 30

    parent = daemon.process.pid
    victim = min(worker_pids(parent))
    os.kill(victim, signal.SIGKILL)
    scrape(port)  # answers at once, with or without the dead worker
    wait_for("a replacement", lambda: len(worker_pids(parent) - {victim}) == 2)
    wait_for("it serves", lambda: value(scrape(port), "tokend_workers_running") == 2)
    text = scrape(port)
    restarted = [w for w in ("0", "1") if value(text, "tokend_worker_restarts_total", worker=w)]
    assert len(restarted) == 1
    (slot,) = restarted
    survivor = "1" if slot == "0" else "0"
    after = issued_by_worker(text)
    assert after == {slot: 0.0, survivor: before.get(survivor, 0.0)}


def test_a_worker_that_does_not_answer_is_left_out_and_counted(
    metered: tuple[Daemon, int],
) -> None:
    daemon, port = metered
    stopped = min(worker_pids(daemon.process.pid))
    os.kill(stopped, signal.SIGSTOP)
    try:
        began = time.monotonic()
        text = scrape(port)
        took = time.monotonic() - began
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert 1.5 < took < 5, "the silent worker was waited for about 2 s"
    assert len(set(issued_by_worker(text))) == 1
    failures = {w: value(text, "tokend_worker_scrape_failures_total", worker=w) for w in ("0", "1")}
    assert sorted(failures.values()) == [0, 1]
    assert "did not answer a metrics scrape" in daemon.log_text()
    wait_for("both answer again", lambda: set(issued_by_worker(scrape(port))) == {"0", "1"})
