"""The ``--metrics`` listener of the real twistd, with one process and with ``--workers 2`` (the
first process serves it then): the token listener's HTTP limits hold there too, and its
``/healthz`` carries the details the token listener's no longer shows."""

from __future__ import annotations

import json
import os
import select
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import Daemon, start, worker_pids
from support import UnixHTTPConnection, get_json_over_unix, stop_process

REQUEST_TIMEOUT = 1


class Metrics:
    def __init__(self, daemon: Daemon, sock: Path, workers: int) -> None:
        self.daemon = daemon
        self.sock = sock
        self.workers = workers

    def get(self, path: str) -> tuple[int, Any]:
        connection = UnixHTTPConnection(self.sock)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            is_json = response.getheader("Content-Type") == "application/json"
            return response.status, json.loads(body) if is_json else body
        finally:
            connection.close()


@pytest.fixture(scope="module", params=[1, 2], ids=["one process", "two workers"])
def metrics(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Metrics]:
    tmp_path = tmp_path_factory.mktemp("metrics")
    daemon = start(tmp_path, "--request-timeout", str(REQUEST_TIMEOUT), workers=str(request.param))
    assert daemon.metrics is not None
    try:
        yield Metrics(daemon, daemon.metrics, request.param)
    finally:
        stop_process(daemon.process)


def raw(sock: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(30)
    client.connect(str(sock))
    return client


def temporary_files(pid: int) -> list[str]:
    """Files under the temporary directory that ``pid`` holds open (Twisted spools a large
    request body to one)."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(tempfile.gettempdir() + "/") and "(deleted)" in target:
            held.append(target)
    return held


def test_a_large_body_is_refused_from_its_headers(metrics: Metrics) -> None:
    with raw(metrics.sock) as client:
        client.sendall(
            b"POST /metrics HTTP/1.1\r\nHost: tokend\r\nContent-Length: 209715200\r\n\r\n"
            + b"x" * 65536
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = client.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert not temporary_files(metrics.daemon.process.pid)


def test_a_trickling_request_is_cut_off_at_the_request_timeout(metrics: Metrics) -> None:
    """One header line every 0.2 s: Twisted's own timeout restarts with every byte; the
    request deadline does not (closed at 1 s; the test gives up after 30 s).

    A trickled line that arrives after the server's last read is unread when it closes, and
    the kernel then resets the connection: the 408 may be lost, but the cut is what counts."""
    answer = b""
    reset = False
    with raw(metrics.sock) as client:
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: tokend\r\n")
        deadline = time.monotonic() + 30
        closed = False
        while not closed and time.monotonic() < deadline:
            readable, _, _ = select.select([client], [], [], 0.2)
            if readable:
                try:
                    chunk = client.recv(65536)
                except ConnectionResetError:
                    reset = closed = True
                    break
                answer += chunk
                closed = not chunk
            else:
                try:
                    client.sendall(b"X-Trickle: 1\r\n")
                except OSError:
                    closed = True
    assert closed, "the connection was still open after 30 s"
    assert answer.startswith(b"HTTP/1.1 408 ") or (reset and not answer), answer


def test_the_metrics_listener_serves_the_health_details(metrics: Metrics) -> None:
    token_socket = metrics.daemon.sock
    assert get_json_over_unix(token_socket, "/healthz") == (200, {"status": "ok"})
    assert get_json_over_unix(token_socket, "/healthz?strict=1") == (200, {"status": "ok"})

    status, body = metrics.get("/healthz")
    assert status == 200, body
    assert body["status"] == "ok"
    if metrics.workers == 1:
        assert body["pid"] == metrics.daemon.process.pid
        assert (body["policy_generation"], body["files_valid"]) == (1, True)
        assert body["policy_error"] is None and body["policy_failed_at"] is None
    else:
        assert body["pid"] == metrics.daemon.process.pid, "the first process answers"
        assert (body["workers_configured"], body["workers_answering"]) == (2, 2)
        workers = body["workers"]
        assert [w["worker"] for w in workers] == [0, 1]
        assert {w["pid"] for w in workers} == worker_pids(metrics.daemon.process.pid)
        assert {(w["status"], w["policy_generation"]) for w in workers} == {("ok", 1)}
    assert metrics.get("/healthz?strict=1")[0] == 200
    status, refused = metrics.get("/healthz?strict=maybe")
    assert status == 400 and "strict" in refused["errors"][0]["message"]
    assert metrics.get("/metrics")[0] == 200
